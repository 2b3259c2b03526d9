"""memotvm: ONNX recurrent networks compiled with TVM, with neuron-level fuzzy memoization."""

import os as _os
from importlib import metadata as _metadata

# TVM's thread pool assumes two hardware threads per core and so uses one thread on a
# two-CPU machine; the recurrent kernels split every step across all the CPUs we may
# run on.  Set before TVM starts its pool; TVM_NUM_THREADS set by the user wins.
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0))))

from .api import compile
from .artifact import load
from .validate import validate
from .errors import ConfigError, InputError, MemoTVMError, ModelLoadError, UnsupportedModelError

try:
    __version__ = _metadata.version("memotvm")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "load",
    "ConfigError",
    "InputError",
    "MemoTVMError",
    "ModelLoadError",
    "UnsupportedModelError",
    "compile",
    "validate",
    "__version__",
]

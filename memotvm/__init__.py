"""memotvm: ONNX recurrent networks compiled with TVM, with neuron-level fuzzy memoization."""

from importlib import metadata as _metadata

from .api import compile
from .artifact import load
from .validate import validate
from .errors import ClusterError, ConfigError, InputError, MemoTVMError, ModelLoadError, UnsupportedModelError

try:
    __version__ = _metadata.version("memotvm")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "load",
    "ClusterError",
    "ConfigError",
    "InputError",
    "MemoTVMError",
    "ModelLoadError",
    "UnsupportedModelError",
    "compile",
    "validate",
    "__version__",
]

"""memotvm: ONNX recurrent networks compiled with TVM, with neuron-level fuzzy memoization."""

from .api import compile
from .validate import validate
from .errors import ConfigError, InputError, MemoTVMError, ModelLoadError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputError",
    "MemoTVMError",
    "ModelLoadError",
    "UnsupportedModelError",
    "compile",
    "validate",
]

"""Errors memotvm raises for things a user can fix.

Every problem with a user's model, inputs or configuration surfaces as a subclass of
:class:`MemoTVMError` whose message names the problem (file, node, input, attribute), so
that the CLI can print one line and callers can catch one type.
"""


class MemoTVMError(Exception):
    """Base class of all errors that describe a problem with the user's input."""


class ModelLoadError(MemoTVMError):
    """The file or object is not a readable ONNX model."""


class UnsupportedModelError(MemoTVMError):
    """The model uses an operator, attribute or type that memotvm cannot compile."""


class InputError(MemoTVMError):
    """Run-time inputs do not match the compiled model (names, shapes, dtypes, values)."""


class ConfigError(MemoTVMError):
    """A memoization or target configuration is invalid."""


class ClusterError(MemoTVMError):
    """A Ray cluster cannot run the work: unreachable, or a worker that cannot import
    memotvm, runs other versions, cannot compile the model or died (the message names
    the worker)."""


class NothingToMemoizeWarning(UserWarning):
    """Memoization was asked for, but the model has no recurrent node to apply it to."""


class UnreachableBranchWarning(UserWarning):
    """A branch of an If could not be compiled for the inputs' shapes (a detector's
    8 kHz path given 16 kHz chunks): the model compiles, and a call that takes the
    branch stops with an :class:`InputError` saying why."""

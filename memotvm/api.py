"""The user-facing entry points: compile (and, with memoization, validate)."""

from __future__ import annotations

from .frontend import from_onnx
from .targets import get_backend


def compile(model, target: str = "cpu", memo=None, shapes: dict | None = None):  # noqa: A001
    """Compile an ONNX model (path, bytes or ModelProto) for ``target``.

    Returns a :class:`memotvm.runtime.CompiledModel` whose ``run(inputs)`` returns the
    ONNX outputs in graph order.
    """
    backend = get_backend(target)
    imported = from_onnx(model, shapes)
    mod = imported.mod
    return backend.build(imported, mod, memo=memo)

"""ONNX -> Relax: recurrent ops become recurrent-loop kernels (TIR), the rest goes
through TVM's Relax ONNX frontend."""

import threading

from .importer import RECURRENT_OPS, ImportedModel, hand_written_cell, import_onnx
from .loader import load_model
from .recurrent import RecurrentLoop

# Held by every import and compile: TVM's Relax block builder keeps one stack of
# builders per process, and two imports in two threads popped each other's
# ("BlockBuilder.current() must be self").  A compile already uses every CPU for its
# kernels (memotvm.targets.parallel_build), so compiles taking turns lose little.
BUILD_LOCK = threading.RLock()


def from_onnx(model, shapes=None, fixed_inputs=None) -> ImportedModel:
    """Load (path, bytes or ModelProto), check and import an ONNX model."""
    with BUILD_LOCK:
        return import_onnx(load_model(model), shapes, fixed_inputs)


__all__ = [
    "RECURRENT_OPS",
    "ImportedModel",
    "RecurrentLoop",
    "from_onnx",
    "hand_written_cell",
    "import_onnx",
    "load_model",
]

"""ONNX -> Relax: recurrent ops become recurrent-loop kernels (TIR), the rest goes
through TVM's Relax ONNX frontend."""

from .importer import RECURRENT_OPS, ImportedModel, import_onnx
from .loader import load_model
from .recurrent import RecurrentLoop


def from_onnx(model, shapes=None, fixed_inputs=None) -> ImportedModel:
    """Load (path, bytes or ModelProto), check and import an ONNX model."""
    return import_onnx(load_model(model), shapes, fixed_inputs)


__all__ = [
    "RECURRENT_OPS",
    "ImportedModel",
    "RecurrentLoop",
    "from_onnx",
    "import_onnx",
    "load_model",
]

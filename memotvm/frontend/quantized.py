"""Quantized recurrent layers, as onnxruntime's quantization tool writes them.

``onnxruntime.quantization.quantize_dynamic`` turns an LSTM into
``com.microsoft.DynamicQuantizeLSTM``: its W and R are int8 (or uint8), stored transposed
([directions, input size, 4 * hidden] and [directions, hidden, 4 * hidden]) with a scale and
zero point per direction or per output channel, and onnxruntime quantizes X and h to
uint8 at every step.  :class:`DequantizeRecurrentWeights` replaces each such node by the
ONNX LSTM it quantizes, with W and R dequantized at compile time
(``(q - zero_point) * scale``) and transposed back, so that the memoization pass and the
kernels treat it as any LSTM.  The result computes in float32: it differs from
onnxruntime's by onnxruntime's own quantization of the activations (measured on the field
fixture: docs/field.md), and is the model's dequantized meaning.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError

MS_DOMAIN = "com.microsoft"
_LSTM_INPUTS = 8  # X, W, R, B, sequence_lens, initial_h, initial_c, P


class DequantizeRecurrentWeights:
    """Rewrite ``com.microsoft.DynamicQuantizeLSTM`` nodes into ``LSTM`` nodes with
    float weights (see the module's docstring)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if not any(n.domain == MS_DOMAIN and n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node):
            return model
        out = onnx.ModelProto()
        out.CopyFrom(model)
        graph = out.graph
        constants = {t.name: t for t in graph.initializer}
        constants.update({n.output[0]: next(a.t for a in n.attribute if a.name == "value")
                          for n in graph.node if n.op_type == "Constant"
                          and any(a.name == "value" for a in n.attribute)})
        nodes = []
        for node in graph.node:
            if node.domain == MS_DOMAIN and node.op_type == "DynamicQuantizeLSTM":
                node = self._as_lstm(node, constants, graph)
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(n.domain == MS_DOMAIN for n in graph.node):
            kept = [o for o in out.opset_import if o.domain != MS_DOMAIN]
            del out.opset_import[:]
            out.opset_import.extend(kept)
        return out

    def _as_lstm(self, node, constants, graph):
        where = f"node '{node.name}' (com.microsoft.DynamicQuantizeLSTM)"
        inputs = list(node.input) + [""] * (12 - len(node.input))

        def constant(index, label):
            name = inputs[index]
            if not name:
                raise UnsupportedModelError(f"{where}: input {label} is missing")
            if name not in constants:
                raise UnsupportedModelError(f"{where}: input {label} ('{name}') is computed at run "
                                            "time; memotvm dequantizes constant weights only")
            return numpy_helper.to_array(constants[name])

        weights = []
        for label, (q, scale, zero) in {"W": (1, 8, 9), "R": (2, 10, 11)}.items():
            values = constant(q, label)
            if values.ndim != 3 or values.dtype not in (np.int8, np.uint8):
                raise UnsupportedModelError(f"{where}: {label} must be a 3-d int8 or uint8 tensor, "
                                            f"got {values.dtype} of shape {list(values.shape)}")
            dequantized = _dequantize(values, constant(scale, f"{label}_scale"),
                                      constant(zero, f"{label}_zero_point"), where, label)
            name = f"{inputs[q]}::dequantized"
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(dequantized.transpose(0, 2, 1)), name))
            weights.append(name)
        lstm_inputs = [inputs[0], *weights] + inputs[3:_LSTM_INPUTS]
        while lstm_inputs and not lstm_inputs[-1]:
            lstm_inputs.pop()
        lstm = helper.make_node("LSTM", lstm_inputs, list(node.output), name=node.name)
        lstm.attribute.extend(node.attribute)
        return lstm


def _dequantize(values, scale, zero, where, label):
    """(values - zero) * scale, with scale and zero point per direction ([directions]) or
    per output channel ([directions, 4 * hidden], the last axis of the stored weights)."""
    directions, _, channels = values.shape
    if scale.shape != zero.shape or scale.shape not in ((directions,), (directions, channels)):
        raise UnsupportedModelError(
            f"{where}: {label}_scale {list(scale.shape)} and {label}_zero_point "
            f"{list(zero.shape)} must both be [{directions}] or [{directions}, {channels}]")
    if not np.all(np.isfinite(scale)):
        raise UnsupportedModelError(f"{where}: {label}_scale is not finite")
    if scale.ndim == 1:
        scale, zero = scale[:, None, None], zero[:, None, None]
    else:
        scale, zero = scale[:, None, :], zero[:, None, :]
    return ((values.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)

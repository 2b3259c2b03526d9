"""onnxruntime's quantized contrib operators (``com.microsoft.QLinear*``), as the
standard operators they quantize.

``onnxruntime.quantization.quantize_static`` in the operator format (``QOperator``)
writes, next to the standard QLinearConv and QLinearMatMul, contrib operators for the
elementwise work, pools, concatenations and softmax between them: ``QLinearAdd``,
``QLinearMul``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearAveragePool``,
``QLinearGlobalAveragePool``, ``QLinearConcat`` and ``QLinearSoftmax``, and ``QGemm``
for Gemm.  Each is defined as its float operator between dequantized inputs and a
quantized output; :class:`DequantizeContribOps` writes it so (DequantizeLinear ->
operator -> QuantizeLinear), which TVM's converters compile.
onnxruntime computes some of them in other float orders (QLinearAdd scales each input by
its ratio to the output's scale) or from tables of the 256 possible inputs, so a value
may round to the neighbouring quantization level where the exact result lies at a half.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from .folding import unique_name
from .quantized import MS_DOMAIN

# Contrib operator -> (the float operator, its quantized inputs as (value, scale, zero
# point) index triples, the output's scale and zero point indices).
_UNARY = ((0, 1, 2),), (3, 4)
_OPERATORS = {
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearSigmoid": ("Sigmoid", *_UNARY),
    "QLinearLeakyRelu": ("LeakyRelu", *_UNARY),
    "QLinearAveragePool": ("AveragePool", *_UNARY),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", *_UNARY),
    "QLinearSoftmax": ("Softmax", *_UNARY),
}


class DequantizeContribOps:
    """Rewrite the ``com.microsoft.QLinear*`` operators above, ``QLinearConcat`` and
    ``QGemm`` into DequantizeLinear -> the float operator -> QuantizeLinear (see the
    module's docstring)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        wanted = set(_OPERATORS) | {"QLinearConcat", "QGemm"}
        if not any(n.domain == MS_DOMAIN and n.op_type in wanted for n in model.graph.node):
            return model
        self._opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)
        if self._opset < 10:
            raise UnsupportedModelError(
                f"the model imports ONNX opset {self._opset}; its quantized contrib operators "
                "need QuantizeLinear and DequantizeLinear (opset 10)")
        out = onnx.ModelProto()
        out.CopyFrom(model)
        self._names = {o for n in out.graph.node for o in n.output} | {t.name for t in out.graph.initializer}
        nodes = []
        for node in out.graph.node:
            if node.domain == MS_DOMAIN and node.op_type in wanted:
                nodes += self._dequantized(node, out.graph)
            else:
                nodes.append(node)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        return out

    def _fresh(self, base: str) -> str:
        return unique_name(base, self._names)

    def _dequantized(self, node, graph) -> list:
        where = f"node '{node.name}' (com.microsoft.{node.op_type})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.pop("channels_last", 0):
            raise UnsupportedModelError(f"{where}: channels_last layouts are not supported")
        inputs = list(node.input)
        if node.op_type == "QGemm":
            return self._gemm(node, graph, attrs, where)
        if node.op_type == "QLinearConcat":  # Y scale, Y zero point, then (X, scale, zero point)...
            op, triples, output = "Concat", [(k, k + 1, k + 2) for k in range(2, len(inputs), 3)], (0, 1)
        else:
            op, triples, output = _OPERATORS[node.op_type]
        nodes, floats = [], []
        for value, scale, zero in triples:
            if value >= len(inputs) or not inputs[value]:
                raise UnsupportedModelError(f"{where}: input {value} is missing")
            floats.append(self._fresh(f"{inputs[value]}_dequantized"))
            nodes.append(helper.make_node("DequantizeLinear", [inputs[value], inputs[scale]]
                                          + ([inputs[zero]] if zero < len(inputs) and inputs[zero] else []),
                                          [floats[-1]], name=self._fresh(f"{node.name}_dequantize")))
        result = self._fresh(f"{node.output[0]}_float")
        if op == "Softmax":
            attrs = self._softmax_attrs(attrs, where)
        nodes.append(helper.make_node(op, floats, [result],
                                      name=self._fresh(f"{node.name}_float"), **attrs))
        scale, zero = output
        nodes.append(helper.make_node("QuantizeLinear", [result, inputs[scale]]
                                      + ([inputs[zero]] if zero < len(inputs) and inputs[zero] else []),
                                      [node.output[0]], name=node.name))
        return nodes

    def _gemm(self, node, graph, attrs, where) -> list:
        """QGemm(A, a_scale, a_zero, B, b_scale, b_zero, C, y_scale, y_zero): Gemm of the
        dequantized A and B plus C, an int32 bias in the scale a_scale * b_scale (one per
        column of the result where B's scale is), quantized to y where y_scale is given
        (else the float result)."""
        inputs = list(node.input) + [""] * (9 - len(node.input))
        b_scale = self._constant(graph, inputs[4])
        per_column = b_scale is not None and b_scale.size > 1
        if per_column and self._opset < 13:
            raise UnsupportedModelError(f"{where}: a scale per column of B needs opset 13")
        # B is [K, N], or [N, K] with transB: its columns of the result lie on axis 1 or 0.
        b_axis = {"axis": 0 if attrs.get("transB", 0) else 1} if per_column else {}
        a, b = self._fresh(f"{inputs[0]}_dequantized"), self._fresh(f"{inputs[3]}_dequantized")
        nodes = [helper.make_node("DequantizeLinear", [inputs[0], inputs[1]] + [inputs[2]] * bool(inputs[2]), [a],
                                  name=self._fresh(f"{node.name}_dequantize_a")),
                 helper.make_node("DequantizeLinear", [inputs[3], inputs[4]] + [inputs[5]] * bool(inputs[5]), [b],
                                  name=self._fresh(f"{node.name}_dequantize_b"), **b_axis)]
        gemm_inputs = [a, b]
        if inputs[6]:
            a_scale = self._constant(graph, inputs[1])
            if a_scale is None or b_scale is None:
                raise UnsupportedModelError(f"{where}: the scales of A and B must be constants "
                                            "(they set the bias's scale)")
            bias_scale = self._fresh(f"{node.name}_bias_scale")
            graph.initializer.append(numpy_helper.from_array(
                (a_scale.astype(np.float32).reshape(()) * b_scale.astype(np.float32)).reshape(b_scale.shape),
                bias_scale))
            gemm_inputs.append(self._fresh(f"{inputs[6]}_dequantized"))
            nodes.append(helper.make_node("DequantizeLinear", [inputs[6], bias_scale], [gemm_inputs[-1]],
                                          name=self._fresh(f"{node.name}_dequantize_bias"),
                                          **({"axis": 0} if per_column else {})))
        if not inputs[7]:
            return nodes + [helper.make_node("Gemm", gemm_inputs, [node.output[0]], name=node.name, **attrs)]
        result = self._fresh(f"{node.output[0]}_float")
        nodes.append(helper.make_node("Gemm", gemm_inputs, [result], name=self._fresh(f"{node.name}_float"),
                                      **attrs))
        nodes.append(helper.make_node("QuantizeLinear", [result, inputs[7]] + [inputs[8]] * bool(inputs[8]),
                                      [node.output[0]], name=node.name))
        return nodes

    @staticmethod
    def _constant(graph, name):
        """The value of an initializer or Constant node's output ``name``, else None."""
        for tensor in graph.initializer:
            if tensor.name == name:
                return numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] == name:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                return None if value is None else numpy_helper.to_array(value)
        return None

    def _softmax_attrs(self, attrs, where):
        """Softmax's attributes for this model's opset: the contrib operator names the
        opset whose Softmax it means (before 13 over the input coerced to 2-D)."""
        meant = attrs.pop("opset", self._opset)
        if (meant >= 13) != (self._opset >= 13):
            raise UnsupportedModelError(
                f"{where}: means the Softmax of opset {meant}, whose axis semantics differ "
                f"from the model's opset {self._opset}")
        return attrs

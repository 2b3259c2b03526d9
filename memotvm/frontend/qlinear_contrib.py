"""onnxruntime's quantized contrib operators (``com.microsoft.QLinear*``), as the
standard operators they quantize.

``onnxruntime.quantization.quantize_static`` in the operator format (``QOperator``)
writes, next to the standard QLinearConv and QLinearMatMul, contrib operators for the
elementwise work, pools, concatenations and softmax between them: ``QLinearAdd``,
``QLinearMul``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearAveragePool``,
``QLinearGlobalAveragePool``, ``QLinearConcat``, ``QLinearSoftmax`` and
``QLinearReduceMean``.  Each is defined as its float operator between dequantized
inputs and a quantized output; :class:`DequantizeContribOps` writes it so
(DequantizeLinear -> operator -> QuantizeLinear), which TVM's converters compile.
onnxruntime computes some of them in other float orders (QLinearAdd scales each input by
its ratio to the output's scale) or from tables of the 256 possible inputs, so a value
may round to the neighbouring quantization level where the exact result lies at a half.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..errors import UnsupportedModelError
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
    "QLinearReduceMean": ("ReduceMean", *_UNARY),
}


class DequantizeContribOps:
    """Rewrite the ``com.microsoft.QLinear*`` operators above (and ``QLinearConcat``) into
    DequantizeLinear -> the float operator -> QuantizeLinear (see the module's
    docstring)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        wanted = set(_OPERATORS) | {"QLinearConcat"}
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

    def _fresh(self, base):
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def _dequantized(self, node, graph) -> list:
        where = f"node '{node.name}' (com.microsoft.{node.op_type})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.pop("channels_last", 0):
            raise UnsupportedModelError(f"{where}: channels_last layouts are not supported")
        inputs = list(node.input)
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
        extra_inputs = []
        if op == "Softmax":
            attrs = self._softmax_attrs(attrs, where)
        if op == "ReduceMean" and self._opset >= 18 and "axes" in attrs:
            axes = self._fresh(f"{node.name}_axes")
            graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64,
                                                        [len(attrs["axes"])], attrs.pop("axes")))
            extra_inputs.append(axes)
        nodes.append(helper.make_node(op, floats + extra_inputs, [result],
                                      name=self._fresh(f"{node.name}_float"), **attrs))
        scale, zero = output
        nodes.append(helper.make_node("QuantizeLinear", [result, inputs[scale]]
                                      + ([inputs[zero]] if zero < len(inputs) and inputs[zero] else []),
                                      [node.output[0]], name=node.name))
        return nodes

    def _softmax_attrs(self, attrs, where):
        """Softmax's attributes for this model's opset: the contrib operator names the
        opset whose Softmax it means (before 13 over the input coerced to 2-D)."""
        meant = attrs.pop("opset", self._opset)
        if (meant >= 13) != (self._opset >= 13):
            raise UnsupportedModelError(
                f"{where}: means the Softmax of opset {meant}, whose axis semantics differ "
                f"from the model's opset {self._opset}")
        return attrs

"""Operators in the forms of older opsets, rewritten to the forms TVM converts.

Some operators took as attributes, in the opsets before a given version, what later
versions take as inputs.  TVM's frontend converts only the later forms and, for a model
of an older opset, falls back to its oldest converter, which reads inputs the node does
not have: an opset-9 ``Slice`` (its bounds as attributes; keras2onnx's and torch's
opset-9 exports write them) fails to convert, and an opset-7 ``Upsample`` (its scales
as an attribute) converts to a wrong result.  :class:`LegacyOperatorForms` rewrites each
such node into the later form that computes the same:

* ``Slice`` before opset 10: ``starts``, ``ends`` and ``axes`` become inputs (the same
  clamping; the old form has no steps).
* ``Upsample`` (opsets 7 to 9) and ``Resize`` of opset 10 (inputs X and scales): a
  ``Resize`` with an empty ``roi``, ``asymmetric`` coordinates (the source position of
  output index i is i / scale, as these versions define) and, for ``nearest``, the
  source index rounded down along axes that grow and up along axes that shrink (what
  onnxruntime computes for these versions).  An opset-10 ``Resize`` that shrinks some
  axes and grows others, or whose scales are only known when the model runs, has no
  such single rounding and is refused by name in ``nearest`` mode.
* ``Reshape`` before opset 5 (``shape`` an attribute) and ``Cast`` before opset 6 (``to``
  a type name) become their later forms.

It runs last before conversion: ONNX shape inference, which the folding passes use,
knows these nodes only in their own opset's form.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from .folding import all_names, graphs, unique_name


class LegacyOperatorForms:
    """Rewrite the old forms of Slice, Upsample, Resize, Reshape and Cast (see the module)."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)
        if opset >= 11 and not _has_op(model.graph, "Upsample"):
            return model
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        self._opset = opset
        self._names = all_names(rewritten.graph)
        rewrites = {"Slice": self._slice, "Upsample": self._upsample, "Resize": self._resize,
                    "Reshape": self._reshape, "Cast": self._cast}
        outer = {t.name: t for t in rewritten.graph.initializer}
        # Innermost graphs first: rewriting a graph copies its nodes, subgraphs included.
        for graph in reversed(list(graphs(rewritten.graph))):
            # (tensors by name, made arrays only where a rewrite reads one)
            constants = dict(outer, **{t.name: t for t in graph.initializer})
            nodes = []
            for node in graph.node:
                if node.domain not in ("", "ai.onnx"):
                    nodes.append(node)
                    continue
                if node.op_type == "Constant" and node.output:
                    value = next((a for a in node.attribute if a.name == "value"), None)
                    if value is not None:
                        constants[node.output[0]] = value.t
                rewrite = rewrites.get(node.op_type)
                nodes.extend(rewrite(node, constants) if rewrite is not None else [node])
            del graph.node[:]
            graph.node.extend(nodes)
        return rewritten

    def _slice(self, node, constants):
        if self._opset >= 10:
            return [node]
        attrs = _attributes(node)
        bounds = [attrs["starts"], attrs["ends"]] + ([attrs["axes"]] if "axes" in attrs else [])
        made = [self._constant(node, name, np.asarray(values, np.int64))
                for name, values in zip(("starts", "ends", "axes"), bounds)]
        return made + [_remade(node, "Slice", [node.input[0]] + [c.output[0] for c in made], {})]

    def _upsample(self, node, constants):
        attrs = _attributes(node)
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        made = []
        if "scales" in attrs:  # opset 7 and 8
            made.append(self._constant(node, "scales", np.asarray(attrs["scales"], np.float32)))
            scales = made[-1].output[0]
        elif len(node.input) >= 2 and node.input[1]:
            scales = node.input[1]
        else:
            raise UnsupportedModelError(
                f"node '{node.name}' (Upsample): the form of opset {self._opset} (height_scale and "
                "width_scale) is not supported; export the model at opset 9 or later")
        # Upsample's scales are >= 1 by definition: the source index rounds down.
        return made + [self._resize_node(node, scales, mode, "floor")]

    def _resize(self, node, constants):
        if self._opset != 10:
            return [node]
        mode = _attributes(node).get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        rounding = "floor"
        if mode == "nearest":
            scales = constants.get(node.input[1])
            if scales is None:
                raise UnsupportedModelError(
                    f"node '{node.name}' (Resize, opset 10, nearest): its scales are computed when "
                    "the model runs, and whether each axis grows or shrinks decides how opset 10 "
                    "rounds; fix the inputs' shapes (compile(..., shapes=...), CLI --shape) so that "
                    "the scales are known when compiling")
            scales = numpy_helper.to_array(scales).astype(np.float64).ravel()
            if (scales > 1).any() and (scales < 1).any():
                raise UnsupportedModelError(
                    f"node '{node.name}' (Resize, opset 10, nearest): scales {scales.tolist()} grow "
                    "some axes and shrink others, which opset 10 rounds differently per axis and no "
                    "later Resize expresses; export the model at opset 11 or later")
            rounding = "ceil" if (scales < 1).any() else "floor"
        return [self._resize_node(node, node.input[1], mode, rounding)]

    def _reshape(self, node, constants):
        if self._opset >= 5:
            return [node]
        shape = self._constant(node, "shape", np.asarray(_attributes(node)["shape"], np.int64))
        return [shape, _remade(node, "Reshape", [node.input[0], shape.output[0]], {})]

    def _cast(self, node, constants):
        to = _attributes(node).get("to")
        if self._opset >= 6 or not isinstance(to, bytes):
            return [node]
        try:
            dtype = onnx.TensorProto.DataType.Value(to.decode().upper())
        except ValueError:
            raise UnsupportedModelError(f"node '{node.name}' (Cast): unknown type '{to.decode()}'") from None
        return [_remade(node, "Cast", list(node.input), {"to": dtype})]

    def _resize_node(self, node, scales: str, mode: str, rounding: str):
        attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
        if mode == "nearest":
            attrs["nearest_mode"] = rounding
        return _remade(node, "Resize", [node.input[0], "", scales], attrs)

    def _constant(self, node, what: str, value: np.ndarray):
        name = unique_name(f"{node.name or node.output[0]}::{what}", self._names)
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _has_op(graph, op_type: str) -> bool:
    return any(n.op_type == op_type for g in graphs(graph) for n in g.node)


def _attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _remade(node, op_type: str, inputs: list, attrs: dict):
    return helper.make_node(op_type, inputs, list(node.output), name=node.name, **attrs)

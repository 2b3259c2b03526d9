"""ONNX ``Scan`` rewritten as the ``Loop`` it is.

A Scan (opset 9 on) steps its body over slices of its scan inputs along an axis,
carrying state; that is a Loop whose trip count is the scan inputs' length and whose
body first takes iteration i's slice of each scan input (the last-but-i for a reverse
direction), which memotvm compiles (:mod:`.loops`).  The stacked scan outputs are
then reversed and moved to their axes as the node asks.  The rewrite is exact: the
Loop computes the same values in the same order.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
import numpy as np

from ..errors import UnsupportedModelError
from .folding import all_names, unique_name


class ScanAsLoop:
    """Rewrite every Scan node of a model (in any graph) as a Loop and the nodes
    around it."""

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if not _has_scan(model.graph):
            return model
        opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)
        if opset < 9:
            raise UnsupportedModelError(
                f"the model imports ONNX opset {opset}: its Scan (version 8, with a batch axis "
                "and sequence lengths) is not supported; Scan from opset 9 on is")
        out = onnx.ModelProto()
        out.CopyFrom(model)
        self._names = all_names(out.graph)
        self._rewrite(out.graph)
        return out

    def _rewrite(self, graph) -> None:
        nodes = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._rewrite(attr.g)
            nodes += self._as_loop(node) if node.op_type == "Scan" and node.domain in ("", "ai.onnx") \
                else [node]
        del graph.node[:]
        graph.node.extend(nodes)

    def _fresh(self, base: str) -> str:
        return unique_name(base, self._names)

    def _as_loop(self, node) -> list:
        attrs = {a.name: a for a in node.attribute}
        body = attrs["body"].g
        m = attrs["num_scan_inputs"].i
        n = len(node.input) - m
        k = len(node.output) - n
        label = node.name or "scan"
        if n < 0 or k < 0 or len(body.input) != n + m or len(body.output) != n + k:
            raise UnsupportedModelError(
                f"node '{label}' (Scan): its body takes {len(body.input)} inputs and gives "
                f"{len(body.output)} outputs, which do not fit its {n} states, {m} scan inputs "
                f"and {len(node.output)} outputs")
        in_axes = list(attrs["scan_input_axes"].ints) if "scan_input_axes" in attrs else [0] * m
        in_reverse = list(attrs["scan_input_directions"].ints) if "scan_input_directions" in attrs else [0] * m
        out_axes = list(attrs["scan_output_axes"].ints) if "scan_output_axes" in attrs else [0] * k
        out_reverse = list(attrs["scan_output_directions"].ints) if "scan_output_directions" in attrs else [0] * k
        if m == 0:
            raise UnsupportedModelError(f"node '{label}' (Scan): it has no scan input")
        fresh = lambda what: self._fresh(f"{label}::{what}")  # noqa: E731
        before, inside, after = [], [], []

        def constant(value, what, into):
            name = fresh(what)
            into.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name)))
            return name

        # The trip count: the first scan input's length along its axis (ONNX requires
        # every scan input to have it).
        shapes, lengths = [], []
        for j, x in enumerate(node.input[n:]):
            shape = fresh(f"shape{j}")
            before.append(helper.make_node("Shape", [x], [shape]))
            length = fresh(f"length{j}")
            before.append(helper.make_node("Gather", [shape, constant(in_axes[j], f"axis{j}", before)],
                                           [length], axis=0))
            shapes.append(shape)
            lengths.append(length)
        trip = lengths[0]
        for j in range(1, m):  # ONNX requires one length: a gather past its end says otherwise
            trip = self._same_length(trip, lengths[j], label, j, before, constant)
        # The body: iteration i's slice of each scan input (axis removed), then the
        # Scan's body, its states carried and its scan outputs stacked.
        iteration, cond_in, cond_out = fresh("iteration"), fresh("cond_in"), fresh("cond_out")
        inside.append(helper.make_node("Identity", [cond_in], [cond_out]))
        for j, (x, element) in enumerate(zip(node.input[n:], body.input[n:])):
            index = iteration
            if in_reverse[j]:
                last = fresh(f"last{j}")
                inside.append(helper.make_node("Sub", [lengths[j], constant(np.int64(1), f"one{j}", inside)], [last]))
                index = fresh(f"reversed{j}")
                inside.append(helper.make_node("Sub", [last, iteration], [index]))
            inside.append(helper.make_node("Gather", [x, index], [element.name], axis=in_axes[j]))
        loop_body = helper.make_graph(
            inside + list(body.node), f"{body.name or label}::loop",
            [helper.make_tensor_value_info(iteration, onnx.TensorProto.INT64, []),
             helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, [])] + list(body.input[:n]),
            [helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL, [])] + list(body.output),
            list(body.initializer))
        stacked = [fresh(f"stacked{q}") for q in range(k)]
        loop = helper.make_node("Loop", [trip, ""] + list(node.input[:n]),
                                list(node.output[:n]) + stacked, name=node.name, body=loop_body)
        # The stacked outputs reversed and moved to their axes.
        for q, (value, final) in enumerate(zip(stacked, node.output[n:])):
            rank = declared_rank(body.output[n + q], None)
            axis = out_axes[q] if out_axes[q] >= 0 else (None if rank is None else out_axes[q] + rank + 1)
            if axis is None:
                raise UnsupportedModelError(f"node '{label}' (Scan): a negative scan_output_axes "
                                            "needs the rank of its body's output, which it does not declare")
            if out_reverse[q]:
                reversed_ = fresh(f"reversed_out{q}")
                after.append(helper.make_node(
                    "Slice", [value, constant(np.array([-1], np.int64), f"start{q}", after),
                              constant(np.array([np.iinfo(np.int64).min], np.int64), f"end{q}", after),
                              constant(np.array([0], np.int64), f"axes{q}", after),
                              constant(np.array([-1], np.int64), f"step{q}", after)], [reversed_]))
                value = reversed_
            if axis != 0:
                if rank is None:
                    raise UnsupportedModelError(f"node '{label}' (Scan): scan_output_axes {out_axes[q]} "
                                                "needs the rank of its body's output, which it does not declare")
                order = list(range(1, rank + 1))
                order.insert(axis, 0)
                after.append(helper.make_node("Transpose", [value], [final], perm=order))
            else:
                after.append(helper.make_node("Identity", [value], [final]))
        return before + [loop] + after


    def _same_length(self, first, other, label, j, nodes, constant) -> str:
        """``first``, the scan inputs' length, plus 0 computed through a reshape of
        ``other`` zeros to ``first`` of them, which fails (an InputError naming the
        reshape) unless scan input ``j`` has the same length."""
        axes = constant(np.array([0], np.int64), f"axes{j}", nodes)
        names = {what: self._fresh(f"{label}::{what}{j}")
                 for what in ("first", "other", "zeros", "same_length_as_input0", "zero", "checked")}
        nodes += [helper.make_node("Unsqueeze", [first, axes], [names["first"]]),
                  helper.make_node("Unsqueeze", [other, axes], [names["other"]]),
                  helper.make_node("ConstantOfShape", [names["other"]], [names["zeros"]],
                                   value=numpy_helper.from_array(np.array([0], np.int64))),
                  helper.make_node("Reshape", [names["zeros"], names["first"]], [names["same_length_as_input0"]],
                                   name=f"{label} (Scan): scan input {j} must have scan input 0's length"),
                  helper.make_node("ReduceSum", [names["same_length_as_input0"]], [names["zero"]], keepdims=0),
                  helper.make_node("Add", [first, names["zero"]], [names["checked"]])]
        return names["checked"]


def _has_scan(graph) -> bool:
    return any(node.op_type == "Scan" or any(
        a.type == onnx.AttributeProto.GRAPH and _has_scan(a.g) for a in node.attribute) for node in graph.node)


def declared_rank(value_info, default):
    """The rank a value declares, else ``default``."""
    tensor = value_info.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else default

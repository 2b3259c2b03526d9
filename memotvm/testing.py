"""Building single-node recurrent ONNX models and their inputs (tests, benchmarks, docs).

``make_recurrent_model`` writes any LSTM/GRU/RNN configuration the ONNX spec allows as a
one-node model with its weights as initializers; ``smooth_sequence`` makes inputs with
the temporal smoothness of real signals (a random walk through a low-pass filter), on
which memoization has something to find, unlike white noise.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .cells import GATES

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16}


def make_recurrent_model(
    op: str,
    input_size: int,
    hidden_size: int,
    *,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    sequence_lens: bool = False,
    initial_h: bool = False,
    initial_c: bool = False,
    peepholes: bool = False,
    outputs=("Y", "Y_h", "Y_c"),
    attrs: dict | None = None,
    weight_scale: float = 0.5,
    seed: int = 0,
    dtype: str = "float32",
    opset: int = 14,
    name: str = "rnn",
    weights: dict | None = None,
) -> onnx.ModelProto:
    """A model with one ``op`` node; X and the chosen optional inputs are graph inputs.

    ``X`` has dynamic sequence and batch dimensions.  ``outputs`` lists the outputs to
    produce (Y_c is dropped for GRU/RNN).  ``weights`` may give W, R, B (and P) arrays.
    """
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    rows = len(GATES[op]) * hidden_size
    npdt = np.dtype(dtype)
    given = dict(weights or {})

    def rand(shape):
        return (rng.standard_normal(shape) * weight_scale / np.sqrt(max(shape[-1], 1))).astype(npdt)

    W = given.get("W", rand((nd, rows, input_size)))
    R = given.get("R", rand((nd, rows, hidden_size)))
    inits = [numpy_helper.from_array(np.asarray(W, npdt), "W"), numpy_helper.from_array(np.asarray(R, npdt), "R")]
    node_inputs = ["X", "W", "R"]
    ty = _ONNX_TYPES[dtype]
    seq, batch = ("seq_length", "batch_size")
    x_dims = [seq, batch, input_size] if layout == 0 else [batch, seq, input_size]
    state_dims = [nd, batch, hidden_size] if layout == 0 else [batch, nd, hidden_size]
    graph_inputs = [helper.make_tensor_value_info("X", ty, x_dims)]

    def optional(flag, label, make):
        if flag:
            node_inputs.append(label)
            make()
        else:
            node_inputs.append("")

    def add_init(label, array):
        inits.append(numpy_helper.from_array(np.asarray(array, npdt), label))

    optional(bias, "B", lambda: add_init("B", given.get("B", rand((nd, 2 * rows)) * 2)))
    optional(sequence_lens, "sequence_lens", lambda: graph_inputs.append(
        helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [batch])))
    optional(initial_h, "initial_h", lambda: graph_inputs.append(
        helper.make_tensor_value_info("initial_h", ty, state_dims)))
    if op == "LSTM":
        optional(initial_c, "initial_c", lambda: graph_inputs.append(
            helper.make_tensor_value_info("initial_c", ty, state_dims)))
        optional(peepholes, "P", lambda: add_init("P", given.get("P", rand((nd, 3 * hidden_size)) * 4)))
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()

    wanted = [o for o in outputs if o != "Y_c" or op == "LSTM"]
    node_outputs = [o if o in wanted else "" for o in ("Y", "Y_h", "Y_c")[: 3 if op == "LSTM" else 2]]
    while node_outputs and node_outputs[-1] == "":
        node_outputs.pop()
    all_attrs = {"hidden_size": hidden_size, "direction": direction}
    if layout:
        all_attrs["layout"] = layout
    all_attrs.update(attrs or {})
    node = helper.make_node(op, node_inputs, node_outputs, name=name, **all_attrs)
    out_dims = {"Y": [seq, nd, batch, hidden_size] if layout == 0 else [batch, seq, nd, hidden_size],
                "Y_h": state_dims, "Y_c": state_dims}
    graph_outputs = [helper.make_tensor_value_info(o, ty, out_dims[o]) for o in wanted]
    graph = helper.make_graph([node], f"{op.lower()}_model", graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model


def make_inputs(model: onnx.ModelProto, seq_length: int, batch: int, *, seed: int = 0,
                smooth: bool = False, lengths=None) -> dict:
    """Random inputs for a model made by :func:`make_recurrent_model`."""
    rng = np.random.default_rng(seed)
    node = model.graph.node[0]
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    feeds = {}
    for vi in model.graph.input:
        ttype = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        dims = [d.dim_value if d.dim_value else None for d in ttype.shape.dim]
        if vi.name == "X":
            D = dims[2]
            x = smooth_sequence(seq_length, batch, D, rng) if smooth else rng.standard_normal((seq_length, batch, D))
            feeds["X"] = (x if layout == 0 else x.transpose(1, 0, 2)).astype(dtype)
        elif vi.name == "sequence_lens":
            feeds[vi.name] = (np.asarray(lengths, np.int32) if lengths is not None
                              else rng.integers(1, seq_length + 1, size=batch).astype(np.int32))
        else:
            nd, H = (dims[0], dims[2]) if layout == 0 else (dims[1], dims[2])
            shape = (nd, batch, H) if layout == 0 else (batch, nd, H)
            feeds[vi.name] = (rng.standard_normal(shape) * 0.5).astype(dtype)
    return feeds


def smooth_sequence(seq_length: int, batch: int, size: int, rng=None, smoothness: float = 0.9):
    """[seq_length, batch, size] float32 with realistic step-to-step correlation."""
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.empty((seq_length, batch, size), np.float32)
    state = rng.standard_normal((batch, size))
    for t in range(seq_length):
        state = smoothness * state + np.sqrt(1 - smoothness**2) * rng.standard_normal((batch, size))
        x[t] = state
    return x


def to_layout0(model: onnx.ModelProto) -> onnx.ModelProto:
    """The layout-0 twin of a layout-1 single-node model (onnxruntime rejects layout 1):
    same weights, inputs and outputs transposed around the node."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    node = graph.node[0]
    for attr in list(node.attribute):
        if attr.name == "layout":
            node.attribute.remove(attr)
    pre, post = [], []
    perms_in = {"X": [1, 0, 2], "initial_h": [1, 0, 2], "initial_c": [1, 0, 2]}
    for i, name in enumerate(node.input):
        if name in perms_in:
            pre.append(helper.make_node("Transpose", [name], [name + "_t"], perm=perms_in[name]))
            node.input[i] = name + "_t"
    perms_out = {"Y": [2, 0, 1, 3], "Y_h": [1, 0, 2], "Y_c": [1, 0, 2]}
    for i, name in enumerate(node.output):
        if name:
            post.append(helper.make_node("Transpose", [name + "_t"], [name], perm=perms_out[name]))
            node.output[i] = name + "_t"
    nodes = pre + [node] + post
    del graph.node[:]
    graph.node.extend(nodes)
    return twin

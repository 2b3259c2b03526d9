"""Whole models: the torch-exported fixture, opsets 7 to 22, stacked recurrent layers."""

import numpy as np
import pytest
from onnx import TensorProto, ValueInfoProto, helper, numpy_helper

import memotvm
from memotvm.testing import make_inputs, make_recurrent_model

from conftest import assert_outputs_close, run_onnxruntime


def test_torch_fixture_matches_onnxruntime(torch_fixture):
    model, feeds = torch_fixture
    compiled = memotvm.compile(model)
    assert [loop.name for loop in compiled.loops] == ["/lstm/LSTM", "/lstm/LSTM_1", "/gru/GRU"]
    assert_outputs_close(compiled.run(feeds), run_onnxruntime(model, feeds), atol=1e-5)
    # Other sequence lengths and batch sizes through the same compiled model.
    rng = np.random.default_rng(1)
    for seq, batch in [(1, 1), (37, 2), (5, 8)]:
        tokens = {"tokens": rng.integers(0, 50, size=(seq, batch)).astype(np.int64)}
        assert_outputs_close(compiled.run(tokens), run_onnxruntime(model, tokens), atol=1e-5)


def test_torch_packed_sequences_of_unsorted_lengths():
    """pack_padded_sequence(enforce_sorted=False) exports a TopK whose k is the batch
    size and a ReduceProd of a Shape: TVM's frontend refused both."""
    import os

    import onnx

    from memotvm.passes import MemoConfig
    from memotvm.reference import ReferenceSession

    model = onnx.load(os.path.join(os.path.dirname(__file__), "..", "memotvm", "models",
                                   "torch_packed_gru.onnx"))
    compiled = memotvm.compile(model)
    rng = np.random.default_rng(0)
    # Unsorted, tied, full and single-step lengths; other batch sizes and lengths.
    for lengths, seq in [([7, 3, 5], 7), ([3, 3, 3, 3], 7), ([1, 9, 9, 4, 2], 9), ([2], 2)]:
        feeds = {"x": rng.standard_normal((seq, len(lengths), 6)).astype(np.float32),
                 "lengths": np.array(lengths, np.int64)}
        assert_outputs_close(compiled.run(feeds), run_onnxruntime(model, feeds), atol=1e-5)
    config = MemoConfig(threshold=0.3, predictor="bnn")
    memo = memotvm.compile(model, memo=config)
    reference = ReferenceSession(model, memo=config)
    assert_outputs_close(memo.run(feeds), reference.run(feeds), atol=1e-5)
    assert memo.last_stats.reuse == reference.stats.reuse


def _top_k_of_axis_model(axis, largest, k_offset=0):
    """TopK with k computed from the input's shape: Shape -> Gather -> (Sub) -> TopK."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "axis"], ["size"]),
             helper.make_node("Sub", ["size", "offset"], ["k0"]),
             helper.make_node("Unsqueeze", ["k0", "zero"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=axis, largest=largest)]
    graph = helper.make_graph(
        nodes, "top_k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["a", "b"]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, ["a", "b"])],
        [helper.make_tensor("axis", TensorProto.INT64, [], [axis]),
         helper.make_tensor("offset", TensorProto.INT64, [], [k_offset]),
         helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("largest", [1, 0])
def test_top_k_of_a_whole_axis_orders_ties_by_index(axis, largest):
    x = np.array([[3, 1, 3, 2, 1], [0, 0, 5, 5, 0], [2, 2, 2, 2, 2]], np.float32)
    model = _top_k_of_axis_model(axis, largest)
    for got, want in zip(memotvm.compile(model).run({"x": x}), run_onnxruntime(model, {"x": x})):
        np.testing.assert_array_equal(got, want)


def test_top_k_of_a_computed_k_that_is_not_the_axis_is_refused():
    with pytest.raises(memotvm.UnsupportedModelError, match="TopK.*not the size of axis"):
        memotvm.compile(_top_k_of_axis_model(-1, 1, k_offset=1))


INT64 = np.iinfo(np.int64)


# torch.flip(x, [0]) exports Slice(-1, -INT64_MAX, step -1); TVM derived the extent
# min(INT64_MAX - 1, t), which its memory planner took as a bound to allocate (failing to
# compile: "exceeds range of int64").  Also x[::-2], x[1:], a whole reversal from INT64_MAX.
@pytest.mark.parametrize("start, end, step", [(-1, -INT64.max, -1), (-2, -INT64.max, -2), (1, INT64.max, 1),
                                              (INT64.max, INT64.min, -1), (2, -100, -1)])
def test_slices_to_the_end_of_a_dynamic_axis_feed_a_recurrent_layer(start, end, step):
    rnn = make_recurrent_model("RNN", 2, 3)
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["x_sliced"])]
    nodes += list(rnn.graph.node)
    nodes[1].input[0] = "x_sliced"
    bounds = {"starts": start, "ends": end, "axes": 0, "steps": step}
    graph = helper.make_graph(
        nodes, "sliced", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 2])],
        list(rnn.graph.output),
        list(rnn.graph.initializer) + [helper.make_tensor(k, TensorProto.INT64, [1], [v]) for k, v in bounds.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = memotvm.compile(model)
    for seq in (6, 1, 11):
        x = {"x": np.random.default_rng(seq).random((seq, 3, 2), dtype=np.float32)}
        assert_outputs_close(compiled.run(x), run_onnxruntime(model, x), atol=1e-6)


# Slice bounds as ONNX clamps them (onnxruntime agrees): a start before the axis with a
# negative step takes element 0 (numpy's, and TVM's, slice is empty); empty slices of
# static axes (TVM failed to compile them); out-of-range and extreme bounds.
SLICE_CORNERS = [(-7, -9, -1), (-7, -4, -3), (-2, INT64.min, -2), (9, -INT64.max, 2), (4, 1, 1),
                 (INT64.max, -9, 1), (INT64.min, 3, -1), (-3, INT64.max, 2), (2, 2, 1), (9, -9, -3)]


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("start, end, step", SLICE_CORNERS)
def test_slice_corners_follow_the_onnx_spec(start, end, step, static):
    bounds = {"starts": [start, 0], "ends": [end, 2], "axes": [0, -1], "steps": [step, 1]}
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], "slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3] if static else ["n", "m"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor(k, TensorProto.INT64, [2], v) for k, v in bounds.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = memotvm.compile(model)
    for rows in [5] if static else [5, 1, 2]:
        x = {"x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)}
        (got,), (want,) = compiled.run(x), run_onnxruntime(model, x)
        assert got.shape == want.shape and np.array_equal(got, want)


def test_scalar_inputs():
    """A 0-d input (a scale, a temperature) stays 0-d: it was made 1-d on its way to
    the virtual machine, which refused it."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "scale": np.array(0.5, np.float32)}
    np.testing.assert_array_equal(memotvm.compile(model).run(feeds)[0], feeds["x"] * 0.5)


def _one_node_model(op, inputs, attrs=None, initializers=(), opset=17, n_outputs=1):
    """A model of one node; ``inputs``: (name, ONNX type, shape) of the graph inputs,
    then the node reads the initializers (numpy arrays by name) in order."""
    node_inputs = [name for name, _, _ in inputs] + [name for name, _ in initializers]
    outputs = [f"y{i}" for i in range(n_outputs)]
    graph = helper.make_graph(
        [helper.make_node(op, node_inputs, outputs, **(attrs or {}))], op.lower(),
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [ValueInfoProto(name=name) for name in outputs],  # types left to inference
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _same_as_onnxruntime(model, feeds_list):
    compiled = memotvm.compile(model)
    for feeds in feeds_list:
        for got, want in zip(compiled.run(feeds), run_onnxruntime(model, feeds)):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize("opset, training", [(13, None), (13, False), (13, "ratio 0")])
def test_dropout_at_inference_passes_data_and_a_mask_of_ones(opset, training):
    """The mask is boolean (it had the data's type: float32 ones)."""
    extra = []
    if training is not None:
        extra = [("ratio", np.array(0.0 if training == "ratio 0" else 0.3, np.float32)),
                 ("training_mode", np.array(training == "ratio 0"))]
    model = _one_node_model("Dropout", [("x", F, ["n", 3])], initializers=extra, opset=opset, n_outputs=2)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    _same_as_onnxruntime(model, [{"x": x}, {"x": x[:1]}])


@pytest.mark.parametrize("opset, mask_type", [(7, np.float32), (10, np.bool_)])
def test_dropout_of_early_opsets_keeps_every_element(opset, mask_type):
    """Before opset 12 onnxruntime returns a mask of zeros at inference; the mask marks
    the elements kept, all of them, as onnx.reference says (in the data's type at
    opset 7, as its spec says, boolean from opset 10)."""
    model = _one_node_model("Dropout", [("x", F, ["n", 3])], opset=opset, n_outputs=2)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y, mask = memotvm.compile(model).run({"x": x})
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == mask_type and mask.shape == x.shape and mask.all()


def test_dropout_in_training_mode_is_refused():
    model = _one_node_model("Dropout", [("x", F, ["n", 3])], opset=13, n_outputs=2, initializers=[
        ("ratio", np.array(0.5, np.float32)), ("training_mode", np.array(True))])
    with pytest.raises(memotvm.UnsupportedModelError, match="training mode with ratio 0.5"):
        memotvm.compile(model)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("values", [np.array([0.0, 1.0], np.float32), np.array([-3, 7], np.int64)])
def test_one_hot_in_the_values_type_with_out_of_range_indices(axis, values):
    """Negative indices count from depth; indices outside [-depth, depth) give a row of
    off values (TVM's output was float64 whatever the values)."""
    # (onnxruntime has kernels for a float depth with float values, an int64 one with int64.)
    depth = np.array(5, values.dtype)
    model = _one_node_model("OneHot", [("i", I64, ["n"])], {"axis": axis},
                            [("depth", depth), ("values", values)])
    feeds = [{"i": np.array([0, 4, -1, -5, 5, -6, 2], np.int64)}, {"i": np.array([3], np.int64)}]
    _same_as_onnxruntime(model, feeds)


@pytest.mark.parametrize("time_axis, shape", [(0, ["t", "b", 3]), (1, ["b", "t"]), (0, ["t", "b", 2, 2])])
def test_reverse_sequence(time_axis, shape):
    model = _one_node_model("ReverseSequence", [("x", F, shape), ("lens", I64, ["b"])],
                            {"time_axis": time_axis, "batch_axis": 1 - time_axis})
    rng = np.random.default_rng(1)
    feeds = []
    for t, b, lens in [(5, 4, [5, 1, 0, 3]), (1, 2, [1, 0]), (6, 1, [4])]:
        dims = [t if d == "t" else b if d == "b" else d for d in shape]
        feeds.append({"x": rng.standard_normal(dims).astype(np.float32), "lens": np.array(lens, np.int64)})
    _same_as_onnxruntime(model, feeds)
    with pytest.raises(memotvm.InputError, match=r"ReverseSequence: a sequence_lens value is outside \[0, 5\]"):
        bad = dict(feeds[0], lens=np.array([5, 6, 0, 3], np.int64))
        memotvm.compile(model).run(bad)


@pytest.mark.parametrize("op, attrs", [("Celu", {"alpha": 0.7}), ("Celu", {}),
                                       ("LpNormalization", {"p": 1, "axis": 0}),
                                       ("LpNormalization", {"p": 2, "axis": -1})])
def test_operators_tvm_does_not_convert(op, attrs):
    model = _one_node_model(op, [("x", F, ["n", 4])], attrs)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32) * 3
    _same_as_onnxruntime(model, [{"x": x}, {"x": x[:1]}])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_and_min_propagate_nan(op):
    """A NaN made inside a model (a log of a negative) stays NaN, as in onnx.reference and
    onnxruntime; TVM's compare-and-select dropped it when it came first."""
    model = _one_node_model(op, [("a", F, ["n", 3]), ("b", F, [3]), ("c", F, [1])])
    a = np.array([[np.nan, 1, 2], [0, 5, np.nan]], np.float32)
    feeds = {"a": a, "b": np.array([0, np.nan, 1], np.float32), "c": np.array([0.5], np.float32)}
    compiled = memotvm.compile(model)
    want = run_onnxruntime(model, feeds)[0]
    np.testing.assert_array_equal(compiled.run(feeds, check_finite=False)[0], want)


def test_states_and_lengths_computed_from_shapes_and_a_mask():
    """A graph as tf2onnx and hand-written exports build it: the initial state's shape
    gathered from x's by a 1-D index (TVM made that a tensor and asserted inside its
    lowering of ConstantOfShape; Reshape refused it), the lengths summed from a mask."""
    D, H = 4, 6
    rng = np.random.default_rng(3)
    model = make_recurrent_model("LSTM", D, H, direction="bidirectional")
    graph = model.graph
    lstm = next(node for node in graph.node if node.op_type == "LSTM")
    del lstm.input[4:]
    lstm.input.extend(["lens", "h0", "h0"])
    graph.input.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, ["T", "B"]))
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
                              {"axis0": [0], "batch_at": [1], "dirs": [2], "hidden": [H], "rest": [-1]}.items()])
    graph.node.insert(0, helper.make_node("ConstantOfShape", ["h_shape"], ["h0"],
                                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])))
    for node in reversed([
            helper.make_node("Cast", ["mask"], ["mask_int"], to=TensorProto.INT32),
            helper.make_node("ReduceSum", ["mask_int", "axis0"], ["lens"], keepdims=0),
            helper.make_node("Shape", ["X"], ["x_shape"]),
            helper.make_node("Gather", ["x_shape", "batch_at"], ["batch"]),
            helper.make_node("Concat", ["dirs", "batch", "hidden"], ["h_shape"], axis=0)]):
        graph.node.insert(0, node)
    graph.node.append(helper.make_node("Concat", ["batch", "rest"], ["flat_shape"], axis=0))
    graph.node.append(helper.make_node("Reshape", ["Y_h", "flat_shape"], ["flat"]))
    graph.output.append(ValueInfoProto(name="flat"))
    compiled = memotvm.compile(model)
    for T, B in [(7, 3), (5, 1)]:
        mask = np.arange(T)[:, None] < (np.arange(B) * 3 % (T + 1))[None, :]
        feeds = {"X": rng.standard_normal((T, B, D)).astype(np.float32), "mask": mask}
        assert_outputs_close(compiled.run(feeds), run_onnxruntime(model, feeds), atol=1e-6)


@pytest.mark.parametrize("shape_nodes", ["divided", "size"])
def test_reshape_to_a_shape_computed_in_tensors(shape_nodes):
    """Sizes divided, sliced and concatenated as integer tensors, or an element count
    (TVM's Reshape takes only shape values or constants: it refused these)."""
    ints = {"halves": [1, 1, 2], "at": [2], "end": [3], "rest": [-1], "axis0": [0]}
    nodes = {"divided": [helper.make_node("Shape", ["x"], ["shape"]),
                         helper.make_node("Div", ["shape", "halves"], ["half"]),
                         helper.make_node("Slice", ["half", "at", "end"], ["last"]),
                         helper.make_node("Concat", ["rest", "last"], ["target"], axis=0)],
             "size": [helper.make_node("Size", ["x"], ["count"]),
                      helper.make_node("Unsqueeze", ["count", "axis0"], ["target"])]}[shape_nodes]
    graph = helper.make_graph(
        nodes + [helper.make_node("Reshape", ["x", "target"], ["y"])], "reshaped",
        [helper.make_tensor_value_info("x", F, ["T", "B", 4])], [ValueInfoProto(name="y")],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(4)
    _same_as_onnxruntime(model, [{"x": rng.standard_normal((t, b, 4)).astype(np.float32)}
                                 for t, b in [(3, 2), (5, 1)]])


def test_stacked_layers_flattened_by_a_concat_of_shapes_and_a_product():
    """torch's dynamo export of a multi-layer or bidirectional LSTM: between layers,
    Y [T, directions, B, H] is transposed and reshaped to [T, B, directions * H] by a
    shape concatenated from two sliced Shapes and the product of two others (TVM's
    Concat took shapes or tensors, not both: such models did not compile)."""
    D, H = 5, 6
    model = make_recurrent_model("LSTM", D, H, direction="bidirectional", outputs=("Y",))
    second = make_recurrent_model("GRU", 2 * H, H, outputs=("Y",), seed=1)
    graph = model.graph
    ints = {"zero": [0], "one": [1], "two": [2], "three": [3], "four": [4], "rest": [-1]}
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()])
    graph.initializer.extend([numpy_helper.from_array(numpy_helper.to_array(t), t.name + "_2")
                              for t in second.graph.initializer])
    graph.node.extend([
        helper.make_node("Transpose", ["Y"], ["y_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["y_t"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["steps"]),
        helper.make_node("Slice", ["s", "one", "two"], ["batch"]),
        helper.make_node("Slice", ["s", "two", "three"], ["dirs"]),
        helper.make_node("Slice", ["s", "three", "four"], ["hidden"]),
        helper.make_node("Mul", ["dirs", "hidden"], ["width2"]),
        helper.make_node("Reshape", ["width2", "rest"], ["width"]),
        helper.make_node("Concat", ["steps", "batch", "width"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["y_t", "flat_shape"], ["x2"]),
        helper.make_node("GRU", ["x2", "W_2", "R_2", "B_2"], ["y2"], hidden_size=H),
    ])
    del graph.output[:]
    graph.output.append(ValueInfoProto(name="y2"))
    rng = np.random.default_rng(5)
    _same_as_onnxruntime(model, [{"X": rng.standard_normal((t, b, D)).astype(np.float32)}
                                 for t, b in [(7, 3), (2, 1)]])


def test_concat_of_a_shape_and_a_tensor_of_data():
    """Where the tensor's values do not derive from shapes, the shape becomes a tensor."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["s", "k"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "concat", [helper.make_tensor_value_info("x", F, ["T", 3]),
                                                helper.make_tensor_value_info("k", I64, ["n"])],
                              [ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros((4, 3), np.float32)
    _same_as_onnxruntime(model, [{"x": x, "k": np.array([7, -2], np.int64)},
                                 {"x": x[:1], "k": np.array([5], np.int64)}])


@pytest.mark.parametrize("op, attrs", [("Conv", {"auto_pad": "SAME_UPPER"}), ("Conv", {"auto_pad": "SAME_LOWER"}),
                                       ("MaxPool", {"auto_pad": "SAME_LOWER", "kernel_shape": [2]}),
                                       ("AveragePool", {"auto_pad": "SAME_UPPER", "kernel_shape": [3]})])
def test_same_padding_over_a_dynamic_time_axis(op, attrs):
    """A speech front end's "same" convolution over a time axis of any length: at stride
    1 the padding does not depend on the length (TVM needed the length to compute it)."""
    weights = [("K", np.random.default_rng(5).standard_normal((3, 2, 4)).astype(np.float32))] if op == "Conv" else []
    model = _one_node_model(op, [("x", F, [1, 2, "T"])], attrs, weights)
    rng = np.random.default_rng(6)
    _same_as_onnxruntime(model, [{"x": rng.standard_normal((1, 2, t)).astype(np.float32)} for t in (7, 4)])
    strided = _one_node_model(op, [("x", F, [1, 2, "T"])], dict(attrs, strides=[2]), weights)
    with pytest.raises(memotvm.UnsupportedModelError, match="stride 2 over a dynamic axis"):
        memotvm.compile(strided)


def test_squeeze_without_axes_of_dynamic_dimensions():
    """The dimensions known to be 1 go (TVM failed to compile it); a dynamic one that is
    1 at run time, which ONNX would remove too, is refused."""
    model = _one_node_model("Squeeze", [("x", F, ["n", 1, "m"])])
    _same_as_onnxruntime(model, [{"x": np.ones((3, 1, 2), np.float32)}])
    with pytest.raises(memotvm.InputError, match="dimension 0 of its input .* is 1 at run time"):
        memotvm.compile(model).run({"x": np.ones((1, 1, 2), np.float32)})


def test_split_with_empty_parts():
    model = _one_node_model("Split", [("x", F, ["n", 2])], {"axis": 0},
                            [("split", np.array([2, 0, 3], np.int64))], n_outputs=3)
    _same_as_onnxruntime(model, [{"x": np.arange(10, dtype=np.float32).reshape(5, 2)}])
    with pytest.raises(memotvm.InputError, match="the parts' total"):
        memotvm.compile(model).run({"x": np.ones((4, 2), np.float32)})


@pytest.mark.parametrize("shape", [[3, 1, 4], [3, 4]])
def test_expand_of_dynamic_dimensions_to_a_constant_shape(shape):
    """A dynamic dimension against a 1 keeps its size, against another size must equal
    it (TVM's converter failed on dynamic dimensions).  One that is 1 at run time is
    refused: TVM's broadcast_to would read it past its end."""
    model = _one_node_model("Expand", [("x", F, ["n", 1])], initializers=[("shape", np.array(shape, np.int64))])
    rows = [5, 1] if len(shape) == 3 else [3]
    _same_as_onnxruntime(model, [{"x": np.arange(n, dtype=np.float32).reshape(n, 1)} for n in rows])
    if len(shape) == 2:
        for n in (2, 1):
            with pytest.raises(memotvm.InputError, match="must be equal"):
                memotvm.compile(model).run({"x": np.ones((n, 1), np.float32)})


@pytest.mark.parametrize("opset", [7, 9, 13, 14, 18, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_opsets(op, opset):
    kwargs = dict(direction="bidirectional", sequence_lens=True, initial_h=True, opset=opset)
    if op == "GRU":
        kwargs["attrs"] = {"linear_before_reset": 1}
    model = make_recurrent_model(op, 5, 4, **kwargs)
    feeds = make_inputs(model, 6, 2)
    assert_outputs_close(memotvm.compile(model).run(feeds), run_onnxruntime(model, feeds), atol=1e-5)


def _stacked_model():
    """Gather embedding -> LSTM -> Transpose/Reshape -> GRU (reverse) -> Squeeze -> Gemm
    -> Softmax, written by hand the way exporters lay such models out."""
    rng = np.random.default_rng(0)
    V, E, H1, H2, C = 30, 8, 7, 6, 4

    def init(name, shape, scale=0.4):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("emb", (V, E)), init("W1", (2, 4 * H1, E)), init("R1", (2, 4 * H1, H1)),
        init("B1", (2, 8 * H1)), init("W2", (1, 3 * H2, 2 * H1)), init("R2", (1, 3 * H2, H2)),
        init("fc_w", (C, H2)), init("fc_b", (C,)),
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape3"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["x"], name="embed"),
        helper.make_node("LSTM", ["x", "W1", "R1", "B1"], ["y1"], name="enc", hidden_size=H1,
                         direction="bidirectional"),
        helper.make_node("Transpose", ["y1"], ["y1t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["y1t", "shape3"], ["x2"]),
        helper.make_node("GRU", ["x2", "W2", "R2"], ["", "h2"], name="dec", hidden_size=H2,
                         direction="reverse", linear_before_reset=1),
        helper.make_node("Squeeze", ["h2", "axis0"], ["h2s"]),
        helper.make_node("Gemm", ["h2s", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "stacked", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", "N"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_stacked_model_with_surrounding_layers():
    model = _stacked_model()
    feeds = {"tokens": np.random.default_rng(2).integers(0, 30, size=(11, 3)).astype(np.int64)}
    compiled = memotvm.compile(model)
    assert_outputs_close(compiled.run(feeds), run_onnxruntime(model, feeds), atol=1e-5)
    memoized = memotvm.compile(model, memo=0.2)
    memoized.run(feeds)
    assert set(memoized.last_stats.per_node) == {"enc", "dec"}


def test_get_inputs_and_outputs_name_types_and_symbolic_shapes():
    """As onnxruntime's session.get_inputs() / get_outputs(): names, element types and
    shapes with symbolic dimensions by name."""
    import os

    from memotvm.runtime import NodeArg

    models = os.path.join(os.path.dirname(memotvm.__file__), "models")
    model = memotvm.compile(os.path.join(models, "pydoc_charlstm.onnx"))
    assert model.get_inputs() == [NodeArg("tokens", "int64", ["seq", "batch"])]
    assert model.get_outputs() == [NodeArg("logits", "float32", ["seq", "batch", 97])]

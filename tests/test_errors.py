"""Bad input gets a clear error naming the problem, never a crash or a traceback."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import memotvm
from memotvm.cli import main
from memotvm.testing import make_inputs, make_recurrent_model


@pytest.fixture(scope="module")
def lstm():
    model = make_recurrent_model("LSTM", 6, 5, direction="bidirectional", sequence_lens=True,
                                 initial_h=True)
    return model, memotvm.compile(model)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model")
    with pytest.raises(memotvm.ModelLoadError, match="not an ONNX"):
        memotvm.compile(str(path))


def test_truncated_file(tmp_path, lstm):
    data = lstm[0].SerializeToString()
    for cut in (len(data) // 3, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(memotvm.ModelLoadError):
            memotvm.compile(str(path))


def test_missing_file_and_wrong_object(tmp_path):
    with pytest.raises(memotvm.ModelLoadError, match="no such file"):
        memotvm.compile(str(tmp_path / "absent.onnx"))
    with pytest.raises(memotvm.ModelLoadError, match="expected a path"):
        memotvm.compile(42)



def test_weights_in_an_external_file(tmp_path):
    """Large exports keep their weights beside the model: a path finds them; a proto or
    bytes cannot, and the error says which tensor and file are missing."""
    model = make_recurrent_model("GRU", 7, 9)
    path = tmp_path / "gru.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving moves the weights of the proto it is given out
    onnx.save_model(saved, str(path), save_as_external_data=True, location="gru.weights",
                    size_threshold=0)
    feeds = make_inputs(model, 4, 2)
    np.testing.assert_array_equal(memotvm.compile(str(path)).run(feeds)[0],
                                  memotvm.compile(model).run(feeds)[0])
    without_data = onnx.load(str(path), load_external_data=False)
    for given in (without_data, without_data.SerializeToString()):
        with pytest.raises(memotvm.ModelLoadError, match="'W' is stored in the external file 'gru.weights'"):
            memotvm.compile(given)

def _one_node_model(op_type, domain=""):
    node = helper.make_node(op_type, ["x"], ["y"], name="strange_node", domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op,domain", [("FancyOp", ""), ("Custom", "com.example")])
def test_unsupported_op_names_op_and_node(op, domain):
    with pytest.raises(memotvm.UnsupportedModelError, match=f"strange_node.*{op}"):
        memotvm.compile(_one_node_model(op, domain))


def test_unsupported_recurrent_attribute():
    model = make_recurrent_model("LSTM", 3, 2, attrs={"activations": ["Sigmoid", "Tanh", "Swish"]})
    with pytest.raises(memotvm.UnsupportedModelError, match="unknown activation 'Swish'"):
        memotvm.compile(model)


def test_missing_and_extra_inputs(lstm):
    _, compiled = lstm
    feeds = make_inputs(lstm[0], 4, 2)
    partial = {k: v for k, v in feeds.items() if k != "initial_h"}
    with pytest.raises(memotvm.InputError, match="missing input.*initial_h"):
        compiled.run(partial)
    with pytest.raises(memotvm.InputError, match="unknown input.*bogus"):
        compiled.run({**feeds, "bogus": np.zeros(1)})


def test_wrong_shape_rank_and_dtype(lstm):
    _, compiled = lstm
    feeds = make_inputs(lstm[0], 4, 2)
    with pytest.raises(memotvm.InputError, match="input 'X': shape"):
        compiled.run({**feeds, "X": np.zeros((4, 2, 7), np.float32)})
    with pytest.raises(memotvm.InputError, match="input 'X': 2-d"):
        compiled.run({**feeds, "X": np.zeros((4, 6), np.float32)})
    with pytest.raises(memotvm.InputError, match="input 'X': dtype int64"):
        compiled.run({**feeds, "X": np.zeros((4, 2, 6), np.int64)})
    with pytest.raises(memotvm.InputError, match="batch_size"):
        compiled.run({**feeds, "initial_h": np.zeros((2, 3, 5), np.float32)})


def test_empty_inputs_are_rejected(lstm):
    _, compiled = lstm
    feeds = make_inputs(lstm[0], 4, 2)
    with pytest.raises(memotvm.InputError, match="input 'X' is empty"):
        compiled.run({**feeds, "X": np.zeros((0, 2, 6), np.float32)})
    with pytest.raises(memotvm.InputError, match="is empty"):
        compiled.run({"X": np.zeros((3, 0, 6), np.float32), "sequence_lens": np.zeros(0, np.int32),
                      "initial_h": np.zeros((2, 0, 5), np.float32)})


def test_nan_and_bad_sequence_lengths(lstm):
    _, compiled = lstm
    feeds = make_inputs(lstm[0], 4, 2)
    # A good call first: the calls after it, like it but for their values, take the
    # shorter path (runtime.RepeatedCall), which must check the values just the same.
    good = compiled.run(feeds)
    x = feeds["X"].copy()
    x[1, 0, 2] = np.nan
    with pytest.raises(memotvm.InputError, match="NaN"):
        compiled.run({**feeds, "X": x})
    x[1, 0, 2] = -np.inf
    compiled.run(feeds)
    with pytest.raises(memotvm.InputError, match="NaN or infinite"):
        compiled.run({**feeds, "X": x})
    # Finite values whose sum of squares overflows (the repeat's quick test, one dot
    # product) are accepted: the exact test settles it.
    huge = feeds["X"] * np.float32(1e30)
    assert np.isinf(np.vdot(huge, huge))
    compiled.run(feeds)
    assert all(np.isfinite(y).all() for y in compiled.run({**feeds, "X": huge}))
    for bad in ([5, 2], [-1, 2]):
        with pytest.raises(memotvm.InputError, match="sequence_lens of batch element 0"):
            compiled.run({**feeds, "sequence_lens": np.array(bad, np.int32)})
    for got, want in zip(compiled.run(feeds), good):
        np.testing.assert_array_equal(got, want)


def _graph_model(node, inputs, initializers=()):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                            for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ones(*shape):
    return np.random.default_rng(len(shape)).random(shape, dtype=np.float32)


# Models whose operators need a relation between symbolic dimensions that TVM cannot
# prove; before the checks the first three failed to compile inside TVM, the others
# computed a wrong result (MatMul and Gemm reading past their operands) where
# onnxruntime raises an error.  (model, good inputs, bad inputs, message)
SHAPE_RELATIONS = {
    "add": (_graph_model(helper.make_node("Add", ["a", "b"], ["y"]), [("a", ["n", 4]), ("b", ["m", 4])]),
            {"a": _ones(5, 4), "b": _ones(5, 4)}, {"a": _ones(5, 4), "b": _ones(3, 4)},
            r"add: input 0 has shape \(5, 4\) and input 1 has shape \(3, 4\)"),
    "mul by constant": (_graph_model(helper.make_node("Mul", ["a", "c"], ["y"]), [("a", ["n", "p"])],
                                     [helper.make_tensor("c", TensorProto.FLOAT, [4], [1, 2, 3, 4])]),
                        {"a": _ones(5, 4)}, {"a": _ones(5, 3)}, r"multiply: .* must be equal"),
    "concat": (_graph_model(helper.make_node("Concat", ["a", "b"], ["y"], axis=0),
                            [("a", ["n", "p"]), ("b", ["m", "q"])]),
               {"a": _ones(5, 4), "b": _ones(3, 4)}, {"a": _ones(5, 4), "b": _ones(3, 2)},
               r"concat: .*dimension 1 of the first and 1 of the second must be equal"),
    "matmul": (_graph_model(helper.make_node("MatMul", ["a", "b"], ["y"]), [("a", [2, "k"]), ("b", ["j", 3])]),
               {"a": _ones(2, 5), "b": _ones(5, 3)}, {"a": _ones(2, 5), "b": _ones(4, 3)},
               r"matmul: .*\(2, 5\).*\(4, 3\)"),
    "gemm by constant": (_graph_model(helper.make_node("Gemm", ["a", "w"], ["y"]), [("a", ["n", "p"])],
                                      [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], list(range(8)))]),
                         {"a": _ones(5, 4)}, {"a": _ones(5, 3)}, r"matmul: .*must be equal"),
    "reshape -1": (_graph_model(helper.make_node("Reshape", ["a", "s"], ["y"]), [("a", ["n", 4])],
                                [helper.make_tensor("s", TensorProto.INT64, [2], [3, -1])]),
                   {"a": _ones(3, 4)}, {"a": _ones(5, 4)},
                   r"reshape: cannot reshape input 0 of shape \(5, 4\) to \(3, \?\): their numbers of elements differ"),
    "reshape fixed": (_graph_model(helper.make_node("Reshape", ["a", "s"], ["y"]), [("a", ["n", 4])],
                                   [helper.make_tensor("s", TensorProto.INT64, [2], [2, 6])]),
                      {"a": _ones(3, 4)}, {"a": _ones(4, 4)}, r"cannot reshape input 0 of shape \(4, 4\) to \(2, 6\)"),
}


@pytest.mark.parametrize("case", sorted(SHAPE_RELATIONS))
def test_shape_relations_tvm_cannot_prove_are_checked(case):
    from conftest import run_onnxruntime

    model, good, bad, message = SHAPE_RELATIONS[case]
    compiled = memotvm.compile(model)
    for got, want in zip(compiled.run(good), run_onnxruntime(model, good)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(memotvm.InputError, match=message):
        compiled.run(bad)


def test_broadcast_of_a_run_time_one_is_refused_with_the_reason():
    model, good, _, _ = SHAPE_RELATIONS["add"]
    with pytest.raises(memotvm.InputError, match="size 1 is known only at run time"):
        memotvm.compile(model).run({"a": _ones(5, 4), "b": _ones(1, 4)})


def test_gather_index_computed_out_of_range_is_an_input_error():
    """Indices computed inside the model were clamped into the table (memory-safe, but a
    wrong answer where onnxruntime raises)."""
    from conftest import run_onnxruntime

    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    nodes = [helper.make_node("Sub", ["i", "three"], ["j"]), helper.make_node("Gather", ["t", "j"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor("t", TensorProto.FLOAT, [4, 3], table.ravel()),
                               helper.make_tensor("three", TensorProto.INT64, [], [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = memotvm.compile(model)
    ok = {"i": np.array([0, 3, 5, 6], np.int64)}  # -3, 0, 2, 3: negative ones count from the end
    np.testing.assert_array_equal(compiled.run(ok)[0], run_onnxruntime(model, ok)[0])
    for bad in ([3, 7], [-2]):
        with pytest.raises(memotvm.InputError, match="Gather: an index .* is outside an axis of 4"):
            compiled.run({"i": np.array(bad, np.int64)})


@pytest.mark.parametrize("op", ["Conv", "MaxPool"])
def test_an_input_shorter_than_the_window_is_an_input_error(op):
    """A symbolic width shorter than a convolution's or pooling's window (with its
    padding) has no output position: named, where the generated code indexed with a
    negative size (a convolution computed channel by channel corrupted the heap)."""
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[0, 1, 0, 1], dilations=[1, 2])
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 3, 3], np.ones(72, np.float32))]
    else:
        node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 4], strides=[2, 2])
        inits = []
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 16, "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    compiled = memotvm.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    # The window spans dilation * (taps - 1) + 1 = 5 (Conv) or 4 (MaxPool) of the
    # padded axis: Conv needs 5 - 2 = 3 positions of the input, MaxPool 4.
    need = 3 if op == "Conv" else 4
    assert compiled.run({"x": _ones(1, 2, 16, need)})[0].shape[-1] == 1
    with pytest.raises(memotvm.InputError, match=rf"{op} node '{node.name}': axis 3 of its input "
                                                 rf"\(1, 2, 16, {need - 1}\) must be at least {need} long"):
        compiled.run({"x": _ones(1, 2, 16, need - 1)})


def test_recurrent_inputs_must_fit_the_weights_and_each_other():
    model = make_recurrent_model("GRU", 6, 5, initial_h=True, sequence_lens=True,
                                 direction="bidirectional")
    feeds = make_inputs(model, 4, 3)
    # Every input its own symbols, so that only the node relates them.
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param += "_" + value.name
            elif value.name == "X" and dim.dim_value == 6:
                dim.dim_param = "features"
    compiled = memotvm.compile(model)
    assert [y.shape for y in compiled.run(feeds)] == [(4, 2, 3, 5), (2, 3, 5)]
    with pytest.raises(memotvm.InputError, match=r"GRU node .*W has shape \(2, 15, 6\) and X has shape "
                                                  r"\(4, 3, 7\)"):
        compiled.run({**feeds, "X": _ones(4, 3, 7)})
    with pytest.raises(memotvm.InputError, match=r"X has shape \(4, 3, 6\) and sequence_lens has shape \(4,\)"):
        compiled.run({**feeds, "sequence_lens": np.array([4, 2, 1, 3], np.int32)})
    with pytest.raises(memotvm.InputError, match=r"and initial_h has shape \(2, 2, 5\)"):
        compiled.run({**feeds, "initial_h": _ones(2, 2, 5)})


@pytest.mark.parametrize("label, shape, message", [
    ("initial_c", [1, "B", 7], "input initial_c has hidden size 7, but R has 5"),
    ("initial_h", [2, "B", 5], "input initial_h has directions 2, but W has 1"),
    ("X", ["T", "B", 4], "input X has input size 4, but W has 6"),
])
def test_recurrent_inputs_that_cannot_fit_the_weights_are_the_models_error(label, shape, message):
    """Sizes fixed in the model that contradict W or R (torch's dynamo export of an LSTM
    with projections gives initial_c the projection's size): an error that names them
    when compiling, not TVM's failed cast."""
    model = make_recurrent_model("LSTM", 6, 5, initial_h=True, initial_c=True)
    value = next(v for v in model.graph.input if v.name == label)
    value.CopyFrom(helper.make_tensor_value_info(label, TensorProto.FLOAT, shape))
    with pytest.raises(memotvm.UnsupportedModelError, match=f"LSTM node .*: {message}"):
        memotvm.compile(model)


def test_out_of_range_embedding_index_is_an_input_error(torch_fixture):
    model, feeds = torch_fixture
    compiled = memotvm.compile(model)
    compiled.run(feeds)  # (so that the bad call is a repeat of a good one)
    tokens = feeds["tokens"].copy()
    tokens[0, 0] = 10_000
    with pytest.raises(memotvm.InputError, match="'tokens' indexes a table of 50 rows"):
        compiled.run({"tokens": tokens})


def test_cli_prints_one_line_and_fails(tmp_path, capsys, lstm):
    model_path = tmp_path / "m.onnx"
    onnx.save(lstm[0], str(model_path))
    inputs = tmp_path / "in.npz"
    np.savez(inputs, X=np.zeros((3, 2, 9), np.float32), sequence_lens=np.array([3, 3], np.int32),
             initial_h=np.zeros((2, 2, 5), np.float32))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage")
    cases = [
        ["run", str(model_path), "--inputs", str(inputs), "--out", str(tmp_path / "o.npz")],
        ["run", str(junk), "--inputs", str(inputs), "--out", str(tmp_path / "o.npz")],
        ["run", str(model_path), "--inputs", str(tmp_path / "none.npz"), "--out", "x.npz"],
        ["validate", str(model_path), "--inputs", str(inputs), "--threshold", "nan"],
        ["run", str(model_path), "--inputs", str(model_path), "--out", "x.npz"],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("memotvm: error: ") and err.count("\n") == 1, err


def test_cli_entry_point_runs_as_a_process(tmp_path, torch_fixture):
    model, feeds = torch_fixture
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "in.npz", **feeds)
    proc = subprocess.run(
        [sys.executable, "-m", "memotvm", "run", str(path), "--inputs", str(tmp_path / "in.npz"),
         "--out", str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from conftest import run_onnxruntime

    expected = run_onnxruntime(model, feeds)
    with np.load(tmp_path / "out.npz") as got:
        for name, e in zip([o.name for o in model.graph.output], expected):
            np.testing.assert_allclose(got[name], e, atol=1e-5, rtol=0)


def test_a_failure_inside_tvms_lowering_is_named(lstm):
    """TVM's passes raise their own errors from deep inside (FuseTIR's "Inconsistent
    buffers ..." met a model before its cause was fixed): compile names it as a model
    memotvm cannot compile yet, with TVM's error chained."""
    import tvm
    from unittest import mock

    from memotvm.targets.cpu import CpuBackend

    failure = tvm.error.InternalError("Traceback ...\nCheck failed: (a == b) is false: Inconsistent buffers")
    with mock.patch.object(CpuBackend, "build", side_effect=failure):
        with pytest.raises(memotvm.UnsupportedModelError, match=r"TVM could not compile this model "
                           r"after importing it \(InternalError: Check failed: .*Inconsistent buffers\)") as info:
            memotvm.compile(lstm[0])
    assert info.value.__cause__ is failure


@pytest.mark.parametrize("kind", ["sequence", "optional"])
def test_an_output_that_is_not_a_tensor_is_refused_by_name(kind):
    """An If whose branches give a sequence (or an optional sequence) as the graph's
    output: refused naming the output, rather than returned as a tensor (an optional
    sequence's one element came back as a bare tensor) or a crash inside TVM."""
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    out_type = seq_type if kind == "sequence" else helper.make_optional_type_proto(seq_type)

    def branch(name):
        return helper.make_graph([helper.make_node("SequenceConstruct", ["x"], [f"{name}_s"])], name, [],
                                 [helper.make_value_info(f"{name}_s", seq_type)])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["res"], then_branch=branch("a"), else_branch=branch("b"))], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_value_info("res", out_type)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(memotvm.UnsupportedModelError,
                       match=rf"output 'res' has {kind} type, not tensor type"):
        memotvm.compile(model)

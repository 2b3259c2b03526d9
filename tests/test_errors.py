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
    x = feeds["X"].copy()
    x[1, 0, 2] = np.nan
    with pytest.raises(memotvm.InputError, match="NaN"):
        compiled.run({**feeds, "X": x})
    for bad in ([5, 2], [-1, 2]):
        with pytest.raises(memotvm.InputError, match="sequence_lens of batch element 0"):
            compiled.run({**feeds, "sequence_lens": np.array(bad, np.int32)})


def test_out_of_range_embedding_index_is_an_input_error(torch_fixture):
    model, feeds = torch_fixture
    compiled = memotvm.compile(model)
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

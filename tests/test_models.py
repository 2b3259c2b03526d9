"""Whole models: the torch-exported fixture, opsets 7 to 22, stacked recurrent layers."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

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

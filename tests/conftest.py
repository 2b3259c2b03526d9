import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")


def run_onnxruntime(model, feeds):
    """onnxruntime's outputs for ``model`` (single-threaded: deterministic)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def onnxruntime_outputs():
    return run_onnxruntime


def assert_outputs_close(got, expected, atol):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"output {i}: shape {g.shape} vs {e.shape}"
        diff = float(np.max(np.abs(g.astype(np.float64) - e))) if g.size else 0.0
        assert diff <= atol, f"output {i}: max abs difference {diff:.3g} > {atol}"


@pytest.fixture(scope="session")
def torch_fixture():
    """The committed torch-exported model (embedding, 2-layer biLSTM, GRU, linear)."""
    import os

    import onnx

    models = os.path.join(os.path.dirname(__file__), "..", "memotvm", "models")
    model = onnx.load(os.path.join(models, "torch_lstm_gru.onnx"))
    feeds = dict(np.load(os.path.join(models, "torch_lstm_gru_inputs.npz")))
    return model, feeds

"""The validate, sweep, inspect and bench commands on a small layer."""

import json

import numpy as np
import onnx
import pytest

from memotvm.cli import main
from memotvm.testing import make_inputs, make_recurrent_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = make_recurrent_model("GRU", 12, 10, direction="bidirectional", sequence_lens=True)
    onnx.save(model, str(tmp / "m.onnx"))
    feeds = make_inputs(model, 16, 3, smooth=True)
    np.savez(tmp / "in.npz", **feeds)
    # A "classifier": labels are the argmax of the unmodified output at every position.
    import memotvm

    y = memotvm.compile(model).run(feeds)[0]
    np.savez(tmp / "labels.npz", labels=y.argmax(axis=-1))
    return tmp


def test_validate_json_is_stable(files, capsys):
    assert main(["validate", str(files / "m.onnx"), "--inputs", str(files / "in.npz"),
                 "--threshold", "0.3", "--labels", str(files / "labels.npz"),
                 "--metric", "accuracy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == 2
    assert set(report) == {"schema", "target", "memo", "outputs", "reuse",
                           "computations_avoided", "metric", "timings_s", "modelled_cost"}
    assert report["modelled_cost"] is None  # the CPU target has no cost model
    assert report["memo"] == {"threshold": 0.3, "predictor": "bnn", "per_node": {}}
    assert set(report["outputs"]) == {"Y", "Y_h"}
    assert report["reuse"]["nodes"]["rnn"]["directions"].keys() == {"forward", "reverse"}
    assert report["metric"]["unmodified"] == 1.0  # the labels are its own argmax
    assert 0 <= report["metric"]["loss"] <= 1
    assert report["computations_avoided"] == report["reuse"]["total"]["reuse"] > 0


def test_sweep_table_plot_and_json(files, capsys):
    plot, rows = files / "sweep.png", files / "sweep.json"
    assert main(["sweep", str(files / "m.onnx"), "--inputs", str(files / "in.npz"),
                 "--thresholds", "0,0.5", "--predictors", "bnn,lowrank:2,oracle",
                 "--plot", str(plot), "--json", str(rows), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lowrank:2" in out and plot.stat().st_size > 1000
    data = json.loads(rows.read_text())
    assert len(data) == 6
    assert all(r["reuse"] == 0 for r in data if r["threshold"] == 0)


def test_inspect_shows_kernel_before_and_after(files, capsys):
    assert main(["inspect", str(files / "m.onnx"), "--threshold", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "before the memoization pass" in out and "memo_q" in out and "W_signs" in out


def test_bench_a_generated_layer(files, capsys):
    out_json = files / "bench.json"
    assert main(["bench", "lstm:16", "--steps", "8", "--thresholds", "0.3", "--rounds", "2",
                 "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    names = [r["name"] for r in data["rows"]]
    assert names[:2] == ["memotvm", "memo@0.3"]
    assert data["memory_bytes"]["rnn"]["predictor_data"] > 0

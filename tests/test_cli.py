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
    assert report["schema"] == 4
    assert set(report) == {"schema", "target", "memo", "outputs", "reuse",
                           "computations_avoided", "metric", "timings_s", "modelled_cost", "stream",
                           "precision", "separately"}
    assert report["precision"] is None and report["separately"] is None  # fp32 weights
    assert report["modelled_cost"] is None  # the CPU target has no cost model
    assert report["stream"] is None  # one call, not a stream
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
    # Fair timing: every engine in its own process, with the spread, runs, threads and
    # the machine in the JSON.
    assert data["machine"]["cpus"] >= 1 and data["machine"]["versions"]["apache-tvm"]
    assert "own" in data["method"]
    for row in data["rows"]:
        s = row["spread"]
        assert s["runs"] >= 2 and s["min_ms"] <= s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] <= s["max_ms"]
        assert row["ms"] == pytest.approx(s["median_ms"])
    assert data["rows"][0]["threads"] >= 1
    assert "+-IQR/2" in capsys.readouterr().out


def test_version(capsys):
    import memotvm

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"memotvm {memotvm.__version__}"
    assert memotvm.__version__[0].isdigit()


def test_json_to_stdout_is_json_alone_and_to_a_file_beside_the_report(files, capsys):
    """One convention for every reporting command: --json FILE writes, --json - prints
    only the JSON."""
    common = [str(files / "m.onnx"), "--inputs", str(files / "in.npz")]
    assert main(["sweep", *common, "--thresholds", "0.2", "--predictors", "bnn", "--plot", "",
                 "--quiet", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["threshold"] for r in rows] == [0.2] and "per_node_avoided" in rows[0]
    out_file = files / "report.json"
    assert main(["validate", *common, "--threshold", "0.3", "--json", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "reuse" in out and f"wrote {out_file}" in out
    assert json.loads(out_file.read_text())["memo"]["threshold"] == 0.3


def test_sweep_marks_a_calibrated_configuration_and_plots_per_node(files, capsys, tmp_path):
    from memotvm.passes import MemoConfig

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"memo": MemoConfig(threshold=0.3).to_dict()}))
    plot = tmp_path / "trade.png"
    assert main(["sweep", str(files / "m.onnx"), "--inputs", str(files / "in.npz"),
                 "--thresholds", "0,0.3", "--predictors", "bnn,delta", "--plot", str(plot),
                 "--calibrated", str(cfg), "--quiet"]) == 0
    assert plot.stat().st_size > 1000 and (tmp_path / "trade_nodes.png").stat().st_size > 1000


def test_pareto_front():
    from memotvm.sweep import pareto_front

    points = [(0.0, 0.0, "a"), (0.5, 10.0, "b"), (0.4, 5.0, "c"), (0.6, 8.0, "d"), (1.0, 20.0, "e")]
    assert [p[2] for p in pareto_front(points)] == ["a", "c", "b", "e"]


def test_shape_declares_static_input_shapes(files, capsys):
    model, inputs, out = str(files / "m.onnx"), str(files / "in.npz"), str(files / "out.npz")
    assert main(["run", model, "--inputs", inputs, "--threshold", "0.3", "--out", out,
                 "--shape", "X=16,3,12", "--shape", "sequence_lens=3"]) == 0
    assert np.load(out)["Y"].shape == (16, 2, 3, 10)
    # The static shape is checked against each call's inputs, and bad flags are named.
    assert main(["run", model, "--inputs", inputs, "--out", out, "--shape", "X=8,3,12"]) == 2
    assert "input 'X': shape (16, 3, 12), expected [8, 3, 12] float32" in capsys.readouterr().err
    for bad, said in (("X=16,3", "has 2 axes; input 'X' has 3"), ("X=a,b", "--shape takes NAME=D1,D2"),
                      ("nope=1", "not an input of the model"), ("X=0,3,12", "positive ints")):
        assert main(["run", model, "--inputs", inputs, "--out", out, "--shape", bad]) == 2
        assert said in capsys.readouterr().err, bad

"""The trained zoo, calibration and the demo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import memotvm
from memotvm import metrics
from memotvm.calibrate import calibrate, parse_loss, split_batch
from memotvm.errors import ConfigError
from memotvm.passes import MemoConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "memotvm", "models")
ZOO = json.load(open(os.path.join(MODELS, "zoo.json")))


def split(name, part=""):
    inputs = dict(np.load(os.path.join(MODELS, f"{name}{part}_inputs.npz")))
    labels = np.load(os.path.join(MODELS, f"{name}{part}_labels.npz"))["labels"]
    return inputs, labels


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime_and_its_calibrated_config_holds(name):
    info = ZOO[name]
    path = os.path.join(MODELS, name + ".onnx")
    assert os.path.getsize(path) < 5e6
    inputs, labels = split(name)
    plain = memotvm.compile(path)
    k = plain.output_names.index(info["output"])
    out = plain.run(inputs)[k]
    import onnxruntime as ort

    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    base = metrics.score(info["metric"], out, labels)
    assert base == pytest.approx(info["onnxruntime_test_metric"], abs=1e-4)
    # The committed calibrated configuration keeps the held-out loss within 1 %.
    config = MemoConfig.load(os.path.join(MODELS, f"{name}_memo.json"))
    memo = memotvm.compile(path, memo=config)
    loss = metrics.loss(info["metric"], base, metrics.score(info["metric"], memo.run(inputs)[k], labels))
    assert loss <= 0.01
    assert memo.last_stats.computations_avoided > 0.1


def small_co2(n=60):
    inputs, labels = split("co2_lstm")
    return {"x": inputs["x"][:, :n]}, labels[:n]


def test_calibration_is_deterministic_and_within_the_bound(tmp_path):
    path = os.path.join(MODELS, "co2_lstm.onnx")
    inputs, labels = small_co2()
    runs = [calibrate(path, inputs, labels, "mse", max_loss=0.01, predictors=("bnn", "lowrank:4"),
                      grid=(0, 0.01, 0.05, 0.1, 0.2), progress=False) for _ in range(2)]
    assert runs[0].to_dict() == runs[1].to_dict()
    result = runs[0]
    assert result.chosen["calibration"]["loss"] <= result.search_bound
    assert result.confirmed and result.chosen["holdout"]["loss"] <= 0.01
    assert set(result.per_predictor) == {"bnn", "lowrank:4"}
    result.save(tmp_path / "cfg.json")
    assert MemoConfig.load(str(tmp_path / "cfg.json")).to_dict() == result.config.to_dict()


def test_calibrating_for_time_never_chooses_a_slower_configuration(tmp_path, monkeypatch):
    import memotvm.calibrate as cal

    path = os.path.join(MODELS, "co2_lstm.onnx")
    inputs, labels = small_co2()
    # Nothing can be 100 % faster than the unmodified model: no configuration is chosen,
    # and the file says so to whoever loads it.
    monkeypatch.setattr(cal, "TIME_MARGIN", 1.0)
    none = calibrate(path, inputs, labels, "mse", objective="time", max_loss=0.01,
                     predictors=("bnn", "delta"), grid=(0, 0.01, 0.05, 0.1), progress=False)
    measured = {label: value for label, value, _ in none.measured}
    assert "unmodified" in measured and len(measured) >= 2
    assert [m[1] for m in none.measured] == sorted(m[1] for m in none.measured)
    assert not none.memoized and none.chosen["holdout"]["loss"] == 0
    assert "does not pay" in none.format()
    none.save(tmp_path / "none.json")
    assert json.loads((tmp_path / "none.json").read_text())["memo"] is None
    with pytest.raises(ConfigError, match="does not pay on the model: run it unmodified"):
        MemoConfig.load(str(tmp_path / "none.json"))


def test_calibrating_for_energy_uses_the_accelerators_cost_model():
    path = os.path.join(MODELS, "co2_lstm.onnx")
    inputs, labels = small_co2()
    args = dict(max_loss=0.01, predictors=("delta",), grid=(0, 0.01, 0.05), progress=False)
    result = calibrate(path, inputs, labels, "mse", objective="energy", target="accel", **args)
    assert all(unit == "uJ" for _, _, unit in result.measured)
    # The modelled energy is exact: the chosen configuration is the one measured lowest
    # (it holds on the held-out split), below the unmodified model by the margin.
    import memotvm.calibrate as cal

    energy = {label: value for label, value, _ in result.measured}
    assert result.memoized and result.measured[0][0].startswith("delta")
    assert result.measured[0][1] <= energy["unmodified"] * (1 - cal.TIME_MARGIN)
    with pytest.raises(ConfigError, match="objective 'energy' needs a target with a cost model"):
        calibrate(path, inputs, labels, "mse", objective="energy", **args)
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        calibrate(path, inputs, labels, "mse", objective="speed", **args)


def test_split_batch_and_bad_arguments():
    inputs, labels = small_co2(10)
    types = memotvm.frontend.from_onnx(os.path.join(MODELS, "co2_lstm.onnx")).input_types
    (a, la), (b, lb) = split_batch(types, inputs, labels)
    assert a["x"].shape == (104, 5, 1) and lb.shape == (5, 4)
    np.testing.assert_array_equal(b["x"][:, 0], inputs["x"][:, 1])
    with pytest.raises(ConfigError, match="batch axis"):
        split_batch(types, inputs, labels[:3])
    assert parse_loss("1%") == pytest.approx(0.01) and parse_loss("0.02") == 0.02
    for bad in ("x", "-1%", "100%"):
        with pytest.raises(ConfigError):
            parse_loss(bad)
    with pytest.raises(ConfigError, match="unknown predictor"):
        calibrate(os.path.join(MODELS, "co2_lstm.onnx"), inputs, labels, "mse", predictors=("nope",),
                  progress=False)


@pytest.mark.slow
def test_cli_calibrate_then_validate_and_bench_take_the_config(tmp_path):
    inputs, labels = small_co2(40)
    np.savez(tmp_path / "in.npz", **inputs)
    np.savez(tmp_path / "y.npz", labels=labels)
    model = os.path.join(MODELS, "co2_lstm.onnx")
    run = lambda *a: subprocess.run([sys.executable, "-m", "memotvm", *a], capture_output=True,
                                    text=True, check=True).stdout
    out = run("calibrate", model, "--inputs", str(tmp_path / "in.npz"), "--labels", str(tmp_path / "y.npz"),
              "--metric", "mse", "--max-loss", "1%", "--predictors", "delta", "--grid", "0,0.01,0.05",
              "--out", str(tmp_path / "cfg.json"), "--quiet")
    assert "held-out loss within 1.00%: yes" in out
    out = run("validate", model, "--inputs", str(tmp_path / "in.npz"), "--config", str(tmp_path / "cfg.json"),
              "--json")
    assert json.loads(out)["memo"]["predictor"] == "delta"
    out = run("bench", model, "--inputs", str(tmp_path / "in.npz"), "--config", str(tmp_path / "cfg.json"),
              "--thresholds", "", "--rounds", "2")
    assert "config" in out


def test_demo_runs_on_a_bundled_model(tmp_path):
    from memotvm.demo import run_demo

    lines = []
    result = run_demo("co2_lstm", plot_path=str(tmp_path / "demo.png"), out=lines.append)
    text = "\n".join(lines)
    assert os.path.exists(tmp_path / "demo.png")
    assert "computations avoided" in text and "accelerator (epur, modelled)" in text
    assert result["report"]["metric"]["loss"] <= 0.01

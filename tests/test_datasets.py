"""Calibration and validation on data sets of many sequences of different lengths, and
the metrics for real outputs (memotvm.sequences, memotvm.metrics)."""

import numpy as np
import pytest

import memotvm
from memotvm import metrics
from memotvm.calibrate import calibrate
from memotvm.cli import main as cli_main
from memotvm.errors import ConfigError, InputError
from memotvm.sequences import group_sequences, join_labels, join_outputs
from memotvm.testing import make_recurrent_model
from memotvm.validate import validate


@pytest.fixture(scope="module")
def dataset():
    model = make_recurrent_model("GRU", 6, 16, weight_scale=1.0)
    rng = np.random.default_rng(0)
    seqs = [{"X": np.cumsum(rng.normal(0, 0.3, (T, 1, 6)), axis=0).astype(np.float32)}
            for T in (5, 9, 14, 7, 11, 6)]
    plain = memotvm.compile(model)
    targets = [plain.run(s)[0] for s in seqs]
    return model, seqs, targets


def test_each_sequence_runs_from_fresh_state_and_the_counts_add_up(dataset):
    model, seqs, targets = dataset
    report = validate(model, seqs, 0.3, labels=targets, metric="nmse")
    memo = memotvm.compile(model, memo=0.3)
    computed = reused = 0
    outs = []
    for s in seqs:
        outs.append(memo.run(s))
        computed += memo.last_stats.total.computed
        reused += memo.last_stats.total.reused
    assert report.stats.total.computed == computed and report.stats.total.reused == reused
    # The metric over every frame of every sequence (joined, not averaged per sequence).
    joined_memo, joined_target = join_outputs(outs)[0], join_labels(targets)
    want = float(np.mean((joined_memo - joined_target) ** 2)) / float(joined_target.var())
    assert report.metric["loss"] == pytest.approx(want)


def test_metrics_for_real_outputs():
    base = np.array([[0.1], [0.6], [0.4], [0.9]])
    memo = np.array([[0.2], [0.4], [0.45], [0.95]])
    labels = np.array([0, 1, 1, 1])
    flips = metrics.measure("decisions", memo, base)
    assert flips["loss"] == 0.25  # frame 1 flips from speech to no speech
    with_labels = metrics.measure("decisions", memo, base, labels)
    assert with_labels["unmodified"] == 0.75 and with_labels["memoized"] == 0.5
    f1 = metrics.measure("f1", memo, base, labels)
    assert f1["unmodified"] == pytest.approx(0.8) and f1["memoized"] == pytest.approx(0.5)
    fidelity = metrics.measure("fidelity", memo, base)
    assert fidelity["loss"] == pytest.approx(np.sqrt(np.mean((memo - base) ** 2)) / base.std())
    # mse against a near-zero baseline: relative rise explodes, nmse stays in units of
    # the output's spread.
    targets = base + 1e-6
    assert metrics.measure("mse", memo, base, targets)["loss"] > 1e6
    assert metrics.measure("nmse", memo, base, targets)["loss"] == pytest.approx(
        np.mean((memo - targets) ** 2) / base.var())
    custom = metrics.measure(lambda m, b, y: float(np.abs(m - b).max()), memo, base)
    assert custom["loss"] == pytest.approx(0.2)
    with pytest.raises(InputError, match="metric 'f1' needs labels"):
        metrics.measure("f1", memo, base)


@pytest.mark.slow
def test_calibrate_on_sequences_holds_out_every_other_one(dataset):
    model, seqs, targets = dataset
    result = calibrate(model, seqs, targets, "nmse", max_loss=0.05, grid=[0.0, 0.1, 0.3],
                       progress=False)
    assert result.confirmed and result.chosen["calibration"]["computations_avoided"] > 0
    unlabelled = calibrate(model, seqs, None, "decisions", max_loss=0.05, grid=[0.0, 0.1],
                           progress=False)
    assert unlabelled.chosen["holdout"]["loss"] <= 0.05
    with pytest.raises(ConfigError, match="metric 'accuracy' needs labels"):
        calibrate(model, seqs, None, "accuracy", progress=False)


def test_cli_reads_a_data_set_as_one_npz_or_a_folder(dataset, tmp_path, capsys):
    model, seqs, targets = dataset
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "in.npz", **{f"utt{i}/X": s["X"] for i, s in enumerate(seqs)})
    np.savez(tmp_path / "y.npz", **{f"utt{i}/labels": t for i, t in enumerate(targets)})
    folder = tmp_path / "set"
    folder.mkdir()
    for i, s in enumerate(seqs):
        np.savez(folder / f"{i:02d}.npz", **s)
    assert cli_main(["validate", str(path), "--inputs", str(tmp_path / "in.npz"), "--labels",
                     str(tmp_path / "y.npz"), "--metric", "nmse", "--threshold", "0.3"]) == 0
    from_npz = capsys.readouterr().out
    assert cli_main(["validate", str(path), "--inputs", str(folder), "--labels",
                     str(tmp_path / "y.npz"), "--metric", "nmse", "--threshold", "0.3"]) == 0
    assert capsys.readouterr().out == from_npz
    assert "nmse on 'Y'" in from_npz
    assert group_sequences({"a/X": 1, "b/X": 2}) == [{"X": 1}, {"X": 2}]
    with pytest.raises(InputError, match="mixes per-sequence arrays"):
        group_sequences({"a/X": 1, "X": 2})

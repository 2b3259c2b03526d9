"""Fair timing: every engine in a process of its own, taking turns, with the spread."""

import os
import subprocess
import sys
import textwrap

import pytest

from memotvm.errors import MemoTVMError
from memotvm.timing import BUSY_SPREAD, Contender, Timing, busy_warning, measure


def test_each_engine_runs_in_a_process_of_its_own_from_a_script_without_a_main_guard(tmp_path):
    # multiprocessing's spawn would run an unguarded script again in every worker; the
    # workers are fresh interpreters running memotvm.timing instead.
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import os
        from memotvm.bench import time_variants
        from memotvm.testing import make_inputs, make_recurrent_model

        model = make_recurrent_model("GRU", 8, 8)
        feeds = make_inputs(model, 5, 1)
        out = time_variants(model, [feeds], {"memotvm": None, "memo": 0.3}, rounds=3)
        pids = {name: i["pid"] for name, i in out["info"].items()}
        print("PIDS", os.getpid(), *(pids[n] for n in ("memotvm", "memo", "onnxruntime")))
        print("RUNS", *(len(t.samples) for t in out["timings"].values()))
        print("REUSE", out["info"]["memo"]["reuse"])
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    pids = lines["PIDS"]
    assert len(set(pids)) == 4, pids  # the script and three workers, all different
    assert all(int(n) >= 3 for n in lines["RUNS"])  # at least one call per turn, 3 rounds
    assert 0 < float(lines["REUSE"][0]) <= 1


def test_a_contender_that_fails_names_itself_and_the_error():
    bad = Contender("broken model", "memotvm", b"this is not ONNX", [{}])
    with pytest.raises(MemoTVMError, match="timing 'broken model' failed in its worker process.*ModelLoadError"):
        measure([bad], rounds=1)
    with pytest.raises(MemoTVMError, match="unknown engine 'tensorrt'"):
        measure([Contender("x", "tensorrt", b"", [{}], in_process=True)], rounds=1)


def test_spread_and_busy_warning():
    steady = Timing([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0])
    noisy = Timing([1.0, 3.0, 1.0, 2.5, 1.1, 2.8, 1.0, 3.1])
    assert steady.spread < BUSY_SPREAD < noisy.spread
    d = noisy.to_dict()
    assert d["runs"] == 8 and d["min_ms"] == 1000 and d["max_ms"] == 3100
    assert d["q1_ms"] <= d["median_ms"] <= d["q3_ms"]
    assert busy_warning({"a": steady}) is None
    warning = busy_warning({"a": steady, "b": noisy})
    assert "busy" in warning and "b " in warning and "a " not in warning


def test_only_memotvms_own_backends_are_rebuilt_in_fresh_processes():
    from memotvm.bench import _rebuildable
    from memotvm.targets import Backend, register_backend

    class Mine(Backend):
        name = f"mine-{os.getpid()}"

        def build(self, imported, mod, memo=None, **options):
            raise NotImplementedError

    register_backend(Mine())
    assert _rebuildable("cpu") and _rebuildable("llvm -mcpu=haswell") and _rebuildable("accel")
    assert not _rebuildable(Mine.name)


def test_openvino_is_a_baseline_where_it_is_installed_and_a_note_where_not():
    from memotvm.bench import OPENVINO_MISSING, bench_model, has_openvino
    from memotvm.testing import make_inputs, make_recurrent_model

    model = make_recurrent_model("LSTM", 8, 8)
    result = bench_model(model, make_inputs(model, 5, 1), thresholds=(), rounds=2, openvino=True)
    rows = {r["name"]: r for r in result["rows"]}
    if not has_openvino():
        assert result["notes"] == [OPENVINO_MISSING] and "openvino" not in rows
        return
    # Both precisions timed, each in its own process, and the precision reported.
    assert rows["openvino-f32"]["precision"] == "f32"
    assert rows["openvino"]["precision"] in ("f32", "bf16", "f16")
    assert rows["memotvm"]["speedup_vs_openvino"] > 0 and rows["memotvm"]["speedup_vs_openvino_f32"] > 0

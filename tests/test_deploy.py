"""Compiled models as files (docs/deploy.md): export, load, and runs with the TVM runtime
alone, in a process that never imports memotvm (its checks are native, not Python
callbacks registered by memotvm)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import memotvm
from memotvm.cli import main as cli_main
from memotvm.errors import ConfigError, InputError, ModelLoadError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELD = os.path.join(ROOT, "tests", "fixtures", "field")
RUNNER = os.path.join(ROOT, "examples", "run_artifact.py")
VAD = os.path.join(FIELD, "vad_stream.onnx")


def vad_feeds():
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    return {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("vad_stream/")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The VAD (If on the sample rate, Gather and shape checks, a memoized LSTM in each
    branch) compiled memoized, exported, and its expected outputs and counts."""
    folder = tmp_path_factory.mktemp("artifact")
    model = memotvm.compile(VAD, memo=0.3)
    feeds = vad_feeds()
    outputs = model.run(feeds)
    library = str(folder / "vad.so")
    model.export(library)
    np.savez(folder / "feeds.npz", **feeds)
    return model, library, feeds, outputs, model.last_stats


def test_export_writes_the_library_and_its_description(exported):
    model, library, *_ = exported
    meta = json.load(open(library + ".json"))
    assert meta["format"] == "memotvm-artifact" and meta["version"] == 1
    assert [i["name"] for i in meta["inputs"]] == ["input", "state", "sr"]
    assert [o["name"] for o in meta["outputs"]] == ["prob", "stateN"]
    assert meta["memo"]["threshold"] == 0.3
    assert {lp["name"] for lp in meta["loops"]} == {"/wide/LSTM", "/narrow/LSTM"}
    # inputs, then a memo table per memoized node; outputs, counts and status per node,
    # then the tables
    assert len(meta["arguments"]) == 3 + 2 and len(meta["results"]) == 2 + 4 + 2


def test_loaded_model_gives_the_same_outputs_counts_sessions_and_errors(exported):
    model, library, feeds, outputs, stats = exported
    loaded = memotvm.load(library)
    for got, want in zip(loaded.run(feeds), outputs):
        np.testing.assert_array_equal(got, want)
    assert loaded.last_stats.per_gate == stats.per_gate
    session = loaded.session()
    assert session.state_pairs == {"state": "stateN"}
    session.run({k: v for k, v in feeds.items() if k != "state"})
    with pytest.raises(InputError, match="input 'input'"):
        loaded.run({**feeds, "input": np.zeros((1, 5), np.float32)})


def test_artifact_runs_with_the_tvm_runtime_alone(exported, tmp_path):
    """examples/run_artifact.py in a process that does not import memotvm or onnx (and
    could not: both are hidden): the same outputs and reuse."""
    model, library, feeds, outputs, stats = exported
    blocker = tmp_path / "sitecustomize.py"  # makes `import memotvm` / `import onnx` fail
    blocker.write_text("import sys\nsys.modules['memotvm'] = None\nsys.modules['onnx'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, RUNNER, library, library.replace("vad.so", "feeds.npz")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("prob", "stateN", "reuse"))]
    assert lines[0].startswith("prob (1, 1)")
    assert f"{stats.reuse:.1%}" in lines[-1]


def test_a_failed_check_names_the_problem_without_memotvm(tmp_path):
    """Two inputs of independent dynamic sizes added: the compiled check of their
    relation stops the call with memotvm's message in a process without memotvm (and
    with the sizes filled in through memotvm.load)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    library = str(tmp_path / "add.so")
    memotvm.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).export(library)
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((5, 4), np.float32), b=np.ones((3, 4), np.float32))
    done = subprocess.run([sys.executable, RUNNER, library, str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "memotvm.InputError: add: input 0 has shape (n, 4) and input 1 has shape (m, 4)" in done.stderr
    with pytest.raises(InputError, match=r"input 0 has shape \(5, 4\) and input 1 has shape \(3, 4\)"):
        memotvm.load(library).run({"a": np.ones((5, 4), np.float32), "b": np.ones((3, 4), np.float32)})


def test_cli_compile_writes_an_artifact(tmp_path, capsys):
    out = tmp_path / "vad.so"
    assert cli_main(["compile", VAD, "-o", str(out), "--fix", "sr=16000", "--threshold", "0.3"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = memotvm.load(str(out))
    assert loaded.input_names == ["input", "state"]
    assert cli_main(["compile", VAD, "-o", str(tmp_path / "missing" / "x.so")]) == 2


def test_load_and_export_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        memotvm.load(str(tmp_path / "nothing.so"))
    (tmp_path / "x.so").write_bytes(b"not a library")
    (tmp_path / "x.so.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a memotvm artifact"):
        memotvm.load(str(tmp_path / "x.so"))
    accel = memotvm.compile(os.path.join(FIELD, "gru_denoiser.onnx"), target="epur")
    with pytest.raises(ConfigError, match="only 'cpu' models"):
        accel.export(str(tmp_path / "a.so"))


@pytest.mark.slow
def test_artifact_in_a_fresh_virtual_environment_with_only_tvm_and_numpy(exported, tmp_path):
    """The artifact on a 'device': a new virtual environment with apache-tvm,
    apache-tvm-ffi and numpy installed (and their own dependencies), nothing else."""
    model, library, feeds, outputs, stats = exported
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pins = [line.split('"')[1] for line in open(os.path.join(ROOT, "pyproject.toml"))
            if line.strip().startswith(('"apache-tvm==', '"apache-tvm-ffi=='))]
    subprocess.run([python, "-m", "pip", "install", "-q", *pins, "numpy"], check=True, timeout=900)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, check=True).stdout.lower()
    assert "memotvm" not in listed and "onnx" not in listed
    done = subprocess.run([python, RUNNER, library, library.replace("vad.so", "feeds.npz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith(f"reuse: {stats.reuse:.1%}")


@pytest.mark.slow
def test_llvm_target_strings_build_code_that_gives_the_same_outputs():
    """Generic x86-64 and AVX2 code runs here with the native build's outputs."""
    import tvm

    path = os.path.join(FIELD, "gru_denoiser.onnx")
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    feeds = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("gru_denoiser/")}
    native = memotvm.compile(path, memo=0.3)
    want = native.run(feeds)
    for target in ("llvm -mcpu=haswell", "llvm -mtriple=x86_64-linux-gnu",
                   tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})):
        model = memotvm.compile(path, memo=0.3, target=target)
        for got, expected in zip(model.run(feeds), want):
            np.testing.assert_allclose(got, expected, atol=1e-6)
        assert model.last_stats.per_gate == native.last_stats.per_gate
    for bad, message in (("cuda", "unknown target 'cuda'"), ("llvm -mcpu", "not -key=value"),
                         ({"kind": "c"}, "builds for 'llvm' targets")):
        with pytest.raises(ConfigError, match=message):
            memotvm.compile(path, target=bad)


def test_a_model_for_another_architecture_compiles_and_says_where_it_runs(tmp_path):
    model = memotvm.compile(os.path.join(FIELD, "gru_denoiser.onnx"),
                            target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon")
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    feeds = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("gru_denoiser/")}
    with pytest.raises(ConfigError, match="not this machine: export it"):
        model.run(feeds)
    with pytest.raises(ConfigError, match="needs the cross compiler nope-gcc"):
        model.export(str(tmp_path / "m.so"), cc="nope-gcc")


@pytest.mark.slow
def test_aarch64_artifact_links_with_debians_cross_toolchain(tmp_path):
    """scripts/install_cross_toolchain.sh (apt, as root) then an aarch64 ELF library.
    Running it needs an arm64 machine (or qemu-user and an arm64 Python), not done
    here."""
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        if os.geteuid() != 0:
            pytest.skip("the cross toolchain is not installed and apt needs root")
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "install_cross_toolchain.sh")],
                       check=True, timeout=900)
    model = memotvm.compile(os.path.join(FIELD, "gru_denoiser.onnx"), memo=0.3,
                            target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon")
    library = tmp_path / "denoiser_arm64.so"
    model.export(str(library))
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    meta = json.load(open(str(library) + ".json"))
    assert "aarch64" in meta["target"]


_WIDTHS = [("llvm -mcpu=skylake-avx512", 16), ("llvm -mcpu=haswell", 8),
           ("llvm -mtriple=x86_64-linux-gnu", 4), ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon", 4)]
_WIDTH_MEMOS = (None, 0.3, {"predictor": "delta", "threshold": 0.05})


@pytest.mark.parametrize("target,lanes", _WIDTHS)
def test_kernels_take_their_vector_width_from_the_target(target, lanes):
    """Every recurrent kernel, memoized or not, is built for the target's lanes: 16 on
    AVX-512, 8 on AVX2, 4 on SSE and NEON."""
    from memotvm.frontend import from_onnx
    from memotvm.kernels.tiling import target_lanes
    from memotvm.passes import MemoConfig, MemoizeRecurrentLoops
    from memotvm.targets.cpu import llvm_target
    from memotvm.targets.recurrent_layout import RetargetRecurrentKernels
    from memotvm.testing import make_recurrent_model

    built = llvm_target(target)
    assert target_lanes(built) == lanes
    model = make_recurrent_model("LSTM", 21, 40, direction="bidirectional")
    for memo in _WIDTH_MEMOS:
        mod = from_onnx(model).mod
        if memo is not None:
            mod = MemoizeRecurrentLoops(MemoConfig.coerce(memo))(mod)
        with built:
            mod = RetargetRecurrentKernels()(mod)
        kernels = [f for _, f in mod.functions_items()
                   if f.attrs is not None and "memotvm.recurrent" in f.attrs]
        assert kernels and {int(f.attrs["memotvm.lanes"]) for f in kernels} == {lanes}


@pytest.mark.slow
@pytest.mark.parametrize("target,lanes", _WIDTHS[1:3])
def test_narrower_builds_give_the_native_outputs_and_decisions(target, lanes):
    """AVX2 and SSE builds (8 and 4 lanes) of a memoized or plain layer run here with the
    native build's outputs within rounding and the same decisions (the denoiser test
    above covers BNN memoization on a whole model by default)."""
    from memotvm.testing import make_inputs, make_recurrent_model

    model = make_recurrent_model("LSTM", 21, 40, direction="bidirectional")
    feeds = make_inputs(model, 7, 3)
    for memo in _WIDTH_MEMOS:
        native = memotvm.compile(model, memo=memo)
        want = native.run(feeds)
        compiled = memotvm.compile(model, memo=memo, target=target)
        for got, expected in zip(compiled.run(feeds), want):
            np.testing.assert_allclose(got, expected, atol=1e-6)
        assert compiled.last_stats.per_gate == native.last_stats.per_gate


# -- threads: a per-model count, the process environment left alone --------------------

_THREADS_PROBE = """
import json, os, threading
import numpy as np
import memotvm
from memotvm.testing import make_inputs, make_recurrent_model
from memotvm.threads import pool_threads
model = make_recurrent_model("GRU", 8, 96)
feeds = make_inputs(model, 12, 2)
default, single = memotvm.compile(model), memotvm.compile(model, threads=1)
seen = {"env": os.environ.get("TVM_NUM_THREADS")}
out_default = default.run(feeds); seen["default"] = pool_threads()
out_single = single.run(feeds); seen["single"] = pool_threads()
default.run(feeds); seen["default again"] = pool_threads()
def other():
    single.run(feeds); seen["other thread"] = pool_threads()
worker = threading.Thread(target=other); worker.start(); worker.join()
seen["main after"] = pool_threads()
seen["same"] = all(np.array_equal(a, b) for a, b in zip(out_default, out_single))
single.export(os.path.join(FOLDER, "one.so"))
seen["loaded"] = memotvm.load(os.path.join(FOLDER, "one.so")).threads
print(json.dumps(seen))
"""


def test_threads_are_a_per_model_option_and_the_environment_is_left_alone(tmp_path):
    """In a process without TVM_NUM_THREADS: the default uses every CPU the process may
    run on, threads=1 one; each call sets its own thread's pool, other threads' pools are
    their own; outputs do not depend on the count; an artifact keeps it."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", _THREADS_PROBE.replace("FOLDER", repr(str(tmp_path)))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    cpus = len(os.sched_getaffinity(0))
    assert seen["env"] is None  # import memotvm no longer sets it
    assert seen["default"] == cpus and seen["default again"] == cpus
    assert seen["single"] == 1 and seen["other thread"] == 1 and seen["main after"] == cpus
    assert seen["same"] and seen["loaded"] == 1
    meta = json.load(open(tmp_path / "one.so.json"))
    assert meta["threads"] == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_a_bad_thread_count_is_a_config_error(bad):
    from memotvm.testing import make_recurrent_model

    with pytest.raises(ConfigError, match="threads"):
        memotvm.compile(make_recurrent_model("RNN", 3, 4), threads=bad)


def test_cli_threads_option(tmp_path, capsys):
    from memotvm.testing import make_recurrent_model
    import onnx

    path = tmp_path / "rnn.onnx"
    onnx.save(make_recurrent_model("RNN", 3, 4), path)
    assert cli_main(["compile", str(path), "-o", str(tmp_path / "m.so"), "--threads", "2"]) == 0
    assert json.load(open(tmp_path / "m.so.json"))["threads"] == 2
    assert cli_main(["compile", str(path), "-o", str(tmp_path / "m.so"), "--threads", "0"]) == 2
    assert "threads" in capsys.readouterr().err

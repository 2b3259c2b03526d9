"""Every bad input gets a named error, nothing wrong is accepted, nothing leaks
(docs/reliability.md).  Each test here failed on the code before its fix."""

import gc
import os
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import memotvm
from memotvm.cli import main
from memotvm.errors import ConfigError, ModelLoadError, UnsupportedModelError
from memotvm.passes import MemoConfig
from memotvm.testing import make_inputs, make_recurrent_model

from conftest import run_onnxruntime


# -- memo configurations -------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b'{"memo": []}', b'{"memo": null}', b'{"memo": 3}', b"\xff\xfe\x00binary",
    b"[" * 100000 + b"]" * 100000, b'{"threshold": ' + b"1" * 5000 + b"}",
    b'{"per_node": [1]}', b'{"per_node": null}', b'{"threshold": "0.3"}', b"",
])
def test_malformed_configuration_files_are_config_errors(tmp_path, content):
    path = tmp_path / "cfg.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        MemoConfig.load(str(path))


@pytest.mark.parametrize("memo", [10 ** 400, {"per_node": {3: 0.1}}, {"per_node": []},
                                  {"per_node": None}, [0.3], {"threshold": float("nan")}])
def test_malformed_configurations_are_config_errors(memo):
    with pytest.raises(ConfigError):
        MemoConfig.coerce(memo)


# -- models that are not valid ---------------------------------------------------------

def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _with_initializer(model, name, value):
    out = _copy(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == name:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return out


def test_bias_of_the_wrong_shape_names_the_input():
    model = make_recurrent_model("LSTM", 4, 6)
    bad = _with_initializer(model, "B", np.zeros((1, 46), np.float32))
    with pytest.raises(UnsupportedModelError, match=r"input B has shape \[1, 46\], expected \[1, 48\]"):
        memotvm.compile(bad)


def test_more_outputs_than_the_operator_has():
    model = _copy(make_recurrent_model("LSTM", 4, 6))
    model.graph.node[0].output.append("extra")
    with pytest.raises(ModelLoadError, match="has 4 outputs; LSTM has at most 3"):
        memotvm.compile(model)


def test_string_input_is_refused_by_name():
    x = helper.make_tensor_value_info("s", TensorProto.STRING, [2])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g", [x], [y])
    with pytest.raises(UnsupportedModelError, match="input 's' has element type STRING"):
        memotvm.compile(helper.make_model(graph))


@pytest.mark.parametrize("shapes,match", [({"X": "abc"}, "list of positive ints"),
                                          ({"nope": [1, 2, 3]}, "not an input"),
                                          ({"X": [5, 2]}, "has 2 axes"),
                                          ([1, 2], "must map input names")])
def test_bad_shape_overrides(shapes, match):
    with pytest.raises(ConfigError, match=match):
        memotvm.compile(make_recurrent_model("LSTM", 4, 6), shapes=shapes)


def test_bidirectional_node_needs_each_directions_activations():
    model = make_recurrent_model("LSTM", 4, 6, direction="bidirectional",
                                 attrs={"activations": ["Sigmoid", "Tanh", "Tanh"]})
    with pytest.raises(UnsupportedModelError, match="expected 6 activations"):
        memotvm.compile(model)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: m.opset_import[0].__setattr__("version", 99), "opset 99"),
    (lambda m: setattr(m, "ir_version", 99), "IR version 99"),
    (lambda m: m.graph.node[0].attribute.append(helper.make_attribute("bogus", 3)), "bogus"),
    (lambda m: m.graph.output.add().CopyFrom(m.graph.output[0]), "listed more than once"),
])
def test_invalid_models_are_refused(mutate, match):
    model = _copy(make_recurrent_model("LSTM", 4, 6))
    mutate(model)
    with pytest.raises(ModelLoadError, match=match):
        memotvm.compile(model)


# -- NaN and infinity: propagated as onnxruntime does, or refused -----------------------

@pytest.mark.parametrize("op,acts,clip", [
    ("RNN", ["Tanh"], None), ("RNN", ["Sigmoid"], None), ("RNN", ["Elu"], None),
    ("RNN", ["LeakyRelu"], None), ("RNN", ["Softsign"], None), ("RNN", ["ScaledTanh"], None),
    ("RNN", ["Relu"], 2.0), ("RNN", ["HardSigmoid"], None), ("RNN", ["Softplus"], None),
    ("GRU", ["Sigmoid", "Tanh"], None), ("GRU", ["HardSigmoid", "Relu"], 3.0),
    ("LSTM", ["Sigmoid", "Tanh", "Tanh"], None), ("LSTM", ["Sigmoid", "Tanh", "Tanh"], 2.0),
])
@pytest.mark.parametrize("memo", [None, 0.3, {"predictor": "delta", "threshold": 0.05}])
def test_nan_in_the_inputs_is_nan_out(op, acts, clip, memo):
    """With check_finite=False a NaN input reaches every output onnxruntime's does: the
    gate math's clamps and exp keep it, a predictor of signs does not reuse across it,
    delta execution transmits it.  (onnxruntime's clip and Relu turn some NaNs into
    numbers; ours follow IEEE and keep them.)"""
    attrs = {"activations": acts, **({"clip": clip} if clip else {})}
    model = make_recurrent_model(op, 5, 8, attrs=attrs)
    feeds = make_inputs(model, 6, 2)
    feeds["X"][2, 0, 1] = np.nan
    expected = run_onnxruntime(model, feeds)
    got = memotvm.compile(model, memo=memo).run(feeds, check_finite=False)
    for e, g in zip(expected, got):
        assert not (np.isnan(e) & ~np.isnan(g)).any()
        assert np.isnan(g).any()


def test_nan_weights_propagate_unmodified_and_are_refused_memoized():
    model = make_recurrent_model("RNN", 5, 8)
    W = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W")).copy()
    W[0, 3, 1] = np.nan
    bad = _with_initializer(model, "W", W)
    feeds = make_inputs(bad, 6, 2)
    expected = run_onnxruntime(bad, feeds)
    got = memotvm.compile(bad).run(feeds)
    assert np.array_equal(np.isnan(expected[0]), np.isnan(got[0])) and np.isnan(got[0]).any()
    with pytest.raises(UnsupportedModelError, match="W holds 1 NaN or infinite"):
        memotvm.compile(bad, memo=0.3)


# -- the command line ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    model = make_recurrent_model("GRU", 4, 6)
    onnx.save(model, str(tmp / "m.onnx"))
    np.savez(tmp / "in.npz", **make_inputs(model, 5, 2))
    np.save(tmp / "x.npy", np.zeros(3))
    (tmp / "empty.npz").write_bytes(b"")
    import io
    import zipfile

    header = io.BytesIO()  # an .npy header claiming 186 GiB
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (50000, 1000000)})
    with zipfile.ZipFile(tmp / "huge.npz", "w") as z:
        z.writestr("X.npy", header.getvalue() + b"\0" * 64)
    return tmp


@pytest.mark.parametrize("inputs,out,match", [
    ("empty.npz", "o.npz", "not a readable .npz"),
    ("x.npy", "o.npz", "a single array"),
    ("huge.npz", "o.npz", "claims more memory"),
    ("in.npz", "missing/o.npz", "does not exist"),
])
def test_cli_bad_files_are_one_line_and_exit_2(cli_files, capsys, inputs, out, match):
    rc = main(["run", str(cli_files / "m.onnx"), "--inputs", str(cli_files / inputs),
               "--out", str(cli_files / out)])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


def test_run_writes_exactly_the_path_given_atomically_and_not_through_links(cli_files, capsys):
    out = cli_files / "result"  # no .npz suffix: numpy would have appended one
    assert main(["run", str(cli_files / "m.onnx"), "--inputs", str(cli_files / "in.npz"),
                 "--out", str(out)]) == 0
    assert out.exists() and not (cli_files / "result.npz").exists()
    assert f"wrote {out}" in capsys.readouterr().out
    assert set(np.load(out).files) == {"Y", "Y_h"}
    target = cli_files / "target.npz"
    link = cli_files / "link.npz"
    target.write_bytes(b"keep")
    link.symlink_to(target)
    assert main(["run", str(cli_files / "m.onnx"), "--inputs", str(cli_files / "in.npz"),
                 "--out", str(link)]) == 0
    assert target.read_bytes() == b"keep" and not link.is_symlink()
    assert [p.name for p in cli_files.iterdir() if p.name.startswith(".memotvm-")] == []


# -- threads and memory -------------------------------------------------------------

def test_last_stats_are_the_calling_threads():
    """Each thread reads its own call's statistics (they used to be shared: 1 in 1600
    concurrent calls read another's)."""
    model = make_recurrent_model("LSTM", 6, 16)
    compiled = memotvm.compile(model, memo=0.5)
    feeds = [make_inputs(model, 4 + 3 * i, 1, seed=i) for i in range(4)]
    expected = [compiled.run_with_stats(f)[1].total.total for f in feeds]
    errors = []

    def worker(i):
        for _ in range(50):
            compiled.run(feeds[i])
            if compiled.last_stats.total.total != expected[i]:
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_models_compile_in_several_threads_at_once():
    """Compiles from several threads take turns (TVM's block builder has one stack per
    process: two imports at once failed) and leave sys.stdout as it was (two captures of
    TVM's output at once left it a dead buffer, and every later print vanished)."""
    import sys

    models = [make_recurrent_model(op, 5, 12, direction=d) for op, d in
              (("LSTM", "forward"), ("GRU", "bidirectional"), ("RNN", "forward"), ("LSTM", "reverse"))]
    feeds = [make_inputs(m, 6, 2, seed=i) for i, m in enumerate(models)]
    stdout = sys.stdout
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = memotvm.compile(models[i], memo=0.3 if i % 2 else None).run(feeds[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(f"{i}: {err!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sys.stdout is stdout
    for i, model in enumerate(models):
        alone = memotvm.compile(model, memo=0.3 if i % 2 else None).run(feeds[i])
        assert all(np.array_equal(a, b) for a, b in zip(results[i], alone))


def _resident_mib():
    import ctypes

    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_dropped_accelerator_models_release_what_they_hold():
    import tvm_ffi

    model = make_recurrent_model("LSTM", 4, 8)
    feeds = make_inputs(model, 5, 2)
    for _ in range(5):
        memotvm.compile(model, target="accel", memo=0.3).run(feeds)
    before, functions = _resident_mib(), len(tvm_ffi.registry.list_global_func_names())
    for _ in range(40):
        memotvm.compile(model, target="accel", memo=0.3).run(feeds)
    assert len(tvm_ffi.registry.list_global_func_names()) == functions
    assert _resident_mib() - before < 2.0


@pytest.mark.parametrize("target", ["cpu", "accel"])
def test_a_dropped_model_is_freed_at_once(target):
    """No reference cycle keeps a compiled model (and its native executable, which the
    garbage collector does not count) alive until a later collection: dropped after
    calls and a session, it is gone without gc.collect()."""
    import weakref

    model = make_recurrent_model("LSTM", 4, 8)
    feeds = make_inputs(model, 5, 2)
    gc.disable()
    try:
        compiled = memotvm.compile(model, target=target, memo=0.3, threads=1)
        compiled.run(feeds)
        compiled.session(state={}).run(feeds)
        ref = weakref.ref(compiled)
        del compiled
        assert ref() is None
    finally:
        gc.enable()

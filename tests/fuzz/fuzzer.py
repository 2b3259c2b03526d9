"""Seeded fuzzing of memotvm's inputs: ONNX models, run-time inputs, memo configurations
and command lines.

Every case is built from ``(seed, index)`` alone, so a failure is reproduced by its
number.  A case ends in one of:

* ``match``        -- memotvm ran and agrees with onnxruntime (NaNs where it has NaNs);
* ``memoized``     -- a memoized model ran (an approximation: only its NaNs are held to
  onnxruntime's; the numpy reference tests hold its decisions);
* ``named-error``  -- memotvm refused with a :class:`memotvm.MemoTVMError` subclass (the
  CLI: exit 2 and one line on standard error);
* ``ort-refused``  -- memotvm ran, onnxruntime refused the same case (its limits are not
  the spec's: layout 1, some attribute corners); reported, not a failure;

or in a failure: ``mismatch`` (different outputs), ``foreign`` (any other exception, or
a CLI traceback), ``crash`` (the worker process died) and ``hang`` (past the time limit).
:func:`run_campaign` runs cases in a worker process so that a crash or a hang is
recorded instead of ending the campaign.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import queue
import random
import tempfile
import traceback

import numpy as np
import onnx
from onnx import numpy_helper

KINDS = ("model", "inputs", "config", "cli")
FAILURES = ("mismatch", "foreign", "crash", "hang")


# -- building blocks -----------------------------------------------------------------

def _base_model(rng: random.Random):
    """A random valid recurrent layer and inputs for it."""
    from memotvm.testing import make_inputs, make_recurrent_model

    op = rng.choice(["LSTM", "GRU", "RNN"])
    direction = rng.choice(["forward", "reverse", "bidirectional"])
    kwargs = dict(direction=direction, bias=rng.random() < 0.8,
                  sequence_lens=rng.random() < 0.3, initial_h=rng.random() < 0.3,
                  seed=rng.randrange(1000))
    if op == "LSTM":
        kwargs.update(initial_c=rng.random() < 0.3, peepholes=rng.random() < 0.3)
    attrs = {}
    if rng.random() < 0.3:
        attrs["clip"] = rng.choice([0.5, 1.0, 3.0])
    if op == "GRU":
        attrs["linear_before_reset"] = rng.choice([0, 1])
    model = make_recurrent_model(op, rng.randint(1, 20), rng.randint(1, 24), attrs=attrs, **kwargs)
    feeds = make_inputs(model, rng.randint(1, 7), rng.randint(1, 4), seed=rng.randrange(1000),
                        lengths=None)
    return model, feeds


def _mutate_model(rng, model):
    """One mutation of a model's structure or data; returns (model, what)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    choice = rng.randrange(14)
    if choice == 0:  # an attribute set to a wrong value
        attr = rng.choice(["hidden_size", "direction", "layout", "clip", "activations",
                           "linear_before_reset", "input_forget", "activation_alpha"])
        value = rng.choice([0, -3, 7, 2.5, "sideways", b"", ["Nope"], ["Tanh"] * 7, [0.1] * 9])
        for i, a in enumerate(node.attribute):
            if a.name == attr:
                del node.attribute[i]
                break
        with contextlib.suppress(Exception):
            node.attribute.append(onnx.helper.make_attribute(attr, value))
        return m, f"attribute {attr}={value!r}"
    if choice == 1:  # an initializer reshaped
        t = rng.choice(list(m.graph.initializer))
        a = numpy_helper.to_array(t)
        shape = list(a.shape)
        shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 3])
        new = np.resize(a, [max(s, 0) for s in shape]).astype(a.dtype)
        t.CopyFrom(numpy_helper.from_array(new, t.name))
        return m, f"initializer {t.name} shape {new.shape}"
    if choice == 2:  # an initializer of another type
        t = rng.choice(list(m.graph.initializer))
        a = numpy_helper.to_array(t).astype(rng.choice([np.float64, np.int32, np.float16]))
        t.CopyFrom(numpy_helper.from_array(a, t.name))
        return m, f"initializer {t.name} dtype {a.dtype}"
    if choice == 3:  # NaN or infinity in a weight
        t = rng.choice(list(m.graph.initializer))
        a = numpy_helper.to_array(t).copy()
        if a.size:
            a.flat[rng.randrange(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
        t.CopyFrom(numpy_helper.from_array(a, t.name))
        return m, f"non-finite in {t.name}"
    if choice == 4:  # an input removed from the node
        if len(node.input) > 1:
            k = rng.randrange(len(node.input))
            node.input[k] = ""
        return m, "node input removed"
    if choice == 5:  # an unknown operator
        node.op_type = rng.choice(["LSTM2", "Lstm", "FancyRNN"])
        return m, f"op {node.op_type}"
    if choice == 6:  # opset or IR version out of range
        if rng.random() < 0.5:
            m.opset_import[0].version = rng.choice([0, 1, 6, 99])
            return m, f"opset {m.opset_import[0].version}"
        m.ir_version = rng.choice([0, 1, 2, 99])
        return m, f"ir {m.ir_version}"
    if choice == 7:  # the serialized bytes damaged
        data = bytearray(m.SerializeToString())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        return bytes(data), "bytes damaged"
    if choice == 8:  # a dangling reference
        node.input[0] = "missing_tensor"
        return m, "dangling input"
    if choice == 9:  # an extra output
        node.output.append("extra")
        return m, "extra output"
    if choice == 10:  # duplicated graph output
        m.graph.output.add().CopyFrom(m.graph.output[0])
        return m, "duplicate graph output"
    if choice == 11:  # an input's element type changed
        m.graph.input[0].type.tensor_type.elem_type = rng.choice(
            [onnx.TensorProto.STRING, onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
             onnx.TensorProto.COMPLEX64, onnx.TensorProto.DOUBLE])
        return m, "input type"
    if choice == 12:  # an input's rank changed
        dims = m.graph.input[0].type.tensor_type.shape.dim
        if rng.random() < 0.5 and len(dims) > 1:
            del dims[-1]
        else:
            dims.add().dim_value = 2
        return m, "input rank"
    node.name = ""  # a node without a name, twice
    m.graph.node.append(m.graph.node[0])
    return m, "node duplicated"


def _mutate_inputs(rng, feeds):
    feeds = {k: np.array(v) for k, v in feeds.items()}
    name = rng.choice(sorted(feeds))
    choice = rng.randrange(9)
    value = feeds[name]
    if choice == 0:
        feeds[name] = value.astype(rng.choice([np.float64, np.int64, np.float16, np.bool_, np.uint8]))
    elif choice == 1:
        feeds[name] = value.reshape(value.shape + (1,))
    elif choice == 2:
        feeds[name] = np.zeros(tuple(max(0, s + rng.choice([-1, 1])) for s in value.shape), value.dtype)
    elif choice == 3 and value.dtype.kind == "f" and value.size:
        value = value.copy()
        value.flat[rng.randrange(value.size)] = rng.choice([np.nan, np.inf])
        feeds[name] = value
    elif choice == 4:
        del feeds[name]
    elif choice == 5:
        feeds["not_an_input"] = value
    elif choice == 6:
        feeds[name] = rng.choice([None, "text", [1, 2], 3.5])
    elif choice == 7 and name == "sequence_lens":
        feeds[name] = np.full(value.shape, rng.choice([-1, 10 ** 6]), value.dtype)
    else:
        feeds[name] = value * rng.choice([1e30, -1e30, 0.0])
    return feeds


def _random_config(rng):
    """A memo configuration: a number, a dict, or the text of a JSON file."""
    leaf = lambda: rng.choice([0, 0.3, 1, -1, float("nan"), float("inf"), "0.3", None, [], {},
                               True, 10 ** 400, 1e308, 2 ** 63])
    if rng.random() < 0.3:
        return leaf()
    cfg = {}
    if rng.random() < 0.7:
        cfg["threshold"] = leaf()
    if rng.random() < 0.6:
        cfg["predictor"] = rng.choice(["bnn", "lowrank:2", "lowrank:x", "lowrank:0",
                                       "exactinput:3", "delta", "oracle", "nope", 3, None, ""])
    if rng.random() < 0.5:
        cfg["per_node"] = rng.choice([{"rnn": leaf()}, {"rnn": {"forward": leaf()}},
                                      {"rnn": {"up": 0.1}}, {"other": 0.1}, [1], None, {3: 0.1}])
    if rng.random() < 0.1:
        cfg["extra"] = 1
    if rng.random() < 0.3:
        return ("file", json.dumps({"memo": cfg} if rng.random() < 0.5 else cfg, allow_nan=True))
    if rng.random() < 0.1:
        return ("file", rng.choice(["", "{", "\x00\xff", "[" * 50000, '{"memo": 3}']))
    return cfg


# -- one case --------------------------------------------------------------------------

def _compare(expected, got) -> bool:
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got):
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape:
            return False
        if (np.isnan(e.astype(np.float64)) & ~np.isnan(g.astype(np.float64))).any():
            return False
        finite = np.isfinite(e.astype(np.float64)) & np.isfinite(g.astype(np.float64))
        if not np.allclose(g[finite], e[finite], rtol=1e-3, atol=1e-4):
            return False
    return True


def _onnxruntime(model, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _run_api(model, feeds, memo, check_finite=True):
    import memotvm

    try:
        got = memotvm.compile(model, memo=memo).run(feeds, check_finite=check_finite)
    except memotvm.MemoTVMError as err:
        return "named-error", f"{type(err).__name__}: {err}"
    try:
        expected = _onnxruntime(model, feeds)
    except Exception as err:  # noqa: BLE001 -- any refusal of onnxruntime's
        return "ort-refused", str(err).splitlines()[0][:120]
    if memo is None:
        return ("match", "") if _compare(expected, got) else ("mismatch", "outputs differ")
    # Memoized: an approximation by design (the reference checks its decisions), but a
    # NaN must still reach every output where onnxruntime has one.
    for e, g in zip(expected, got):
        if (np.isnan(np.asarray(e, np.float64)) & ~np.isnan(np.asarray(g, np.float64))).any():
            return "mismatch", "memoized output finite where onnxruntime has NaN"
    return "memoized", ""


def run_case(seed: int, index: int, kind: str | None = None) -> tuple[str, str, str]:
    """(kind, outcome, detail) of case ``index`` of campaign ``seed``."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = kind or KINDS[index % len(KINDS)]
    try:
        model, feeds = _base_model(rng)
        # A quarter of the cases keep their model, inputs or configuration valid, so
        # that the campaign also checks that what is valid runs and agrees.
        valid = rng.random() < 0.25
        if kind == "model":
            model, what = (model, "valid") if valid else _mutate_model(rng, model)
            outcome, detail = _run_api(model, feeds, None)
            return kind, outcome, f"{what}: {detail}"
        if kind == "inputs":
            feeds = feeds if valid else _mutate_inputs(rng, feeds)
            outcome, detail = _run_api(model, feeds, rng.choice([None, 0.3]),
                                       check_finite=rng.random() < 0.7)
            return kind, outcome, detail
        if kind == "config":
            cfg = rng.choice([0.3, {"predictor": "lowrank:2", "threshold": 0.2},
                              {"predictor": "delta", "threshold": 0.05}]) if valid else _random_config(rng)
            if isinstance(cfg, tuple):
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "cfg.json")
                    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                        f.write(cfg[1])
                    return (kind, *_run_api(model, feeds, path))
            return (kind, *_run_api(model, feeds, cfg))
        return (kind, *_run_cli(rng, model, feeds))
    except Exception:  # noqa: BLE001 -- the fuzzer's verdict on anything else
        return kind, "foreign", traceback.format_exc(limit=3).strip().splitlines()[-1][:300]


def _run_cli(rng, model, feeds):
    from memotvm.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "m.onnx")
        onnx.save(model, model_path)
        np.savez(os.path.join(tmp, "in.npz"), **feeds)
        (open(os.path.join(tmp, "empty.npz"), "wb")).close()
        np.save(os.path.join(tmp, "x.npy"), np.zeros(2))
        with open(os.path.join(tmp, "cfg.json"), "w") as f:
            f.write(rng.choice(['{"threshold": 0.2}', '{"memo": []}', "nope", '{"predictor": "x"}']))
        files = [model_path, os.path.join(tmp, "in.npz"), os.path.join(tmp, "empty.npz"),
                 os.path.join(tmp, "x.npy"), os.path.join(tmp, "cfg.json"), tmp,
                 os.path.join(tmp, "missing.onnx"), os.path.join(tmp, "no", "dir", "o.npz")]
        command = rng.choice(["run", "validate", "sweep", "inspect", "bench", "calibrate"])
        argv = [command, rng.choice(files[:1] * 3 + files)]
        if rng.random() < 0.3:  # a valid command line
            argv = {"run": ["run", model_path, "--inputs", files[1], "--out", os.path.join(tmp, "o.npz")],
                    "validate": ["validate", model_path, "--inputs", files[1], "--threshold", "0.3"],
                    "inspect": ["inspect", model_path]}.get(command, ["inspect", model_path])
        flags = {"--inputs": files, "--out": [os.path.join(tmp, "o.npz"), files[-1], tmp],
                 "--threshold": ["0.3", "-1", "abc", "nan", "1e999"], "--config": files,
                 "--thresholds": ["0,0.5", "", "x"], "--predictors": ["bnn", "nope", ""],
                 "--labels": files, "--metric": ["accuracy", "mse"], "--json": ["-", files[-1]],
                 "--predictor": ["bnn", "zzz"], "--target": ["cpu", "accel", "gpu"],
                 "--steps": ["3", "-1", "x"], "--rounds": ["1", "0"], "--plot": [""]}
        for flag in rng.sample(sorted(flags), rng.randint(0, 5) if len(argv) == 2 else 0):
            argv += [flag, rng.choice(flags[flag])]
        if len(argv) == 2 and command in ("run", "validate", "calibrate", "sweep", "bench") \
                and rng.random() < 0.7:
            argv += ["--inputs", files[1]]
        # Bounded work: the campaign tests what is accepted, not how long it runs.
        if command == "bench":
            argv += ["--rounds", "1", "--thresholds", "0.3"]
        if command == "sweep":
            argv += ["--quiet", "--thresholds", "0.3", "--plot", ""]
        if command == "calibrate":
            argv += ["--quiet", "--grid", "0,0.5"]
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as exit_:  # argparse: usage errors exit 2
                rc = exit_.code
        text = err.getvalue().strip()
        if rc == 0:
            return "match", " ".join(argv[:1])
        if rc == 2 and "Traceback" not in text and text:
            lines = [line for line in text.splitlines() if line.startswith("memotvm")]
            if len(lines) == 1 or "usage:" in text:
                return "named-error", lines[-1][:160] if lines else text[:160]
        return "foreign", f"rc={rc} {' '.join(argv)}: {text[-300:]}"


# -- campaigns -------------------------------------------------------------------------

def _worker(seed, indices, kind, results):
    import warnings

    warnings.simplefilter("ignore")  # the lenient checker's notes on damaged models
    for index in indices:
        results.put(("start", index))
        results.put(("done", index, *run_case(seed, index, kind)))


def run_campaign(seed: int, cases: int, kind: str | None = None, timeout: float = 120.0,
                 start: int = 0, progress=None) -> dict:
    """Run cases start .. start + cases - 1 in a worker process; return
    ``{"counts": {outcome: n}, "failures": [(index, kind, outcome, detail)]}``.
    A worker that dies or stalls past ``timeout`` on a case records it as crash or hang
    and a new worker takes the next case."""
    ctx = mp.get_context("spawn")
    counts: dict = {}
    failures = []
    pending = list(range(start, start + cases))
    while pending:
        results = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(seed, pending, kind, results), daemon=True)
        proc.start()
        current = None
        while pending:
            try:
                message = results.get(timeout=timeout)
            except queue.Empty:
                outcome = "hang" if proc.is_alive() else "crash"
                index = current if current is not None else pending[0]
                counts[outcome] = counts.get(outcome, 0) + 1
                failures.append((index, kind or KINDS[index % len(KINDS)], outcome, ""))
                pending.remove(index)
                proc.kill()
                proc.join()
                break
            if message[0] == "start":
                current = message[1]
                continue
            _, index, case_kind, outcome, detail = message
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome in FAILURES:
                failures.append((index, case_kind, outcome, detail))
            pending.remove(index)
            current = None
            if progress:
                progress(index, case_kind, outcome, detail)
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    return {"counts": counts, "failures": failures}

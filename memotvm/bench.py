"""Measuring speed: every engine in its own process, taking turns; medians, spread and
ratios (:mod:`memotvm.timing`).

Machines are noisy, so the contenders alternate round after round and the rows report
medians with their quartiles; ratios are taken between medians of the same run.
"""

from __future__ import annotations

import importlib.util
import statistics
import time

from .timing import Contender, busy_warning, machine, measure


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


OPENVINO_MISSING = "OpenVINO not installed (pip install 'memotvm[openvino]' to compare with it)"


def _serialized(model) -> bytes:
    from .frontend import load_model

    return model if isinstance(model, bytes) else load_model(model).SerializeToString()


def _rebuildable(target) -> bool:
    """Whether a fresh process can compile for ``target`` (a backend of memotvm itself,
    named by a string or dict; not one registered by the caller's code)."""
    from .targets import get_backend

    return isinstance(target, (str, dict)) and type(get_backend(target)).__module__.startswith("memotvm.")


def time_variants(model, calls: list, variants: dict, target="cpu", rounds: int = 20,
                  onnxruntime: bool = True, ort_threads: int | None = None, state: dict | None = None,
                  start: dict | None = None, progress=None, openvino: bool = False,
                  **options) -> dict:
    """Time memotvm with each of ``variants`` (name -> memo configuration, None for the
    unmodified model) and onnxruntime at its defaults (as "onnxruntime", if installed and
    ``onnxruntime``), each in its own process, taking turns (:func:`memotvm.timing.measure`).
    With ``openvino``, OpenVINO too, at its default precision ("openvino") and at float32
    ("openvino-f32"), where it is installed and takes the model (else a note says why).

    One sample runs ``calls`` (a list of input dicts) in order; with ``state`` (input ->
    output) as a stream: memotvm in a session, onnxruntime with its state outputs fed back
    from ``start``.  Returns {"timings": name -> Timing, "info": name -> build information,
    "machine": ..., "warning": str or None}."""
    data = _serialized(model)
    separate = _rebuildable(target)
    contenders = [Contender(name, "memotvm", data, calls, memo=memo, state=state,
                            options={"target": target, **options, **precision},
                            in_process=not separate)
                  for name, (memo, precision) in map(_variant, variants.items())]
    if onnxruntime and has_onnxruntime():
        contenders.append(Contender("onnxruntime", "onnxruntime", data, calls, state=state,
                                    start=start or {}, threads=ort_threads))
    notes = []
    if openvino and has_openvino():
        for name, precision in (("openvino", None), ("openvino-f32", "f32")):
            contenders.append(Contender(name, "openvino", data, calls, state=state, start=start or {},
                                        options={"precision": precision}, optional=True))
    elif openvino:
        notes.append(OPENVINO_MISSING)
    timings, info = measure(contenders, rounds=rounds, progress=progress)
    notes += [f"{name} left out: {i['error']}" for name, i in info.items() if "error" in i]
    return {"timings": timings, "info": info, "machine": machine(), "warning": busy_warning(timings),
            "notes": notes}


def memo_variants(thresholds=(), predictor="bnn", config=None, precisions=(),
                  config_precision=None) -> dict:
    """name -> MemoConfig, or (MemoConfig or None, PrecisionConfig): one per threshold,
    one per precision below fp32 (the unmodified model at it, "memotvm-bf16"), plus a
    configuration file's as "config" (at ``config_precision``, its precision)."""
    from .passes import MemoConfig
    from .precision import PrecisionConfig

    variants = {f"memo@{t:g}": MemoConfig(threshold=t, predictor=predictor) for t in thresholds}
    for p in precisions:
        if p != "fp32":
            variants[f"memotvm-{p}"] = (None, PrecisionConfig(p))
    if config is not None or config_precision is not None:
        memo = MemoConfig.coerce(config) if config is not None else None
        variants["config"] = (memo, config_precision) if config_precision is not None else memo
    return variants


def _variant(item) -> tuple:
    """(name, (memo, compile options for its precision)) of a variants entry."""
    name, spec = item
    memo, precision = spec if isinstance(spec, tuple) else (spec, None)
    return name, (memo, {} if precision is None else {"precision": precision.to_dict()})


def _timing_rows(measured: dict, per: float, unit: str) -> list:
    """Rows of one measurement: median and spread, reuse, ratios."""
    timings, info = measured["timings"], measured["info"]
    base = timings["memotvm"].median
    ort = timings["onnxruntime"].median if "onnxruntime" in timings else None
    rows = []
    for name, t in timings.items():
        avoided = info[name].get("computations_avoided", 0.0)
        rows.append({
            "name": name, "ms": t.median * 1e3, unit: t.median * 1e6 / per if per else None,
            "spread": t.to_dict(), "threads": info[name].get("threads"),
            "precision": info[name].get("precision", "f32"),
            "reuse": info[name].get("reuse", 0.0), "computations_avoided": avoided,
            "speedup_vs_onnxruntime": ort / t.median if ort else None,
            "speedup_vs_unmodified": base / t.median,
            **{f"speedup_vs_{o.replace('-', '_')}": timings[o].median / t.median
               for o in ("openvino", "openvino-f32") if o in timings},
            "ideal": 1 / (1 - avoided) if avoided < 1 else float("inf"),
            "compile_s": info[name].get("compile_s"),
        })
    return rows


def bench_model(model, feeds, thresholds=(0.1, 0.3, 0.5), predictor="bnn", rounds=20,
                ort_threads=None, target="cpu", progress=False, config=None, openvino=False,
                precisions=(), config_precision=None, extra_variants=None, **options) -> dict:
    """Time onnxruntime (at its defaults), memotvm unmodified and memotvm memoized at each
    threshold (and with ``config``, a calibrated configuration; at each of ``precisions``;
    ``extra_variants``: more, name -> (MemoConfig, PrecisionConfig)), each in its own
    process, taking turns.  Returns rows of medians, spread, reuse and speedups, and the machine.

    On a target whose models report a modelled cost (``epur``), the rows give the
    modelled time and energy instead (see :func:`bench_modelled`)."""
    from .api import compile as compile_model
    from .frontend import load_model

    proto = load_model(model)
    variants = {**memo_variants(thresholds, predictor, config, precisions, config_precision),
                **(extra_variants or {})}
    from .targets import get_backend
    from .targets.cpu import CpuBackend

    if not isinstance(get_backend(target), CpuBackend):
        plain = compile_model(proto, target=target, **options)
        if hasattr(plain, "last_cost"):
            return bench_modelled(proto, plain, feeds, variants, target, **options)
    measured = time_variants(proto, [feeds], {"memotvm": None, **variants}, target=target,
                             rounds=rounds, ort_threads=ort_threads, openvino=openvino, **options)
    steps = _steps(feeds)
    return {"rows": _timing_rows(measured, steps, "us_per_step"), "steps": steps,
            "machine": measured["machine"], "warning": measured["warning"],
            "notes": measured["notes"], "method": METHOD}


METHOD = ("each variant and onnxruntime (its default settings) in a process of its own, "
          "taking turns round after round; medians and quartiles of all timed calls")


def bench_stream(model, feeds, spec, thresholds=(0.1, 0.3, 0.5), predictor="bnn", rounds=20,
                 ort_threads=None, target="cpu", config=None, openvino=False, precisions=(),
                 config_precision=None, **options) -> dict:
    """Time a recorded stream run as deployed (``spec``: a StreamSpec): one chunk per
    call, in a session (memotvm: memo tables and state carried; onnxruntime: its state
    outputs fed back), every variant over the whole stream per sample, each in its own
    process, taking turns.  Rows give the median time per call."""
    from .api import compile as compile_model
    from .frontend import load_model
    from .session import find_state_pairs
    from .streaming import split_stream

    proto = load_model(model)
    plain = compile_model(proto, target=target, **options)
    calls = split_stream(plain, feeds, spec)
    pairs = find_state_pairs(plain, spec.state)
    first = plain.session(state=dict(pairs))
    start = {name: calls[0].get(name, first._zero_state(name, calls[0])) for name in pairs}
    variants = {"memotvm": None,
                **memo_variants(thresholds, predictor, config, precisions, config_precision)}
    measured = time_variants(proto, calls, variants, target=target, rounds=rounds,
                             ort_threads=ort_threads, state=dict(pairs), start=start,
                             openvino=openvino, **options)
    return {"rows": _timing_rows(measured, len(calls), "us_per_call"), "calls": len(calls),
            "chunk": spec.chunk, "state": pairs, "machine": measured["machine"],
            "warning": measured["warning"], "notes": measured["notes"], "method": METHOD}


def bench_remote(model, feeds, remote: dict, thresholds=(0.1, 0.3, 0.5), predictor="bnn",
                 rounds=20, target="cpu", config=None, precisions=(), config_precision=None,
                 **options) -> dict:
    """Time memotvm unmodified and memoized on a device over TVM's RPC (``remote``:
    {"rpc": "HOST:PORT"} or {"tracker": ..., "key": ...}) with TVM's time_evaluator;
    each variant's outputs and counts on the device are checked against the same model
    run here (when its target runs here)."""
    import numpy as np

    from .api import compile as compile_model
    from .errors import MemoTVMError
    from .frontend import load_model
    from .remote import remote_model, remote_time

    proto = load_model(model)
    variants = {"memotvm": None,
                **memo_variants(thresholds, predictor, config, precisions, config_precision)}
    rows, times, stats = [], {}, {}
    for name, (memo, precision) in map(_variant, variants.items()):
        t0 = time.perf_counter()
        compiled = compile_model(proto, target=target, memo=memo, **options, **precision)
        compile_s = time.perf_counter() - t0
        device = remote_model(compiled, **remote)
        got = device.run(feeds)
        stats[name] = device.last_stats
        try:
            want = compiled.run(feeds)
        except MemoTVMError:  # compiled for another machine: nothing to compare here
            want = None
        if want is not None:
            worst = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(got, want))
            if worst > 1e-5 or (memo is not None and compiled.last_stats.per_gate != stats[name].per_gate):
                raise MemoTVMError(f"{name}: the device's outputs or counts differ from this "
                                   f"machine's (max abs difference {worst:.3g})")
        repeats = remote_time(device, feeds, number=max(1, rounds // 5), repeat=5)
        times[name] = statistics.median(repeats)
        rows.append({"name": name, "compile_s": compile_s, "checked_against_host": want is not None,
                     "spread_ms": [min(repeats) * 1e3, max(repeats) * 1e3]})
    steps = _steps(feeds)
    for row in rows:
        t, st = times[row["name"]], stats[row["name"]]
        avoided = st.computations_avoided if row["name"] != "memotvm" else 0.0
        row.update({"ms": t * 1e3, "us_per_step": t * 1e6 / steps if steps else None,
                    "reuse": st.reuse if row["name"] != "memotvm" else 0.0,
                    "computations_avoided": avoided, "speedup_vs_onnxruntime": None,
                    "speedup_vs_unmodified": times["memotvm"] / t,
                    "ideal": 1 / (1 - avoided) if avoided < 1 else float("inf")})
    return {"rows": rows, "steps": steps, "remote": remote}


def _label(r) -> str:
    """A row's name, with the precision it computed in where that is not float32."""
    p = r.get("precision", "f32")
    return r["name"] if p == "f32" else f"{r['name']} ({p})"


def _spread(r) -> str:
    """The interquartile range relative to the median, as +-half of it."""
    s = r.get("spread")
    if not s:
        return f"{'-':>7}"
    return f"{(s['q3_ms'] - s['q1_ms']) / 2 / s['median_ms']:6.1%}"


def format_stream_rows(rows) -> str:
    head = (f"{'variant':<16} {'us/call':>9} {'+-IQR/2':>7} {'reuse':>7} {'avoided':>8} {'vs ort':>7} "
            f"{'vs unmod':>8} {'ideal':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        vo = f"{r['speedup_vs_onnxruntime']:6.2f}x" if r["speedup_vs_onnxruntime"] else f"{'-':>7}"
        lines.append(f"{_label(r):<16} {r['us_per_call']:9.1f} {_spread(r)} {r['reuse']:7.1%} "
                     f"{r['computations_avoided']:8.1%} {vo} {r['speedup_vs_unmodified']:7.2f}x "
                     f"{r['ideal']:6.2f}")
    return "\n".join(lines)


def bench_modelled(proto, plain, feeds, variants, target, **options) -> dict:
    """Rows of modelled cycles, time and energy: the unmodified model and each variant."""
    from .api import compile as compile_model

    plain.run(feeds)
    base = plain.last_cost
    rows = [_cost_row("unmodified", base, base, None)]
    for name, (config, precision) in map(_variant, variants.items()):
        memo = compile_model(proto, target=target, memo=config, **options, **precision)
        memo.run(feeds)
        rows.append(_cost_row(name, memo.last_cost, base, memo.last_stats))
    return {"rows": rows, "steps": _steps(feeds), "modelled": True,
            "hardware": plain.hardware.to_dict()}


def _cost_row(name, cost, base, stats):
    avoided = stats.computations_avoided if stats is not None else 0.0
    return {"name": name, "cycles": cost.cycles, "ms": cost.seconds * 1e3,
            "energy_uj": cost.energy_total_pj / 1e6, "energy_pj": cost.energy_pj,
            "reuse": stats.reuse if stats is not None else 0.0,
            "computations_avoided": avoided,
            "speedup_vs_unmodified": base.cycles / cost.cycles,
            "energy_saving": 1 - cost.energy_total_pj / base.energy_total_pj,
            "ideal": 1 / (1 - avoided) if avoided < 1 else float("inf")}


def format_modelled_rows(rows) -> str:
    head = (f"{'variant':<16} {'cycles':>12} {'ms':>9} {'uJ':>10} {'reuse':>7} {'avoided':>8} "
            f"{'speedup':>8} {'energy -':>8} {'ideal':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<13} {r['cycles']:12,.0f} {r['ms']:9.3f} {r['energy_uj']:10.3f} "
                     f"{r['reuse']:7.1%} {r['computations_avoided']:8.1%} "
                     f"{r['speedup_vs_unmodified']:7.3f}x {r['energy_saving']:8.1%} {r['ideal']:6.2f}")
    return "\n".join(lines)


def format_machine(result) -> str:
    """The lines under a table: how it was measured, on what, and a busy warning."""
    m = result.get("machine")
    if not m:
        return ""
    runs = ", ".join(f"{r['name']} {r['spread']['runs']}" for r in result["rows"] if r.get("spread"))
    threads = ", ".join(f"{r['name']} {r['threads']}" for r in result["rows"] if r.get("threads") is not None)
    v = m["versions"]
    lines = [f"measured: {result['method']}",
             f"  runs: {runs}; threads: {threads}",
             f"  {m['cpu']}, {m['cpus']} CPUs usable, 1-min load {m['load_1min']:.2f}; "
             f"memotvm {v['memotvm']}, apache-tvm {v['apache-tvm']}, onnxruntime {v['onnxruntime']}"
             + (f", openvino {v['openvino']}" if v.get("openvino") else "")]
    lines += ["note: " + n for n in result.get("notes", ())]
    if result.get("warning"):
        lines.append("warning: " + result["warning"])
    return "\n".join(lines)


def _steps(feeds):
    x = feeds.get("X")
    return int(x.shape[0]) if x is not None and x.ndim == 3 else None


def format_rows(rows) -> str:
    head = (f"{'variant':<16} {'ms':>9} {'+-IQR/2':>7} {'us/step':>9} {'reuse':>7} {'avoided':>8} "
            f"{'vs ort':>7} {'vs unmod':>8} {'ideal':>6} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ups = f"{r['us_per_step']:9.2f}" if r["us_per_step"] is not None else f"{'-':>9}"
        vo = f"{r['speedup_vs_onnxruntime']:6.2f}x" if r["speedup_vs_onnxruntime"] else f"{'-':>7}"
        cs = f"{r['compile_s']:9.1f}" if r.get("compile_s") is not None else f"{'-':>9}"
        lines.append(f"{_label(r):<16} {r['ms']:9.3f} {_spread(r)} {ups} {r['reuse']:7.1%} "
                     f"{r['computations_avoided']:8.1%} {vo} "
                     f"{r['speedup_vs_unmodified']:7.2f}x {r['ideal']:6.2f} {cs}")
    return "\n".join(lines)


def memo_memory(loops, batch: int = 1, predictor: str = "bnn") -> dict:
    """Bytes memoization adds, per recurrent node: the predictor's weight data (once per
    model) and the memo table of each chain (per call and batch element)."""
    from .predictors import get_predictor

    pred = get_predictor(predictor)
    out = {}
    for loop in loops:
        nd, G, D, H = loop.num_directions, loop.rows, loop.input_size, loop.hidden_size
        if pred is not None and pred.scheme == "delta":
            # the parts (float32) per neuron, the last sent copies of h (and r (.) h)
            # for two step parities, the step's lists (index, change) of x and u.  x's
            # copy: two parities, or, when the input parts come from a projection
            # (DeltaExecution.projects_input), one copy, plus the copies of a chunk of
            # steps, which share the projection buffer's budget (added to nothing).
            recurrent = H + (H if loop.op == "GRU" and not loop.linear_before_reset else 0)
            projected = pred.projects_input(loop)
            listed = H if projected else max(D, H)
            x_copies = 1 if projected else 2
            table = nd * batch * (G * 8 + 4 * (2 * recurrent + x_copies * D) + 2 * listed * (8 + 4))
        else:
            # cached input_part and recurrent_part (float32) and memo_q (4 bytes) per neuron
            table = nd * batch * G * (4 + 4 + 4)
        weights = nd * G * (loop.input_size + loop.hidden_size) * 4
        data = pred.data_bytes(loop) if pred is not None else 0
        cost = pred.extra_cost(loop) if pred is not None else 0
        out[loop.name] = {"predictor_data": data, "memo_table": table, "weights": weights,
                          "predictor_ops_per_step": cost * nd,
                          "layer_macs_per_step": nd * G * (loop.input_size + loop.hidden_size)}
    return out


def parse_size(spec: str):
    """'lstm:512' or 'gru:256:512' (op, [input size,] hidden size) -> (op, D, H)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0].upper() not in ("LSTM", "GRU", "RNN"):
        return None
    try:
        sizes = [int(p) for p in parts[1:]]
    except ValueError:
        return None
    if any(s <= 0 for s in sizes):
        return None
    D, H = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
    return parts[0].upper(), D, H

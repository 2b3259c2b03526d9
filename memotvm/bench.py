"""Measuring speed: interleaved repeats in one process, medians and ratios.

Machines are noisy, so every comparison runs its candidates round-robin (one call of
each per round, after warm-up) and reports medians; ratios are taken between medians of
the same run.
"""

from __future__ import annotations

import statistics
import time


def interleaved(runners: dict, rounds: int = 20, warmup: int = 2, min_time: float = 0.0) -> dict:
    """Median seconds per call of each runner (name -> zero-argument callable)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runners}
    start = time.perf_counter()
    r = 0
    while r < rounds or (time.perf_counter() - start) < min_time:
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        r += 1
        if r >= 10 * rounds:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def onnxruntime_session(model, threads: int | None = None):
    """An onnxruntime session of ``model`` for timing next to memotvm in one process
    (None if onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # onnxruntime's idle workers spin after each run; interleaved with memotvm in one
    # process they would steal the cores TVM's workers need (and vice versa).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnxruntime_runner(model, feeds, threads: int | None = None):
    """A zero-argument callable running ``model`` in onnxruntime (None if not installed)."""
    session = onnxruntime_session(model, threads)
    return None if session is None else (lambda: session.run(None, feeds))


def memotvm_runner(compiled, feeds):
    """A zero-argument callable running a compiled model with inputs checked once."""
    from .threads import use_threads

    arrays = compiled.vm_arguments(compiled.check_inputs(feeds))
    session, threads = compiled._session(), compiled.threads

    def run():
        use_threads(threads)
        return session(arrays)

    return run


def compile_and_run_once(compiled, feeds):
    """Run once (to get the reuse statistics) and return the runner."""
    compiled.run(feeds)
    return memotvm_runner(compiled, feeds)


def memo_variants(thresholds=(), predictor="bnn", config=None) -> dict:
    """name -> MemoConfig: one per threshold, plus a configuration file's as "config"."""
    from .passes import MemoConfig

    variants = {f"memo@{t:g}": MemoConfig(threshold=t, predictor=predictor) for t in thresholds}
    if config is not None:
        variants["config"] = MemoConfig.coerce(config)
    return variants


def bench_model(model, feeds, thresholds=(0.1, 0.3, 0.5), predictor="bnn", rounds=20,
                ort_threads=None, target="cpu", progress=False, config=None, **options) -> dict:
    """Time onnxruntime, memotvm unmodified and memotvm memoized at each threshold (and
    with ``config``, a calibrated configuration), interleaved in one process.  Returns
    rows of medians, reuse and speedups.

    On a target whose models report a modelled cost (``epur``), the rows give the
    modelled time and energy instead (see :func:`bench_modelled`)."""
    from .api import compile as compile_model
    from .frontend import load_model

    proto = load_model(model)
    variants = memo_variants(thresholds, predictor, config)
    t0 = time.perf_counter()
    plain = compile_model(proto, target=target, **options)
    if hasattr(plain, "last_cost"):
        return bench_modelled(proto, plain, feeds, variants, target, **options)
    compile_s = {"unmodified": time.perf_counter() - t0}
    runners = {"memotvm": compile_and_run_once(plain, feeds)}
    reuse = {"memotvm": 0.0}
    avoided = {"memotvm": 0.0}
    for name, memo_config in variants.items():
        t0 = time.perf_counter()
        memo = compile_model(proto, target=target, memo=memo_config, **options)
        compile_s[name] = time.perf_counter() - t0
        runners[name] = compile_and_run_once(memo, feeds)
        reuse[name] = memo.last_stats.reuse
        avoided[name] = memo.last_stats.computations_avoided
    ort = onnxruntime_runner(proto, feeds, ort_threads)
    if ort is not None:
        runners["onnxruntime"] = ort
        reuse["onnxruntime"] = avoided["onnxruntime"] = 0.0
    times = interleaved(runners, rounds=rounds)
    steps = _steps(feeds)
    rows = []
    for name, t in times.items():
        r = avoided[name]
        rows.append({
            "name": name,
            "ms": t * 1e3,
            "us_per_step": t * 1e6 / steps if steps else None,
            "reuse": reuse[name],
            "computations_avoided": r,
            "speedup_vs_onnxruntime": times["onnxruntime"] / t if "onnxruntime" in times else None,
            "speedup_vs_unmodified": times["memotvm"] / t,
            "ideal": 1 / (1 - r) if r < 1 else float("inf"),
            "compile_s": compile_s.get(name if name != "memotvm" else "unmodified"),
        })
    return {"rows": rows, "steps": steps}


def bench_stream(model, feeds, spec, thresholds=(0.1, 0.3, 0.5), predictor="bnn", rounds=20,
                 ort_threads=None, target="cpu", config=None, **options) -> dict:
    """Time a recorded stream run as deployed (``spec``: a StreamSpec): one chunk per
    call, in a session (memotvm: memo tables and state carried; onnxruntime: its state
    outputs fed back), every variant over the whole stream per round, interleaved.
    Rows give the median time per call."""
    from .api import compile as compile_model
    from .frontend import load_model
    from .session import find_state_pairs
    from .streaming import split_stream

    proto = load_model(model)
    plain = compile_model(proto, target=target, **options)
    calls = split_stream(plain, feeds, spec)
    pairs = find_state_pairs(plain, spec.state)
    compiled = {"memotvm": plain}
    for name, memo_config in memo_variants(thresholds, predictor, config).items():
        compiled[name] = compile_model(proto, target=target, memo=memo_config, **options)
    runners, reuse, avoided = {}, {}, {}
    for name, model_ in compiled.items():
        session = model_.session(state=spec.state)

        def run_all(session=session):
            session.reset()
            for call in calls:
                session.run(call)

        run_all()
        runners[name] = run_all
        reuse[name] = session.stats.reuse if model_.memo else 0.0
        avoided[name] = session.stats.computations_avoided if model_.memo else 0.0
    ort = _onnxruntime_stream(proto, plain, calls, pairs, ort_threads)
    if ort is not None:
        runners["onnxruntime"], reuse["onnxruntime"], avoided["onnxruntime"] = ort, 0.0, 0.0
    times = interleaved(runners, rounds=rounds)
    rows = []
    for name, t in times.items():
        per_call = t / len(calls)
        rows.append({
            "name": name, "ms": t * 1e3, "us_per_call": per_call * 1e6,
            "reuse": reuse[name], "computations_avoided": avoided[name],
            "speedup_vs_onnxruntime": times["onnxruntime"] / t if "onnxruntime" in times else None,
            "speedup_vs_unmodified": times["memotvm"] / t,
            "ideal": 1 / (1 - avoided[name]) if avoided[name] < 1 else float("inf"),
        })
    return {"rows": rows, "calls": len(calls), "chunk": spec.chunk, "state": pairs}


def _onnxruntime_stream(proto, plain, calls, pairs, threads):
    """onnxruntime over the calls, its state outputs fed back (None if not installed)."""
    session = onnxruntime_session(proto, threads)
    if session is None:
        return None
    first = plain.session(state=dict(pairs))
    start = {}
    for name in pairs:  # the session's zero state of the first call
        start[name] = calls[0].get(name, first._zero_state(name, calls[0]))
    names = plain.output_names

    def run_all():
        state = dict(start)
        for call in calls:
            out = session.run(None, {**call, **state})
            state = {inp: out[names.index(o)] for inp, o in pairs.items()}

    return run_all


def bench_remote(model, feeds, remote: dict, thresholds=(0.1, 0.3, 0.5), predictor="bnn",
                 rounds=20, target="cpu", config=None, **options) -> dict:
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
    variants = {"memotvm": None, **memo_variants(thresholds, predictor, config)}
    rows, times, stats = [], {}, {}
    for name, memo in variants.items():
        t0 = time.perf_counter()
        compiled = compile_model(proto, target=target, memo=memo, **options)
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


def format_stream_rows(rows) -> str:
    head = (f"{'variant':<13} {'us/call':>9} {'reuse':>7} {'avoided':>8} {'vs ort':>7} "
            f"{'vs unmod':>8} {'ideal':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        vo = f"{r['speedup_vs_onnxruntime']:6.2f}x" if r["speedup_vs_onnxruntime"] else f"{'-':>7}"
        lines.append(f"{r['name']:<13} {r['us_per_call']:9.1f} {r['reuse']:7.1%} "
                     f"{r['computations_avoided']:8.1%} {vo} {r['speedup_vs_unmodified']:7.2f}x "
                     f"{r['ideal']:6.2f}")
    return "\n".join(lines)


def bench_modelled(proto, plain, feeds, variants, target, **options) -> dict:
    """Rows of modelled cycles, time and energy: the unmodified model and each variant."""
    from .api import compile as compile_model

    plain.run(feeds)
    base = plain.last_cost
    rows = [_cost_row("unmodified", base, base, None)]
    for name, config in variants.items():
        memo = compile_model(proto, target=target, memo=config, **options)
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
    head = (f"{'variant':<13} {'cycles':>12} {'ms':>9} {'uJ':>10} {'reuse':>7} {'avoided':>8} "
            f"{'speedup':>8} {'energy -':>8} {'ideal':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<13} {r['cycles']:12,.0f} {r['ms']:9.3f} {r['energy_uj']:10.3f} "
                     f"{r['reuse']:7.1%} {r['computations_avoided']:8.1%} "
                     f"{r['speedup_vs_unmodified']:7.3f}x {r['energy_saving']:8.1%} {r['ideal']:6.2f}")
    return "\n".join(lines)


def _steps(feeds):
    x = feeds.get("X")
    return int(x.shape[0]) if x is not None and x.ndim == 3 else None


def format_rows(rows) -> str:
    head = (f"{'variant':<13} {'ms':>9} {'us/step':>9} {'reuse':>7} {'avoided':>8} {'vs ort':>7} "
            f"{'vs unmod':>8} {'ideal':>6} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ups = f"{r['us_per_step']:9.2f}" if r["us_per_step"] is not None else f"{'-':>9}"
        vo = f"{r['speedup_vs_onnxruntime']:6.2f}x" if r["speedup_vs_onnxruntime"] else f"{'-':>7}"
        cs = f"{r['compile_s']:9.1f}" if r.get("compile_s") is not None else f"{'-':>9}"
        lines.append(f"{r['name']:<13} {r['ms']:9.3f} {ups} {r['reuse']:7.1%} "
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

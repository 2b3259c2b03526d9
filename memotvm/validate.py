"""Validation: the memoized model against the unmodified graph, on the same inputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .api import compile as compile_model
from .api import with_file_precision
from .errors import ConfigError, InputError
from .frontend import load_model
from .passes import MemoConfig
from .precision import PrecisionConfig

SCHEMA_VERSION = 4  # 2: modelled_cost added; 3: stream added; 4: precision, separately


@dataclass
class ValidationReport:
    """What ``validate`` measured; ``to_dict`` is the stable JSON of ``--json``."""

    config: MemoConfig | None  # None: precision alone
    target: str
    outputs: dict  # name -> error statistics
    stats: object  # ReuseStats of the memoized run
    metric: dict | None = None
    timings: dict = field(default_factory=dict)
    # Targets with a cost model: the modelled cost of both runs (CostReport objects).
    costs: tuple | None = None
    # Streamed (a session, one chunk per call): {"chunk", "calls", "state"}.
    stream: dict | None = None
    # The weights' precision (memotvm.precision), where some are below fp32.
    precision: object | None = None
    # Memoization and reduced precision together: each alone against the unmodified
    # model ({"memoization": {...}, "precision": {...}}: outputs, metric, reuse).
    separately: dict | None = None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "target": self.target,
            "memo": self.config.to_dict() if self.config is not None else None,
            "precision": self.precision.to_dict() if self.precision is not None else None,
            "outputs": self.outputs,
            "reuse": self.stats.to_dict(),
            "computations_avoided": self.stats.computations_avoided,
            "metric": self.metric,
            "timings_s": self.timings,
            "modelled_cost": self._cost_dict(),
            "stream": self.stream,
            "separately": self.separately,
        }

    def _cost_dict(self):
        if self.costs is None:
            return None
        base, memo = self.costs
        return {"unmodified": base.to_dict(), "memoized": memo.to_dict(),
                "precision_alone": self.separately["precision"]["modelled_cost"]
                if self.separately and self.separately["precision"].get("modelled_cost") else None,
                "speedup": base.cycles / memo.cycles,
                "energy_saving": 1 - memo.energy_total_pj / base.energy_total_pj}

    def format(self) -> str:
        lines = []
        if self.config is not None:
            lines.append(f"memo: predictor {self.config.predictor}, thresholds "
                         f"{self.config.thresholds_text()}")
        if self.precision is not None:
            lines.append(f"precision: {self.precision.text()}")
        what = " and ".join(w for w, on in (("memoized", self.config is not None),
                                            ("reduced precision", self.precision is not None)) if on)
        if self.stream:
            pairs = ", ".join(f"{i} <- {o}" for i, o in self.stream["state"].items()) or "none"
            lines.append(f"streamed: {self.stream['calls']} calls of {self.stream['chunk']} step(s) "
                         f"in one session (state: {pairs}); memo tables carried between calls")
            if self.stream.get("within_call_only"):
                lines.append("  memoizing within each call only (reverse directions): "
                             + ", ".join(self.stream["within_call_only"]))
        lines.append(f"reuse: {self.stats.reuse:.1%} of neuron evaluations, computations "
                     f"avoided: {self.stats.computations_avoided:.1%} of multiply-adds")
        for (node, direction), count in self.stats.per_direction.items():
            lines.append(f"  {node} [{direction}]: {count.reuse:.1%} of {count.total} neuron evaluations")
        lines.append(f"output errors ({what} vs unmodified):")
        for name, err in self.outputs.items():
            lines.append(
                f"  {name}: max abs {err['max_abs']:.3g}, mean abs {err['mean_abs']:.3g}, "
                f"max rel {err['max_rel']:.3g}, mean rel {err['mean_rel']:.3g}"
            )
        if self.metric:
            m = self.metric
            lines.append(
                f"{m['name']} on '{m['output']}': unmodified {m['unmodified']:.4f}, "
                f"{what} {m['memoized']:.4f}, loss {m['loss']:.2%}"
            )
        for label, part in (self.separately or {}).items():
            worst = max((e["max_abs"] for e in part["outputs"].values()), default=0.0)
            line = f"  {label} alone: max abs error {worst:.3g}"
            if part["metric"]:
                line += f", {part['metric']['name']} {part['metric']['memoized']:.4f}, loss " \
                        f"{part['metric']['loss']:.2%}"
            if label == "memoization":
                line += f", computations avoided {part['computations_avoided']:.1%}"
            lines.append(line)
        if self.costs is not None:
            lines.append("unmodified " + self.costs[0].format())
            lines.append(what + " " + self.costs[1].format(baseline=self.costs[0]))
        return "\n".join(lines)


def output_errors(base: np.ndarray, memo: np.ndarray) -> dict:
    base = base.astype(np.float64)
    diff = np.abs(memo.astype(np.float64) - base)
    rel = diff / np.maximum(np.abs(base), 1e-6)
    if diff.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "mean_rel": 0.0}
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float(rel.max()), "mean_rel": float(rel.mean())}


def pick_output(names, output):
    if output is None:
        return 0
    if output not in names:
        raise InputError(f"no output named '{output}' (outputs: {', '.join(names)})")
    return names.index(output)


def compare(names, base_out, memo_out, labels=None, metric=None, output=None):
    """Per-output errors of ``memo_out`` against ``base_out`` and, with labels, the task
    metric of both and its loss (``None`` without)."""
    errors = {name: output_errors(b, m) for name, b, m in zip(names, base_out, memo_out)
              if b is not None and m is not None}  # a cluster sends back only what is needed
    result = None
    if metric is not None:
        k = pick_output(names, output)
        measured = metrics.measure(metric, memo_out[k], base_out[k], labels)
        name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
        result = {"name": name, "output": names[k], **measured}
    return errors, result


def validate(model, inputs: dict, memo, labels=None, metric=None, output=None,
             target="cpu", baseline=None, stream=None, remote=None, cluster=None, workers=None,
             precision=None, **options) -> ValidationReport:
    """Compile ``model`` unmodified and memoized, run both on ``inputs``, compare.

    ``precision`` (as for :func:`memotvm.compile`) stores the recurrent weights below
    fp32 in the model compared; ``memo`` may then be None (precision alone).  With both,
    the report also gives each alone against the unmodified model (``separately``).  A
    configuration file from ``memotvm calibrate`` brings its precision along.

    ``labels`` with ``metric`` (accuracy, bpc, mse) adds the task metric of both and
    its loss, on ``output`` (default: the first).  ``baseline`` may pass an already
    compiled unmodified model (sweeps reuse one).  ``options`` go to the backend
    (``hardware=`` for ``epur``); its modelled costs, if any, join the report.
    ``remote`` ({"rpc": "HOST:PORT"} or {"tracker": ..., "key": ...}) runs the memoized
    side on a device over TVM's RPC (:mod:`memotvm.remote`).

    ``stream`` (a :class:`memotvm.streaming.StreamSpec`) runs both models as they run
    deployed: ``inputs`` is a recorded stream, cut into calls of ``stream.chunk`` steps
    and run in a session each (memo tables and state carried between calls); the
    outputs compared (and the labels) are the calls' outputs joined along their first
    axis (:func:`memotvm.streaming.joined`).

    ``cluster`` (a Ray address, "local" or a :class:`memotvm.cluster.Cluster`) runs both
    models on ``workers`` Ray workers, each on a shard of the inputs
    (:mod:`memotvm.cluster`); the report is the one this process would make (the
    compile times are a worker's).
    """
    memo, precision = with_file_precision(memo, precision)
    reduced = PrecisionConfig.coerce(precision) if precision is not None else None
    reduced = reduced if reduced is not None and reduced.reduced else None
    config = MemoConfig.coerce(memo) if memo is not None else None
    if config is None and reduced is None:
        raise ConfigError("validate needs a memo configuration, a precision below fp32, or both")
    proto = load_model(model)
    if labels is not None and metric is None:
        raise InputError("labels need a metric")
    if metric is not None:
        metrics.check_metric(metric, labels is not None)
    if cluster is not None or workers is not None:
        if remote is not None or baseline is not None:
            raise InputError("validate on a cluster compiles both models on its workers: "
                             "it takes neither remote= nor baseline=")
        return _validate_on_cluster(proto, inputs, config, labels, metric, output, target,
                                    stream, cluster, workers, options, reduced)
    t0 = time.perf_counter()
    plain = baseline or compile_model(proto, target=target, **options)
    t1 = time.perf_counter()
    memoized = compile_model(proto, target=target, memo=config, precision=reduced, **options)
    t2 = time.perf_counter()
    if remote is not None:  # the memoized side runs on a device over TVM's RPC
        from .remote import remote_model

        memoized = remote_model(memoized, **remote)
    from .sequences import join_labels
    from .streaming import run_inputs, split_all

    calls = split_all(plain, inputs, stream)
    base_out, _ = run_inputs(plain, inputs, stream, calls=calls)
    memo_out, stats = run_inputs(memoized, inputs, stream, calls=calls)
    if isinstance(labels, list):
        labels = join_labels(labels)
    streamed = None
    if stream is not None:
        count = sum(len(c) for c in calls) if isinstance(inputs, list) else len(calls)
        session = memoized.session(state=stream.state)
        streamed = {"chunk": stream.chunk, "calls": count, "state": session.state_pairs,
                    "within_call_only": [f"{node}:{direction}"
                                         for node, direction in session.within_call_only]}
    errors, result = compare(plain.output_names, base_out, memo_out, labels, metric, output)
    timings = {"compile_unmodified": t1 - t0, "compile_memoized": t2 - t1}
    costs = None
    if getattr(memoized, "last_cost", None) is not None:
        costs = (plain.last_cost, memoized.last_cost)
    separately = None
    if config is not None and reduced is not None:
        separately = {}
        for label, alone in (("memoization", {"memo": config}), ("precision", {"precision": reduced})):
            model_alone = compile_model(proto, target=target, **alone, **options)
            out, alone_stats = run_inputs(model_alone, inputs, stream, calls=calls)
            separately[label] = _alone(plain.output_names, base_out, out, alone_stats, labels,
                                       metric, output, getattr(model_alone, "last_cost", None))
    return ValidationReport(config, target, errors, stats, result, timings, costs, streamed,
                            reduced, separately)


def _alone(names, base_out, out, stats, labels, metric, output, cost) -> dict:
    """One of memoization and reduced precision, alone, against the unmodified model."""
    errors, result = compare(names, base_out, out, labels, metric, output)
    return {"outputs": errors, "metric": result, "reuse": stats.reuse,
            "computations_avoided": stats.computations_avoided,
            "modelled_cost": cost.to_dict() if cost is not None else None}


def _validate_on_cluster(proto, inputs, config, labels, metric, output, target, stream,
                         cluster, workers, options, reduced=None) -> ValidationReport:
    from .evaluation import Job, Variant, make_runner
    from .sequences import join_labels
    from .streaming import split_all

    def variant(memo, precision):
        return Variant.unmodified(precision) if memo is None else Variant.fixed(memo, precision)

    memoized = variant(config, reduced)
    alone = {}
    if config is not None and reduced is not None:
        alone = {"memoization": variant(config, None), "precision": variant(None, reduced)}
    runner = make_runner(proto, target, options, cluster, workers,
                         variants=[memoized, *alone.values()])
    try:
        runner.add_split("validate", inputs, stream)
        base, memo, *others = runner.run([Job("validate"), Job("validate", memoized)]
                                         + [Job("validate", v) for v in alone.values()])
        streamed = None
        if stream is not None:
            calls = split_all(runner.signature, inputs, stream)
            count = sum(len(c) for c in calls) if isinstance(inputs, list) else len(calls)
            streamed = {"chunk": stream.chunk, "calls": count,
                        **runner.stream_info(memoized, stream)}
    finally:
        runner.close()
    if isinstance(labels, list):
        labels = join_labels(labels)
    errors, result = compare(runner.output_names, base.outputs, memo.outputs, labels, metric, output)
    seconds = runner.compile_seconds
    timings = {"compile_unmodified": seconds[Variant("unmodified")],
               "compile_memoized": seconds[memoized]}
    costs = (base.cost, memo.cost) if memo.cost is not None else None
    separately = {label: _alone(runner.output_names, base.outputs, other.outputs, other.stats,
                                labels, metric, output, other.cost)
                  for label, other in zip(alone, others)} or None
    return ValidationReport(config, target, errors, memo.stats, result, timings, costs, streamed,
                            reduced, separately)

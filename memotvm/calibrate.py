"""Threshold calibration: the most computation avoided within a bound on the metric loss.

``calibrate`` searches a threshold per recurrent node and direction (a *unit*), for each
candidate predictor, on a calibration split, then confirms the best configuration on a
held-out split.  The search is greedy and deterministic:

1. every unit starts at threshold 0 (the unmodified layer);
2. each round tries raising each unit by one step of ``grid``; a candidate is feasible if
   the calibration loss stays within ``search_bound``; the feasible candidate that avoids
   the most multiply-adds (ties: smaller loss, then unit order) is taken; a unit whose
   raise is infeasible is not raised again;
3. it ends when no unit can be raised.

The configuration that avoids the most (over the real predictors; the oracle is for
analysis) is then confirmed on the held-out split.  If its held-out loss exceeds
``max_loss`` -- small splits make the metric noisy -- the search backs off to the next
configuration it passed through, in order of computations avoided, until one holds on
both splits; the result records how many were rejected (``held_out_rejections``).

With ``objective="time"`` (or ``"energy"``, on a target with a cost model) the search
is the same, but the result is the fastest configuration rather than the one that
avoids most: the configurations each predictor's search passed through (its last and
up to ``TIMED_PER_PREDICTOR - 1`` before it, spread over its path) and the unmodified
model are timed on the calibration split (medians of interleaved rounds in one process;
on the accelerator its modelled cycles or energy), then confirmed on the held-out split
fastest first.  A memoized configuration is chosen only if it is at least
``TIME_MARGIN`` faster than the unmodified model; otherwise the result says that
memoization does not pay on this model and carries no configuration.

``search_bound`` is ``max_loss * (1 - margin)``: searching a little inside the bound
leaves room for the difference between the calibration and held-out splits.  Every
candidate runs on the real target (one model per predictor, compiled with tunable
thresholds), so the decisions are the ones the deployed model makes.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from . import metrics
from .errors import ConfigError
from .evaluation import UNMODIFIED, Job, LocalRunner, Variant, make_runner
from .frontend import from_onnx, load_model
from .passes import MemoConfig
from .sequences import join_labels
from .validate import pick_output

# Small steps first: delta execution and the BNN on some models tolerate only tiny
# thresholds.
DEFAULT_GRID = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.7, 1.0)


OBJECTIVES = ("computations", "time", "energy")
# Configurations timed per predictor for the time and energy objectives.
TIMED_PER_PREDICTOR = 4
# A memoized configuration must beat the unmodified model by this much to be chosen
# (less is within a quiet machine's measurement noise).
TIME_MARGIN = 0.03


@dataclass
class Trial:
    predictor: str
    thresholds: dict  # (node, direction) -> threshold
    loss: float
    avoided: float
    reuse: float
    metric: float


@dataclass
class CalibrationResult:
    config: MemoConfig
    max_loss: float
    search_bound: float
    baseline: dict  # split -> unmodified metric
    chosen: dict  # split -> {"metric", "loss", "reuse", "computations_avoided"}
    per_predictor: dict = field(default_factory=dict)  # predictor -> its best calibration trial
    evaluations: int = 0
    held_out_rejections: int = 0
    # predictor -> the configuration its search ended with (calibration split only)
    predictor_configs: dict = field(default_factory=dict)
    objective: str = "computations"
    # time and energy objectives: what was measured, fastest first (label, value, unit)
    measured: list = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.chosen["holdout"]["loss"] <= self.max_loss

    @property
    def memoized(self) -> bool:
        """False when the time or energy objective found the unmodified model best
        (``config`` is then None)."""
        return self.config is not None

    def to_dict(self) -> dict:
        return {"memo": self.config.to_dict() if self.config is not None else None,
                "calibration": {"objective": self.objective, "measured": self.measured,
                                "max_loss": self.max_loss, "search_bound": self.search_bound,
                                "baseline_metric": self.baseline, "chosen": self.chosen,
                                "confirmed_on_holdout": self.confirmed,
                                "per_predictor": self.per_predictor,
                                "evaluations": self.evaluations,
                                "held_out_rejections": self.held_out_rejections}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    def format(self) -> str:
        c = self.config
        if c is None:
            lines = ["calibrated for " + self.objective + ": memoization does not pay on this "
                     "model; run it unmodified (no configuration)"]
        else:
            lines = [f"calibrated{' for ' + self.objective if self.objective != 'computations' else ''}: "
                     f"predictor {c.predictor}, thresholds " + c.thresholds_text()]
        for label, value, unit in self.measured[:8]:
            lines.append(f"  measured {label:<40} {value:10.4g} {unit}")
        for p, best in self.per_predictor.items():
            lines.append(f"  {p:<14} calibration: avoided {best['computations_avoided']:.1%}, "
                         f"loss {best['loss']:.2%}")
        for split in ("calibration", "holdout"):
            r = self.chosen[split]
            lines.append(f"{split:>11}: {r['metric_name']} {r['metric']:.4f} (unmodified "
                         f"{self.baseline[split]:.4f}), loss {r['loss']:.2%}, reuse {r['reuse']:.1%}, "
                         f"computations avoided {r['computations_avoided']:.1%}")
        lines.append(f"held-out loss within {self.max_loss:.2%}: {'yes' if self.confirmed else 'NO'}"
                     + (f" (after rejecting {self.held_out_rejections} configuration(s) that "
                        "failed on the held-out split)" if self.held_out_rejections else ""))
        return "\n".join(lines)


def parse_loss(text) -> float:
    """'1%' or '0.01' -> 0.01."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ConfigError(f"max loss must be a number or a percentage, got '{text}'") from None
    if not 0 <= value < 1:
        raise ConfigError(f"max loss must lie in [0, 100%), got '{text}'")
    return value


class _Evaluator:
    """Score configurations on one split of a runner (:mod:`memotvm.evaluation`): the
    tunable model of each predictor, each configuration run once; the metric computed
    here, on the whole split's outputs."""

    def __init__(self, runner, split, labels, metric, k):
        self.runner, self.split, self.metric, self.k = runner, split, metric, k
        self.labels = join_labels(labels) if isinstance(labels, list) else labels
        self.base_out = runner.run([Job(split)])[0].outputs[k]
        self.base = metrics.measure(metric, self.base_out, self.base_out, self.labels)["unmodified"]
        self.count = 0
        self._cache: dict = {}

    def many(self, configs: list) -> list:
        """(metric, loss, computations avoided, reuse) of each configuration; the ones
        not scored before run together (on a cluster, in parallel)."""
        keys = [json.dumps(c.to_dict(), sort_keys=True) for c in configs]
        todo: dict = {}
        for key, config in zip(keys, configs):
            if key not in self._cache:
                todo.setdefault(key, config)
        def score(_, outcome):
            measured = metrics.measure(self.metric, outcome.outputs[self.k], self.base_out, self.labels)
            return (measured["memoized"], measured["loss"], outcome.stats.computations_avoided,
                    outcome.stats.reuse)

        jobs = [Job(self.split, Variant.tunable(c.predictor), c) for c in todo.values()]
        self._cache.update(zip(todo, self.runner.run(jobs, reduce=score)))
        self.count += len(jobs)
        return [self._cache[key] for key in keys]

    def __call__(self, config: MemoConfig):
        return self.many([config])[0]


def _cost(runner: LocalRunner, split: str, configs: dict, objective: str, target: str,
          rounds: int = 7) -> dict:
    """label -> the median seconds (or, on a target with a cost model, the modelled
    seconds or microjoules) of one run of the split, for each of ``configs`` (label ->
    MemoConfig, None for the unmodified model), in this process.  Timed runs take turns,
    round after round, after one warm-up run each."""
    def run(config):
        model = runner.model(UNMODIFIED if config is None else Variant.tunable(config.predictor))
        runner.run_split(split, model, config)
        return model

    inputs, stream = runner.split_data(split)
    if hasattr(runner.model(), "last_cost"):
        if stream is not None or isinstance(inputs, list):
            raise ConfigError(f"objective '{objective}' on a modelled target takes one batch "
                              "of inputs, not a stream or a data set of sequences")
        out = {}
        for label, config in configs.items():
            cost = run(config).last_cost
            out[label] = cost.seconds if objective == "time" else cost.energy_total_pj / 1e6
        return out
    if objective == "energy":
        raise ConfigError(f"objective 'energy' needs a target with a cost model "
                          f"(--target accel), not '{target}'")
    for config in configs.values():
        run(config)
    samples = {label: [] for label in configs}
    labels = list(configs)
    for r in range(rounds):
        for i in range(len(labels)):
            label = labels[(r + i) % len(labels)]
            t0 = time.perf_counter()
            run(configs[label])
            samples[label].append(time.perf_counter() - t0)
    return {label: statistics.median(ts) for label, ts in samples.items()}


def _timed_candidates(paths: dict) -> dict:
    """label -> Trial: per predictor, its last configuration and up to
    TIMED_PER_PREDICTOR - 1 earlier ones, spread evenly over its search path."""
    out = {}
    for predictor, path in paths.items():
        if not path:
            continue
        n = min(TIMED_PER_PREDICTOR, len(path))
        picks = sorted({round(i * (len(path) - 1) / max(n - 1, 1)) for i in range(n)})
        for i in picks:
            trial = path[i]
            out[f"{predictor} ({trial.avoided:.1%} avoided, step {i + 1}/{len(path)})"] = trial
    return out


def split_batch(input_types: dict, inputs: dict, labels):
    """Split a batch into a calibration and a held-out split (even and odd elements).

    The batch axis of each input is the one whose dimension symbol is shared by every
    input and matches an axis of ``labels`` (a symbol named like "batch" wins a tie);
    where that is ambiguous, pass the held-out split explicitly.
    """
    import numpy as np

    def symbols(name):
        dims = input_types[name][0] or []
        return {d: i for i, d in enumerate(dims) if isinstance(d, str)}

    shared = set.intersection(*(set(symbols(n)) for n in inputs)) if inputs else set()
    first = next(iter(inputs))
    sizes = {sym: inputs[first].shape[symbols(first)[sym]] for sym in shared}
    label_axes = {sym: [i for i, n in enumerate(np.shape(labels)) if n == sizes[sym]] for sym in shared}
    found = [sym for sym in shared if len(label_axes[sym]) == 1]
    if labels is None:  # a metric without labels: the symbol named like "batch"
        found = [sym for sym in shared if "batch" in sym.lower()]
    if len(found) > 1:
        found = [sym for sym in found if "batch" in sym.lower()] or found
    if len(found) != 1 or sizes[found[0]] < 2:
        raise ConfigError("cannot tell the batch axis of the inputs and labels; give the "
                          "held-out split explicitly (--holdout-inputs, --holdout-labels)")
    sym = found[0]

    def take(array, axis, parity):
        return np.take(array, np.arange(parity, array.shape[axis], 2), axis=axis)

    halves = []
    for parity in (0, 1):
        part = {n: take(a, symbols(n)[sym], parity) for n, a in inputs.items()}
        halves.append((part, None if labels is None else
                       take(np.asarray(labels), label_axes[sym][0], parity)))
    return halves


def _config(predictor, thresholds: dict) -> MemoConfig:
    per_node: dict = {}
    for (node, direction), t in thresholds.items():
        per_node.setdefault(node, {})[direction] = t
    return MemoConfig(threshold=0.0, predictor=predictor, per_node=per_node)


def calibrate(model, inputs, labels, metric, holdout_inputs=None, holdout_labels=None,
              max_loss=0.01, predictors=("bnn",), grid=DEFAULT_GRID, margin=0.25, output=None,
              target="cpu", progress=True, stream=None, objective="computations", cluster=None,
              workers=None, **options) -> CalibrationResult:
    """Search per-node, per-direction thresholds (and the predictor) that maximise the
    computations avoided with the calibration loss within ``max_loss * (1 - margin)``;
    confirm on the held-out split (without one, the batch is split in two by
    :func:`split_batch`).  Returns a :class:`CalibrationResult`.

    ``stream`` (a StreamSpec): every candidate runs the inputs as a recorded stream,
    one chunk per call in a session, as the model runs deployed (the labels then match
    the calls' outputs joined along their first axis).

    ``objective``: "computations" (the most multiply-adds avoided), "time" (the fastest,
    measured on the target or, on the accelerator, from its cost model) or "energy"
    (the accelerator's cost model); see the module's documentation.

    ``cluster`` (a Ray address, "local" or a :class:`memotvm.cluster.Cluster`) runs the
    candidates on ``workers`` Ray workers (:mod:`memotvm.cluster`); the result is the
    same as in one process.  Timing for ``objective="time"`` stays in this process: it
    measures the machine the model is calibrated for."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{objective}' (known: {', '.join(OBJECTIVES)})")
    if not callable(metric) and metric not in metrics.HIGHER_IS_BETTER:
        raise ConfigError(f"unknown metric '{metric}' (known: {', '.join(metrics.HIGHER_IS_BETTER)})")
    if not callable(metric) and metric in metrics.NEEDS_LABELS and labels is None:
        raise ConfigError(f"metric '{metric}' needs labels (decisions and fidelity do not)")
    grid = sorted({float(g) for g in grid} | {0.0})
    bad = [g for g in grid if not (g >= 0 and g != float("inf"))]
    if bad:
        raise ConfigError(f"grid thresholds must be finite numbers >= 0, got {bad}")
    if not 0 <= margin < 1:
        raise ConfigError(f"margin must lie in [0, 1), got {margin}")
    for predictor in predictors:
        MemoConfig(predictor=predictor)  # unknown names fail before any work
    proto = load_model(model)
    imported = from_onnx(proto)
    if holdout_labels is not None and holdout_inputs is None:
        raise ConfigError("held-out labels need held-out inputs")
    if holdout_inputs is not None and (labels is None) != (holdout_labels is None):
        raise ConfigError("give labels for both splits, or for neither")
    if holdout_inputs is None and isinstance(inputs, list):
        # A data set of sequences: every other sequence is held out.
        if len(inputs) < 2:
            raise ConfigError("a data set of one sequence cannot be split; give held-out inputs")
        holdout_inputs, inputs = inputs[1::2], inputs[0::2]
        if labels is not None:
            holdout_labels, labels = labels[1::2], labels[0::2]
    elif holdout_inputs is None:
        (inputs, labels), (holdout_inputs, holdout_labels) = split_batch(
            imported.input_types, inputs, labels)
    units = [(loop.name, loop.direction_name(d)) for loop in imported.loops
             for d in range(loop.num_directions)]
    if not units:
        raise ConfigError("the model has no recurrent node to calibrate")
    k = pick_output(imported.output_names, output)
    runner = make_runner(proto, target, options, cluster, workers,
                         variants=[Variant.tunable(p) for p in predictors], keep=[k])
    try:
        runner.add_split("calibration", inputs, stream)
        runner.add_split("holdout", holdout_inputs, stream)
        return _calibrate(runner, proto, units, labels, holdout_labels, metric, k, max_loss,
                          predictors, grid, margin, target, progress, objective, options)
    finally:
        runner.close()


@dataclass
class _Search:
    """One predictor's greedy search (see the module's documentation)."""

    predictor: str
    level: dict
    best: Trial
    stuck: set = field(default_factory=set)
    accepted: list = field(default_factory=list)
    done: bool = False

    def proposals(self, units, grid) -> list:
        """(unit, thresholds) of each unit raised by one step."""
        return [(u, {v: grid[self.level[v] + (v == u)] for v in units}) for u in units
                if u not in self.stuck and self.level[u] + 1 < len(grid)]


def _calibrate(runner, proto, units, labels, holdout_labels, metric, k, max_loss, predictors,
               grid, margin, target, progress, objective, options) -> CalibrationResult:
    bound = max_loss * (1 - margin)
    real = [p for p in predictors if p != "oracle"] or list(predictors)
    evaluate = _Evaluator(runner, "calibration", labels, metric, k)
    # Progress in threshold levels: every unit of every predictor has len(grid) - 1
    # levels to climb; a level is done when the unit is raised past it or stops below
    # it, so the total is known up front.  The held-out confirmation is one more.
    levels = len(grid) - 1
    bar = tqdm(desc="calibrate", unit="level", total=len(predictors) * len(units) * levels + 1,
               disable=not progress)
    searches = [_Search(p, {u: 0 for u in units}, Trial(p, {u: 0.0 for u in units}, 0.0, 0.0,
                                                        0.0, evaluate.base))
                for p in predictors]
    # The predictors' searches advance round by round together: a round's candidates
    # of every predictor are scored at once (in parallel on a cluster); each search's
    # decisions depend only on its own scores, as when they run one after another.
    while not all(s.done for s in searches):
        active = [s for s in searches if not s.done]
        proposed = [(s, u, th) for s in active for u, th in s.proposals(units, grid)]
        scores = evaluate.many([_config(s.predictor, th) for s, _, th in proposed])
        trials: dict = {id(s): [] for s in active}
        for (s, u, thresholds), (value, loss, avoided, reuse) in zip(proposed, scores):
            if loss <= bound:
                trials[id(s)].append((avoided, -loss, -units.index(u), u,
                                      Trial(s.predictor, thresholds, loss, avoided, reuse, value)))
            else:
                s.stuck.add(u)
                bar.update(levels - s.level[u])
        for s in active:
            if not trials[id(s)]:
                s.done = True
                continue
            *_, u, trial = max(trials[id(s)], key=lambda t: t[:3])
            s.level[u] += 1
            bar.update(1)
            s.best = trial
            s.accepted.append(trial)
    best_by_predictor = {s.predictor: s.best for s in searches}
    # Every configuration the real predictors' searches accepted, after the unmodified one.
    path = [Trial(real[0], {u: 0.0 for u in units}, 0.0, 0.0, 0.0, evaluate.base)]
    paths = {s.predictor: s.accepted for s in searches if s.predictor in real and s.accepted}
    for accepted in paths.values():
        path.extend(accepted)
    held = _Evaluator(runner, "holdout", holdout_labels, metric, k)
    rejections = 0
    measured = []
    if objective == "computations":
        order = sorted(path, key=lambda t: (-t.avoided, t.loss, real.index(t.predictor)))
    else:
        candidates = _timed_candidates(paths)
        unit = "uJ" if objective == "energy" else "ms"
        scale = 1.0 if objective == "energy" else 1e3
        local = runner
        if not isinstance(runner, LocalRunner):  # timed on this machine, not the workers
            local = LocalRunner(proto, target, options)
            local.add_split("calibration", *runner.split_data("calibration"))
        costs = _cost(local, "calibration",
                      {"unmodified": None, **{label: _config(t.predictor, t.thresholds)
                                              for label, t in candidates.items()}},
                      objective, target)
        measured = sorted(([label, costs[label] * scale, unit] for label in costs), key=lambda m: m[1])
        limit = costs["unmodified"] * (1 - TIME_MARGIN)
        order = [candidates[label] for label, _, _ in measured
                 if label != "unmodified" and costs[label] <= limit]
        order.append(path[0])  # the unmodified model (every unit at 0): always within the bound
    for chosen in order:
        unmodified = objective != "computations" and chosen is path[0]
        config = None if unmodified else _config(chosen.predictor, chosen.thresholds)
        if unmodified:
            h_value, h_loss, h_avoided, h_reuse = held.base, 0.0, 0.0, 0.0
            break
        h_value, h_loss, h_avoided, h_reuse = held(config)
        if h_loss <= max_loss:
            break
        rejections += 1
    bar.update(bar.total - bar.n)
    bar.close()

    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")

    def summary(value, loss, avoided, reuse):
        return {"metric_name": metric_name, "metric": value, "loss": loss, "reuse": reuse,
                "computations_avoided": avoided}

    return CalibrationResult(
        config=config, max_loss=max_loss, search_bound=bound,
        baseline={"calibration": evaluate.base, "holdout": held.base},
        chosen={"calibration": summary(chosen.metric, chosen.loss, chosen.avoided, chosen.reuse),
                "holdout": summary(h_value, h_loss, h_avoided, h_reuse)},
        per_predictor={p: {"thresholds": {f"{n}:{d}": t for (n, d), t in b.thresholds.items()},
                           "loss": b.loss, "computations_avoided": b.avoided, "reuse": b.reuse}
                       for p, b in best_by_predictor.items()},
        evaluations=evaluate.count + held.count, held_out_rejections=rejections,
        predictor_configs={p: _config(p, b.thresholds) for p, b in best_by_predictor.items()},
        objective=objective, measured=measured)

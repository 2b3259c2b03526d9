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
from .evaluation import Job, LocalRunner, Variant, make_runner
from .frontend import from_onnx, load_model
from .passes import MemoConfig
from .precision import PRECISIONS, WEIGHT_BYTES, PrecisionConfig
from .predictors import get_predictor
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
    precision: dict = field(default_factory=dict)  # node -> its precision, where below fp32
    # The fp32 model's weight traffic avoided (ReuseStats.weight_traffic_avoided): what
    # the search maximises; the computations avoided where every weight is fp32.
    work: float | None = None
    # Memoization off (the thresholds are all 0): the plain kernels at this precision.
    plain: bool = False

    def __post_init__(self):
        if self.work is None:
            self.work = self.avoided

    @property
    def memo(self) -> MemoConfig | None:
        return None if self.plain else _config(self.predictor, self.thresholds)


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
    # The precision chosen with the thresholds, where precisions below fp32 were searched
    # (None: they were not).
    precision: PrecisionConfig | None = None

    @property
    def confirmed(self) -> bool:
        return self.chosen["holdout"]["loss"] <= self.max_loss

    @property
    def reduced(self) -> bool:
        """Whether the chosen configuration stores some weights below fp32."""
        return self.precision is not None and self.precision.reduced

    @property
    def memoized(self) -> bool:
        """False when the time or energy objective found the unmodified model best
        (``config`` is then None)."""
        return self.config is not None

    def to_dict(self) -> dict:
        out = {"memo": self.config.to_dict() if self.config is not None else None}
        if self.precision is not None:
            out["precision"] = self.precision.to_dict()
        return {**out,
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
        if c is None and self.reduced:
            lines = [f"calibrated for {self.objective}: the precision below, memoization off "
                     + ("(it does not pay next to it)" if self.objective != "computations" else
                        "(no threshold above 0 stays within the bound next to it)")]
        elif c is None:
            lines = ["calibrated for " + self.objective + ": memoization does not pay on this "
                     "model; run it unmodified (no configuration)"]
        else:
            lines = [f"calibrated{' for ' + self.objective if self.objective != 'computations' else ''}: "
                     f"predictor {c.predictor}, thresholds " + c.thresholds_text()]
        if self.precision is not None:
            lines.append(f"precision: {self.precision.text()}")
        for label, value, unit in self.measured[:8]:
            lines.append(f"  measured {label:<40} {value:10.4g} {unit}")
        for p, best in self.per_predictor.items():
            lines.append(f"  {p:<14} calibration: avoided {best['computations_avoided']:.1%}, "
                         + (f"weight traffic avoided {best['weight_traffic_avoided']:.1%}, "
                            if self.precision is not None else "")
                         + f"loss {best['loss']:.2%}")
        for split in ("calibration", "holdout"):
            r = self.chosen[split]
            lines.append(f"{split:>11}: {r['metric_name']} {r['metric']:.4f} (unmodified "
                         f"{self.baseline[split]:.4f}), loss {r['loss']:.2%}, reuse {r['reuse']:.1%}, "
                         f"computations avoided {r['computations_avoided']:.1%}"
                         + (f", weight traffic avoided {r['weight_traffic_avoided']:.1%}"
                            if "weight_traffic_avoided" in r else ""))
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
        """(metric, loss, computations avoided, reuse, weight traffic avoided) of each
        configuration -- a MemoConfig (None: memoization off) and the precision of each
        node below fp32 -- the ones not scored before run together (on a cluster, in
        parallel)."""
        keys = [json.dumps([c.to_dict() if c is not None else None, p], sort_keys=True)
                for c, p in configs]
        todo: dict = {}
        for key, config in zip(keys, configs):
            if key not in self._cache:
                todo.setdefault(key, config)
        precisions = [p for _, p in todo.values()]

        def score(i, outcome):
            measured = metrics.measure(self.metric, outcome.outputs[self.k], self.base_out, self.labels)
            weight_bytes = {node: WEIGHT_BYTES[p] for node, p in precisions[i].items()}
            return (measured["memoized"], measured["loss"], outcome.stats.computations_avoided,
                    outcome.stats.reuse, outcome.stats.weight_traffic_avoided(weight_bytes))

        jobs = [Job(self.split, _variant(c, p), c) for c, p in todo.values()]
        self._cache.update(zip(todo, self.runner.run(jobs, reduce=score)))
        self.count += len(jobs)
        return [self._cache[key] for key in keys]

    def __call__(self, config: MemoConfig | None, precision: dict | None = None):
        return self.many([(config, precision or {})])[0]


def _precision(nodes: dict) -> PrecisionConfig:
    return PrecisionConfig("fp32", dict(nodes))


def _variant(config: MemoConfig | None, precision: dict) -> Variant:
    """The compiled model a configuration runs on: the tunable one of its predictor (the
    thresholds are run-time data), or the plain one, at its precision."""
    precision = _precision(precision)
    if config is None:
        return Variant.unmodified(precision)
    return Variant.tunable(config.predictor, precision)


def _cost(runner: LocalRunner, split: str, configs: dict, objective: str, target: str,
          rounds: int = 7) -> dict:
    """label -> the median seconds (or, on a target with a cost model, the modelled
    seconds or microjoules) of one run of the split, for each of ``configs`` (label ->
    (MemoConfig or None for memoization off, the precision of each node below fp32)), in
    this process.  Timed runs take turns,
    round after round, after one warm-up run each."""
    def run(config):
        memo, precision = config
        runner.run_split(split, model := runner.model(_variant(memo, precision)), memo)
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
            precision = "".join(f", {n} {p}" for n, p in trial.precision.items())
            out[f"{predictor} ({trial.avoided:.1%} avoided{precision}, step {i + 1}/{len(path)})"] = trial
    return out


def _fp32_twins(candidates: dict, evaluate, bound) -> dict:
    """label -> Trial: each memoized candidate at reduced precision with its weights at
    fp32 instead, where that stays within the bound (a candidate of the time and energy
    objectives: a layer whose weights sit in cache is fastest at fp32, and the search,
    which takes precision moves first, rarely passes through such a configuration)."""
    twins = {f"{label}, fp32 twin": t for label, t in candidates.items() if t.precision and not t.plain}
    scores = evaluate.many([(t.memo, {}) for t in twins.values()])
    out = {}
    for (label, t), (value, loss, avoided, reuse, work) in zip(twins.items(), scores):
        if loss <= bound:
            step = label[label.rindex("step "):-len(", fp32 twin") - 1]
            out[f"{t.predictor} ({avoided:.1%} avoided, fp32, {step})"] = \
                Trial(t.predictor, t.thresholds, loss, avoided, reuse, value, {}, work)
    return out


def _precision_alone(paths: dict, evaluate, bound) -> dict:
    """label -> Trial: every precision the predictors' searches passed through, with
    memoization off, where it stays within the bound (a candidate of the time and energy
    objectives: the memo tables' upkeep may cost more than the reuse saves, and the
    search, which weighs weight traffic, passes through bf16-act, as fast as it gets on
    a CPU with bfloat16 dot products, on its way to int8)."""
    out = {}
    for path in paths.values():
        for trial in path:
            precision = trial.precision
            label = "precision only (" + ", ".join(f"{n} {p}" for n, p in precision.items()) + ")"
            if not precision or label in out:
                continue
            value, loss, avoided, reuse, work = evaluate(None, precision)
            if loss <= bound:
                out[label] = Trial(trial.predictor, {u: 0.0 for u in trial.thresholds}, loss,
                                   avoided, reuse, value, precision, work, plain=True)
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
              workers=None, precisions=("fp32",), **options) -> CalibrationResult:
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
    measures the machine the model is calibrated for.

    ``precisions`` lists the precisions the recurrent nodes' weights may be stored at
    (:mod:`memotvm.precision`): with "bf16" or "int8" among them, the search lowers a
    node's precision (fp32, then bf16, then int8) as one more kind of move beside
    raising a threshold, and what it maximises is the fp32 model's weight traffic
    avoided (a multiply-add that is skipped reads no weight; one at bf16 reads half of
    one): memoization and precision are chosen together, within the same bound."""
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
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    for p in precisions:
        PrecisionConfig(p)  # unknown names fail before any work
    ladder = [p for p in PRECISIONS if p == "fp32" or p in precisions]
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
    nodes = _reducible_nodes(imported) if len(ladder) > 1 else []
    if len(ladder) > 1 and not nodes:
        raise ConfigError("no recurrent node of this model can be stored below fp32 (float32 "
                          "layers with constant weights can)")
    runner = make_runner(proto, target, options, cluster, workers,
                         variants=[Variant.tunable(p) for p in predictors], keep=[k])
    try:
        runner.add_split("calibration", inputs, stream)
        runner.add_split("holdout", holdout_inputs, stream)
        return _calibrate(runner, proto, units, labels, holdout_labels, metric, k, max_loss,
                          predictors, grid, margin, target, progress, objective, options,
                          ladder, nodes)
    finally:
        runner.close()


def _reducible_nodes(imported) -> list:
    """The recurrent nodes whose weights can be stored below fp32: float32 layers with
    constant weights."""
    from .passes._relax_util import fold_constants
    from .passes.kernel_calls import recurrent_calls, weights_are_constant

    folded = fold_constants(imported.mod)
    return [loop.name for loop, call in recurrent_calls(folded, loop_bodies=False)
            if loop.dtype == "float32" and weights_are_constant(call)]


@dataclass
class _Search:
    """One predictor's greedy search (see the module's documentation); ``level`` holds
    each unit's step of the grid and each reducible node's step of the precision
    ladder (keyed ("precision", node))."""

    predictor: str
    level: dict
    best: Trial
    stuck: set = field(default_factory=set)
    accepted: list = field(default_factory=list)
    done: bool = False

    def proposals(self, units, grid, nodes=(), ladder=("fp32",)) -> list:
        """(move, thresholds, precision) of each unit raised by one step of the grid and
        each node lowered by one step of the ladder."""
        out = []
        predictor = get_predictor(self.predictor)
        if predictor is not None and predictor.scheme == "delta":
            ladder = [p for p in ladder if p != "bf16-act"]  # (delta does not run there)
        thresholds = {v: grid[self.level[v]] for v in units}
        precision = {n: ladder[self.level[("precision", n)]] for n in nodes
                     if self.level[("precision", n)]}
        for u in units:
            if u not in self.stuck and self.level[u] + 1 < len(grid):
                out.append((u, {**thresholds, u: grid[self.level[u] + 1]}, precision))
        for n in nodes:
            move = ("precision", n)
            if move not in self.stuck and self.level[move] + 1 < len(ladder):
                out.append((move, thresholds, {**precision, n: ladder[self.level[move] + 1]}))
        return out


def _calibrate(runner, proto, units, labels, holdout_labels, metric, k, max_loss, predictors,
               grid, margin, target, progress, objective, options, ladder=("fp32",),
               nodes=()) -> CalibrationResult:
    bound = max_loss * (1 - margin)
    real = [p for p in predictors if p != "oracle"] or list(predictors)
    evaluate = _Evaluator(runner, "calibration", labels, metric, k)
    # Progress in threshold levels: every unit of every predictor has len(grid) - 1
    # levels to climb; a level is done when the unit is raised past it or stops below
    # it, so the total is known up front.  The held-out confirmation is one more.
    levels = len(grid) - 1
    moves = list(units) + [("precision", n) for n in nodes]
    steps = {m: levels if m in units else len(ladder) - 1 for m in moves}
    bar = tqdm(desc="calibrate", unit="level", total=len(predictors) * sum(steps.values()) + 1,
               disable=not progress)
    searches = [_Search(p, {m: 0 for m in moves}, Trial(p, {u: 0.0 for u in units}, 0.0, 0.0,
                                                        0.0, evaluate.base))
                for p in predictors]
    # The predictors' searches advance round by round together: a round's candidates
    # of every predictor are scored at once (in parallel on a cluster); each search's
    # decisions depend only on its own scores, as when they run one after another.
    while not all(s.done for s in searches):
        active = [s for s in searches if not s.done]
        proposed = [(s, *move) for s in active for move in s.proposals(units, grid, nodes, ladder)]
        scores = evaluate.many([(_config(s.predictor, th), pr) for s, _, th, pr in proposed])
        trials: dict = {id(s): [] for s in active}
        for (s, u, thresholds, precision), (value, loss, avoided, reuse, work) in zip(proposed, scores):
            if loss <= bound:
                trials[id(s)].append((work, -loss, -moves.index(u), u,
                                      Trial(s.predictor, thresholds, loss, avoided, reuse, value,
                                            precision, work)))
            else:
                s.stuck.add(u)
                bar.update(steps[u] - s.level[u])
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
        order = sorted(path, key=lambda t: (-t.work, t.loss, real.index(t.predictor)))
    else:
        candidates = _timed_candidates(paths)
        candidates.update(_fp32_twins(candidates, evaluate, bound))
        candidates.update(_precision_alone(paths, evaluate, bound))
        unit = "uJ" if objective == "energy" else "ms"
        scale = 1.0 if objective == "energy" else 1e3
        local = runner
        if not isinstance(runner, LocalRunner):  # timed on this machine, not the workers
            local = LocalRunner(proto, target, options)
            local.add_split("calibration", *runner.split_data("calibration"))
        costs = _cost(local, "calibration",
                      {"unmodified": (None, {}), **{label: (t.memo, t.precision)
                                                    for label, t in candidates.items()}},
                      objective, target)
        measured = sorted(([label, costs[label] * scale, unit] for label in costs), key=lambda m: m[1])
        limit = costs["unmodified"] * (1 - TIME_MARGIN)
        order = [candidates[label] for label, _, _ in measured
                 if label != "unmodified" and costs[label] <= limit]
        order.append(path[0])  # the unmodified model (every unit at 0): always within the bound
    for chosen in order:
        unmodified = objective != "computations" and chosen is path[0]
        config = None if unmodified else chosen.memo
        if unmodified:
            h_value, h_loss, h_avoided, h_reuse, h_work = held.base, 0.0, 0.0, 0.0, 0.0
            break
        h_value, h_loss, h_avoided, h_reuse, h_work = held(config, chosen.precision)
        if h_loss <= max_loss:
            break
        rejections += 1
    bar.update(bar.total - bar.n)
    bar.close()

    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")

    searched = len(ladder) > 1

    def summary(value, loss, avoided, reuse, work):
        out = {"metric_name": metric_name, "metric": value, "loss": loss, "reuse": reuse,
               "computations_avoided": avoided}
        return {**out, "weight_traffic_avoided": work} if searched else out

    def best(b):
        out = {"thresholds": {f"{n}:{d}": t for (n, d), t in b.thresholds.items()},
               "loss": b.loss, "computations_avoided": b.avoided, "reuse": b.reuse}
        return {**out, "precision": dict(b.precision), "weight_traffic_avoided": b.work} \
            if searched else out

    if config is not None and all(t == 0 for t in chosen.thresholds.values()) and chosen.precision:
        # (the computations objective's path starts from thresholds 0 too)
        config = None
    return CalibrationResult(
        config=config, max_loss=max_loss, search_bound=bound,
        baseline={"calibration": evaluate.base, "holdout": held.base},
        chosen={"calibration": summary(chosen.metric, chosen.loss, chosen.avoided, chosen.reuse,
                                       chosen.work),
                "holdout": summary(h_value, h_loss, h_avoided, h_reuse, h_work)},
        per_predictor={p: best(b) for p, b in best_by_predictor.items()},
        precision=_precision(chosen.precision) if searched else None,
        evaluations=evaluate.count + held.count, held_out_rejections=rejections,
        predictor_configs={p: _config(p, b.thresholds) for p, b in best_by_predictor.items()},
        objective=objective, measured=measured)

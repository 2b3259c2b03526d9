"""Threshold sweeps: reuse and accuracy loss against the threshold, per predictor."""

from __future__ import annotations

import os
from collections import Counter

from tqdm import tqdm

from .evaluation import Job, Variant, make_runner
from .frontend import load_model
from .passes import MemoConfig
from .sequences import join_labels
from .validate import compare, pick_output


def sweep(model, inputs, thresholds, predictors=("bnn", "oracle"), labels=None, metric=None,
          output=None, target="cpu", progress=True, stream=None, cluster=None, workers=None,
          **options) -> list[dict]:
    """One row per (predictor, threshold): reuse, computations avoided, output error and
    metric loss.  Each predictor is compiled once, with tunable thresholds.  ``stream``
    (a StreamSpec): the inputs run as a recorded stream in a session.  ``cluster`` (a Ray
    address, "local" or a :class:`memotvm.cluster.Cluster`): the configurations run on
    ``workers`` Ray workers, with the same rows as in one process."""
    proto = load_model(model)
    for predictor in predictors:
        MemoConfig(predictor=predictor)  # unknown names fail before any work
    for threshold in thresholds:
        MemoConfig(threshold=threshold)
    names = [o.name for o in proto.graph.output]
    k = pick_output(names, output) if metric is not None else 0
    runner = make_runner(proto, target, options, cluster, workers,
                         variants=[Variant.tunable(p) for p in predictors], keep=[0, k])
    try:
        runner.add_split("sweep", inputs, stream)
        base_out = runner.run([Job("sweep")])[0].outputs
        if isinstance(labels, list):
            labels = join_labels(labels)
        pairs = [(p, t) for p in predictors for t in thresholds]
        jobs = [Job("sweep", Variant.tunable(p), MemoConfig(threshold=t, predictor=p)) for p, t in pairs]

        def row(i, outcome):
            bar.update(1)
            predictor, threshold = pairs[i]
            stats = outcome.stats
            errors, result = compare(names, base_out, outcome.outputs, labels, metric, output)
            first = errors[names[0]]
            return {
                "predictor": predictor,
                "threshold": threshold,
                "reuse": stats.reuse,
                "computations_avoided": stats.computations_avoided,
                "max_abs_error": first["max_abs"],
                "mean_rel_error": first["mean_rel"],
                "metric": result["name"] if result else None,
                "metric_value": result["memoized"] if result else None,
                "metric_loss": result["loss"] if result else None,
                "per_node_avoided": {node: stats.computations_avoided_of([node])
                                     for node in stats.per_node},
            }

        with tqdm(total=len(jobs), desc="sweep", disable=not progress, unit="config") as bar:
            rows = runner.run(jobs, reduce=row)
    finally:
        runner.close()
    return rows


def format_table(rows) -> str:
    has_metric = any(r["metric"] for r in rows)
    head = (f"{'predictor':<13} {'threshold':>9} {'reuse':>7} {'avoided':>8} {'max abs err':>12} "
            f"{'mean rel err':>12}")
    if has_metric:
        head += f" {'metric':>9} {'loss':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['predictor']:<13} {r['threshold']:>9.3g} {r['reuse']:>7.1%} "
                f"{r['computations_avoided']:>8.1%} {r['max_abs_error']:>12.3g} "
                f"{r['mean_rel_error']:>12.3g}")
        if has_metric:
            line += f" {r['metric_value']:>9.4f} {r['metric_loss']:>8.2%}"
        lines.append(line)
    return "\n".join(lines)


def layers_text(loops) -> str:
    """The recurrent layers of a model, for titles: "2 x GRU 128 bidirectional, LSTM 64"."""
    kinds = Counter(f"{loop.op} {loop.hidden_size}{' bidirectional' if loop.num_directions == 2 else ''}"
                    for loop in loops)
    return ", ".join(f"{n} x {kind}" if n > 1 else kind for kind, n in kinds.items())


# Delta execution's threshold is an absolute change of an input component; every
# predictor's is a relative change of its prediction: they get separate axes.
ABSOLUTE_THRESHOLD = {"delta"}


def pareto_front(points):
    """The points (loss, avoided, ...) that no other point beats on both: no more loss and
    more avoided, sorted by loss."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def plot(rows, path, title="", calibrated=None) -> None:
    """The sweep as a figure for a paper, three panels, one colour per predictor:

    1. computations avoided against the threshold, 2. the loss (metric loss with labels,
       else mean relative output error) against the threshold -- relative thresholds on
       the bottom axis, delta execution's absolute ones on a top axis of their own;
    3. the trade-off: every configuration as a point, each predictor's Pareto front (no
       other of its thresholds avoids more for less loss) as a line, its points labelled
       with their thresholds, and ``calibrated`` -- a dict with ``loss``,
       ``computations_avoided`` and ``predictor`` -- marked with a star.

    Rows with ``per_node_avoided`` also give a second figure, ``<path stem>_nodes.png``:
    computations avoided per recurrent node against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_metric = any(r["metric"] for r in rows)
    loss_key = "metric_loss" if has_metric else "mean_rel_error"
    loss_scale = 100 if has_metric else 1
    loss_label = f"{rows[0]['metric']} loss (%)" if has_metric else "mean relative output error"
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    colours = {p: f"C{i}" for i, p in enumerate(predictors)}
    relative = [p for p in predictors if p not in ABSOLUTE_THRESHOLD]
    absolute = [p for p in predictors if p in ABSOLUTE_THRESHOLD]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    axes_for = {}
    for ax in (ax1, ax2):
        bottom = ax if relative else None
        top = (ax.twiny() if relative else ax) if absolute else None
        axes_for[ax] = {p: (top if p in ABSOLUTE_THRESHOLD else bottom) for p in predictors}
        if relative:
            ax.set_xlabel("threshold: relative change of the prediction (" + ", ".join(relative) + ")")
        if absolute:
            top.set_xlabel("threshold: absolute change of an input component (" + ", ".join(absolute) + ")",
                           color=colours[absolute[0]] if relative else "black")
    for predictor in predictors:
        sel = [r for r in rows if r["predictor"] == predictor]
        th = [r["threshold"] for r in sel]
        avoided = [100 * r["computations_avoided"] for r in sel]
        loss = [loss_scale * r[loss_key] for r in sel]
        c = colours[predictor]
        style = "--" if predictor in ABSOLUTE_THRESHOLD else "-"
        axes_for[ax1][predictor].plot(th, avoided, style, marker="o", color=c, label=predictor)
        axes_for[ax2][predictor].plot(th, loss, style, marker="o", color=c, label=predictor)
        ax3.scatter(loss, avoided, color=c, alpha=0.35, s=18)
        front = pareto_front(list(zip(loss, avoided, th)))
        ax3.plot([p[0] for p in front], [p[1] for p in front], style, marker="o", color=c, label=predictor)
        for x, y, t in front:
            ax3.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                         color=c)
    ax1.set_ylabel("computations avoided (%)")
    ax2.set_ylabel(loss_label)
    ax3.set(xlabel=loss_label, ylabel="computations avoided (%)",
            title="trade-off: Pareto front per predictor (labels: thresholds)")
    if calibrated is not None:
        x = loss_scale * calibrated["loss"]
        y = 100 * calibrated["computations_avoided"]
        ax3.scatter([x], [y], marker="*", s=220, color="black", zorder=5,
                    label=f"calibrated ({calibrated.get('predictor', 'config')})")
    if has_metric:
        # Losses span from a fraction of a percent to hundreds: a log scale above 1 %
        # keeps the region that matters (the 1 % bound, dotted) readable.
        ax3.set_xscale("symlog", linthresh=1.0)
        ax3.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    handles, labels = [], []
    for ax in fig.axes:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels and ax is not ax3:
                handles.append(hh)
                labels.append(ll)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    ax1.legend(handles, labels, fontsize=8)
    ax3.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if any(r.get("per_node_avoided") for r in rows):
        _plot_per_node(rows, _nodes_path(path), title, colours)


def _nodes_path(path) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_nodes{ext or '.png'}"


def _plot_per_node(rows, path, title, colours) -> None:
    """Computations avoided per recurrent node against the threshold, one panel per
    predictor (one line per node)."""
    import matplotlib.pyplot as plt

    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    fig, axes = plt.subplots(1, len(predictors), figsize=(5 * len(predictors), 4), squeeze=False)
    for ax, predictor in zip(axes[0], predictors):
        sel = [r for r in rows if r["predictor"] == predictor]
        nodes = list(dict.fromkeys(n for r in sel for n in r.get("per_node_avoided", {})))
        for node in nodes:
            ax.plot([r["threshold"] for r in sel],
                    [100 * r["per_node_avoided"].get(node, 0.0) for r in sel], marker="o", label=node)
        kind = "absolute" if predictor in ABSOLUTE_THRESHOLD else "relative"
        ax.set(title=predictor, xlabel=f"threshold ({kind})", ylabel="computations avoided (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title + ": per recurrent node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Threshold sweeps: reuse and accuracy loss against the threshold, per predictor."""

from __future__ import annotations

from tqdm import tqdm

from .api import compile as compile_model
from .frontend import load_model
from .passes import MemoConfig
from .validate import compare


def sweep(model, inputs, thresholds, predictors=("bnn", "oracle"), labels=None, metric=None,
          output=None, target="cpu", progress=True, **options) -> list[dict]:
    """One row per (predictor, threshold): reuse, computations avoided, output error and
    metric loss.  Each predictor is compiled once, with tunable thresholds."""
    proto = load_model(model)
    for predictor in predictors:
        MemoConfig(predictor=predictor)  # unknown names fail before any work
    for threshold in thresholds:
        MemoConfig(threshold=threshold)
    baseline = compile_model(proto, target=target, **options)
    base_out = baseline.run(inputs)
    rows = []
    jobs = [(p, t) for p in predictors for t in thresholds]
    models = {}
    for predictor, threshold in tqdm(jobs, desc="sweep", disable=not progress, unit="config"):
        if predictor not in models:
            models[predictor] = compile_model(proto, target=target, memo=MemoConfig(predictor=predictor),
                                              tunable=True, **options)
        memoized = models[predictor]
        config = MemoConfig(threshold=threshold, predictor=predictor)
        memo_out = memoized.run(inputs, memo=config)
        errors, result = compare(baseline.output_names, base_out, memo_out, labels, metric, output)
        first = next(iter(errors.values()))
        rows.append({
            "predictor": predictor,
            "threshold": threshold,
            "reuse": memoized.last_stats.reuse,
            "computations_avoided": memoized.last_stats.computations_avoided,
            "max_abs_error": first["max_abs"],
            "mean_rel_error": first["mean_rel"],
            "metric": result["name"] if result else None,
            "metric_value": result["memoized"] if result else None,
            "metric_loss": result["loss"] if result else None,
        })
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


def plot(rows, path, title="") -> None:
    """Three panels, one line per predictor: computations avoided against the threshold,
    the loss (metric loss with labels, else mean relative output error) against the
    threshold, and computations avoided against the loss: the paper's Figure 1 and the
    trade-off curve on which predictors are compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_metric = any(r["metric"] for r in rows)
    loss_key = "metric_loss" if has_metric else "mean_rel_error"
    loss_scale = 100 if has_metric else 1
    loss_label = f"{rows[0]['metric']} loss (%)" if has_metric else "mean relative output error"
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    for predictor in dict.fromkeys(r["predictor"] for r in rows):
        sel = [r for r in rows if r["predictor"] == predictor]
        th = [r["threshold"] for r in sel]
        avoided = [100 * r["computations_avoided"] for r in sel]
        loss = [loss_scale * r[loss_key] for r in sel]
        ax1.plot(th, avoided, marker="o", label=predictor)
        ax2.plot(th, loss, marker="o", label=predictor)
        ax3.plot(loss, avoided, marker="o", label=predictor)
    ax1.set(xlabel="threshold", ylabel="computations avoided (%)")
    ax2.set(xlabel="threshold", ylabel=loss_label)
    ax3.set(xlabel=loss_label, ylabel="computations avoided (%)")
    if has_metric:
        # Losses span from a fraction of a percent to hundreds: a log scale above 1 %
        # keeps the region that matters (the 1 % bound, dotted) readable.
        ax3.set_xscale("symlog", linthresh=1.0)
        ax3.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Task metrics for validation, sweeps and calibration.

Each metric compares the memoized model's output with the unmodified model's (and, for
most, with labels) and gives a **loss**: how much worse the memoized model is, the
quantity ``--max-loss`` bounds.  What the bound means depends on the metric:

* ``accuracy`` (labels: class ids): argmax over the last axis; loss = relative drop,
  (base - memo) / base: 1 % = one correct answer in a hundred lost.
* ``bpc`` (labels: class ids): bits per character, -mean log2 softmax(output)[label];
  loss = relative rise, (memo - base) / base.
* ``mse`` (labels: real targets): loss = relative rise of the mean squared error.
* ``nmse`` (labels: real targets): loss = (memo mse - base mse) / variance of the
  unmodified output: an error bound in units of the output's own spread, meaningful
  when the unmodified error is near zero (where the relative rise of ``mse`` explodes).
* ``f1`` (labels: 0/1 per frame): F1 of the decision output >= 0.5; loss = relative drop.
* ``decisions`` (labels optional): the share of frames whose decision (output >= 0.5, a
  detector's speech/no-speech) differs between the memoized and the unmodified model;
  with labels the report also gives each one's agreement with them.
* ``fidelity`` (no labels): RMS difference of the memoized from the unmodified output
  over the unmodified output's standard deviation.
* a Python callable ``f(memo_output, base_output, labels) -> loss`` (API only).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

HIGHER_IS_BETTER = {"accuracy": True, "bpc": False, "mse": False, "nmse": False, "f1": True,
                    "decisions": True, "fidelity": False}
NEEDS_LABELS = {"accuracy", "bpc", "mse", "nmse", "f1"}
_CLASSES = {"accuracy", "bpc"}


def check_metric(metric, labels_given: bool) -> None:
    """Refuse an unknown metric, or labels that it needs and lacks."""
    if callable(metric):
        return
    if metric not in HIGHER_IS_BETTER:
        raise InputError(f"unknown metric '{metric}' (known: {', '.join(HIGHER_IS_BETTER)})")
    if metric in NEEDS_LABELS and not labels_given:
        raise InputError(f"metric '{metric}' needs labels")


def _check(output, labels, name):
    if name in ("mse", "nmse"):
        if output.shape != labels.shape:
            raise InputError(f"{name}: output shape {output.shape} differs from labels {labels.shape}")
    elif name in ("f1", "decisions"):
        if _frames(output).shape != labels.reshape(-1).shape:
            raise InputError(f"{name}: labels of shape {labels.shape} must give one 0/1 per frame "
                             f"of the output (shape {output.shape})")
    elif output.shape[:-1] != labels.shape:
        raise InputError(
            f"{name}: labels of shape {labels.shape} must match the output's leading "
            f"dimensions {output.shape[:-1]} (the last axis holds the classes)"
        )
    elif labels.dtype.kind not in "iu":
        raise InputError(f"{name}: labels must be integer class ids, got {labels.dtype}")
    elif labels.size and (labels.min() < 0 or labels.max() >= output.shape[-1]):
        raise InputError(f"{name}: labels must lie in [0, {output.shape[-1] - 1}]")


def _frames(output):
    """A detector's per-frame probabilities: the output flattened (a last axis of 1
    dropped)."""
    return output.reshape(-1)


def score(name: str, output: np.ndarray, labels: np.ndarray, mask=None) -> float:
    """The metric ``name`` of ``output`` against ``labels`` (entries where mask is true)."""
    if name not in HIGHER_IS_BETTER or name == "fidelity":
        raise InputError(f"metric '{name}' has no score against labels alone")
    output = np.asarray(output, np.float64)
    labels = np.asarray(labels)
    _check(output, labels, name)
    if name in ("mse", "nmse"):
        err = (output - labels) ** 2
        return float(err[mask].mean() if mask is not None else err.mean())
    if name in ("f1", "decisions"):
        decided, truth = _frames(output) >= 0.5, labels.reshape(-1) != 0
        if name == "decisions":
            return float((decided == truth).mean())
        tp = float(np.sum(decided & truth))
        denom = float(np.sum(decided) + np.sum(truth))
        return 2 * tp / denom if denom else 1.0
    if name == "accuracy":
        hit = output.argmax(axis=-1) == labels
        return float(hit[mask].mean() if mask is not None else hit.mean())
    shifted = output - output.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    bits = -picked / np.log(2)
    return float(bits[mask].mean() if mask is not None else bits.mean())


def loss(name: str, base: float, memo: float) -> float:
    """Relative degradation from ``base`` to ``memo`` (positive = worse)."""
    denom = abs(base) if base != 0 else 1.0
    if HIGHER_IS_BETTER[name]:
        return (base - memo) / denom
    return (memo - base) / denom


def measure(metric, memo_out, base_out, labels=None) -> dict:
    """{"unmodified", "memoized", "loss"} of ``metric`` (a name or a callable) for the
    memoized output against the unmodified one (and the labels)."""
    memo_out, base_out = np.asarray(memo_out, np.float64), np.asarray(base_out, np.float64)
    if callable(metric):
        value = float(metric(memo_out, base_out, labels))
        return {"unmodified": 0.0, "memoized": value, "loss": value}
    check_metric(metric, labels is not None)
    if metric == "fidelity":
        spread = float(base_out.std()) or 1.0
        value = float(np.sqrt(np.mean((memo_out - base_out) ** 2))) / spread
        return {"unmodified": 0.0, "memoized": value, "loss": value}
    if metric == "decisions":
        flips = float(np.mean((_frames(memo_out) >= 0.5) != (_frames(base_out) >= 0.5)))
        if labels is None:
            return {"unmodified": 1.0, "memoized": 1.0 - flips, "loss": flips}
        return {"unmodified": score(metric, base_out, labels),
                "memoized": score(metric, memo_out, labels), "loss": flips}
    base, memo = score(metric, base_out, labels), score(metric, memo_out, labels)
    if metric == "nmse":
        spread = float(base_out.var()) or 1.0
        return {"unmodified": base, "memoized": memo, "loss": (memo - base) / spread}
    return {"unmodified": base, "memoized": memo, "loss": loss(metric, base, memo)}

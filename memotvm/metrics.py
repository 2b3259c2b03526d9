"""Task metrics for validation, sweeps and calibration.

Each metric compares one model output with labels.  ``loss`` is the *relative*
degradation of the memoized model against the unmodified one (0.01 = 1 %), so that one
bound (the paper's "accuracy loss under 1 %") means the same for every metric:

* ``accuracy`` (higher is better): argmax over the last axis vs integer labels;
  loss = (base - memo) / base.
* ``bpc`` (bits per character, lower is better): -mean log2 softmax(logits)[label];
  loss = (memo - base) / base.
* ``mse`` (lower is better): mean squared error vs real-valued targets;
  loss = (memo - base) / base.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

HIGHER_IS_BETTER = {"accuracy": True, "bpc": False, "mse": False}


def _check(output, labels, name):
    if name == "mse":
        if output.shape != labels.shape:
            raise InputError(f"mse: output shape {output.shape} differs from labels {labels.shape}")
    elif output.shape[:-1] != labels.shape:
        raise InputError(
            f"{name}: labels of shape {labels.shape} must match the output's leading "
            f"dimensions {output.shape[:-1]} (the last axis holds the classes)"
        )
    elif labels.dtype.kind not in "iu":
        raise InputError(f"{name}: labels must be integer class ids, got {labels.dtype}")
    elif labels.size and (labels.min() < 0 or labels.max() >= output.shape[-1]):
        raise InputError(f"{name}: labels must lie in [0, {output.shape[-1] - 1}]")


def score(name: str, output: np.ndarray, labels: np.ndarray, mask=None) -> float:
    """The metric ``name`` of ``output`` against ``labels`` (entries where mask is true)."""
    if name not in HIGHER_IS_BETTER:
        raise InputError(f"unknown metric '{name}' (known: {', '.join(HIGHER_IS_BETTER)})")
    output = np.asarray(output, np.float64)
    labels = np.asarray(labels)
    _check(output, labels, name)
    if name == "mse":
        err = (output - labels) ** 2
        return float(err[mask].mean() if mask is not None else err.mean())
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

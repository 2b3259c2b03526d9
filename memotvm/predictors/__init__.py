"""Predictors: cheap guesses of how much a neuron's pre-activation changed.

Every predictor plugs into the same memo table and decision (docs/spec.md):
it maps a neuron's current inputs to q_j(t); the table keeps q_m from the neuron's last
full evaluation; the neuron is reused when |q_j(t) - q_m| / max(|q_m|, floor) < threshold.

A predictor is a small class with four parts, used by the pass, the kernel builder and
the numpy reference alike:

* ``weight_data(loop, W, R)`` -- what it derives from the weights at compile time, as
  named numpy arrays (they become constant inputs of the kernel);
* ``declare(kb)`` -- the kernel parameters for that data (called by the kernel builder,
  :mod:`memotvm.kernels`, whose public methods -- ``param``, ``multi_dot``,
  ``sign_bits``, ``input_projection`` -- are what a predictor's code may use);
* ``prepare(kb, d, b, s, x_ref, u_ref)`` / ``value(kb, d, j, state)`` -- TIR emitted once
  per task and step, then per neuron, returning q_j; a predictor with a ``group`` size
  may instead give the values of ``group`` consecutive neurons at once
  (``group_values``), which the kernel uses where the hidden size is a multiple of it;
* ``reference(data, d, rows, x, u, a)`` -- the same q in numpy, for the reference (``a``
  is the rows' exact input parts).

A predictor with ``fresh_input = True`` reads the exact input part (the kernel computes
the input projection of every step anyway) and memoizes only the recurrent part: a
reused neuron takes its fresh input part and its cached recurrent part.

``register_predictor`` makes a new one available by name (``"name"`` or
``"name:argument"``, e.g. ``lowrank:8``).  The oracle is not a predictor in this sense
(it computes every neuron and saves nothing) and is handled by the kernel directly.

One module per predictor: :mod:`.bnn` (the paper's), :mod:`.lowrank` (``lowrank:r`` and
``exactinput:r``) and :mod:`.delta` (delta execution's costs; its kernel is a scheme of
its own, :mod:`memotvm.kernels.schemes.delta`).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Predictor, words
from .bnn import SIGN_GROUP, BnnPredictor, group_rows, pack_signs
from .delta import DELTA_COLUMN_BYTES, DeltaExecution
from .lowrank import ExactInputPredictor, LowRankPredictor


def _ranked(cls):
    """Factory of a predictor taking a rank argument ("name:R")."""

    def make(arg):
        if arg is None:
            raise ConfigError(f"{cls.name} needs a rank: {cls.name}:R, e.g. {cls.name}:8")
        try:
            return cls(int(arg))
        except ValueError:
            raise ConfigError(f"{cls.name} rank must be an integer, got '{arg}'") from None

    return make


_FACTORIES = {
    "bnn": lambda arg: BnnPredictor(),
    "lowrank": _ranked(LowRankPredictor),
    "exactinput": _ranked(ExactInputPredictor),
    "delta": lambda arg: DeltaExecution(),
}


def register_predictor(name: str, factory) -> None:
    """Make ``factory(argument_or_None) -> Predictor`` available as ``name[:argument]``."""
    if not name or ":" in name or name == "oracle":
        raise ConfigError(f"invalid predictor name '{name}'")
    _FACTORIES[name] = factory


def get_predictor(spec: str) -> Predictor | None:
    """The predictor for ``spec`` ("bnn", "lowrank:8", ...); None for "oracle"."""
    if spec == "oracle":
        return None
    name, _, arg = spec.partition(":")
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES) + ["oracle"])
        raise ConfigError(f"unknown predictor '{spec}' (known: {known}; lowrank takes :rank)")
    return factory(arg or None)


__all__ = [
    "DELTA_COLUMN_BYTES",
    "SIGN_GROUP",
    "BnnPredictor",
    "DeltaExecution",
    "ExactInputPredictor",
    "LowRankPredictor",
    "Predictor",
    "get_predictor",
    "group_rows",
    "pack_signs",
    "register_predictor",
    "words",
]

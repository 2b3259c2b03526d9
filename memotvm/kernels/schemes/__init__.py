"""Execution schemes: how a kernel's step evaluates its neurons.

One module per scheme, each a :class:`~.base.Scheme` the builder calls at fixed points
of a step: :mod:`.dense` (the unmodified kernel), :mod:`.memoization` (a predictor of
:mod:`memotvm.predictors` decides per neuron), :mod:`.delta` (delta execution) and
:mod:`.oracle` (analysis only).
"""

from __future__ import annotations

from ...predictors import get_predictor
from .base import Scheme, small_change
from .delta import Delta
from .dense import Dense
from .memoization import Memoization
from .oracle import Oracle

# Predictor.scheme -> the scheme that runs a predictor of that kind.
_BY_KIND = {"memo": Memoization, "delta": Delta}


def scheme_for(kb, memo) -> Scheme:
    """The scheme of a kernel memoized by ``memo`` (a MemoPlan; None: unmodified)."""
    if memo is None:
        return Dense(kb)
    predictor = get_predictor(memo.predictor)
    if predictor is None:
        return Oracle(kb)
    return _BY_KIND[predictor.scheme](kb, predictor)


def scheme_kind(memo) -> str:
    """"memo", "delta" or "oracle": the kind of scheme that runs ``memo``'s predictor."""
    predictor = get_predictor(memo.predictor)
    return "oracle" if predictor is None else predictor.scheme


def weight_data(loop, predictor, W, R) -> dict:
    """The constant inputs a kernel memoized by ``predictor`` takes after the node's
    inputs (in the order its scheme declares them), from constant weights W and R."""
    if predictor.scheme == "delta":
        return Delta.weight_data(loop, predictor, W, R)
    return predictor.weight_data(loop, W, R)


__all__ = ["Delta", "Dense", "Memoization", "Oracle", "Scheme", "scheme_for",
           "scheme_kind", "small_change", "weight_data"]

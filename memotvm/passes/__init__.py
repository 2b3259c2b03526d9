"""IR transforms; above all the memoization pass."""

from .memoize import PREDICTORS, MemoConfig, MemoizeRecurrentLoops

__all__ = ["PREDICTORS", "MemoConfig", "MemoizeRecurrentLoops"]

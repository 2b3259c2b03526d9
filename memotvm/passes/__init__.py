"""IR transforms; above all the memoization pass."""

from .memoize import MemoConfig, MemoizeRecurrentLoops

__all__ = ["MemoConfig", "MemoizeRecurrentLoops"]

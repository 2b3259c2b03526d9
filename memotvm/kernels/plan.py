"""What is asked of one kernel: the loop it computes and, when memoized, how."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoPlan:
    """What the memoization pass asks of one kernel.

    ``predictor`` names a predictor of :mod:`memotvm.predictors` ("bnn",
    "lowrank:8", "delta", ...) or "oracle"; ``thresholds`` has one finite value >= 0
    per direction.
    """

    predictor: str
    thresholds: tuple

    def to_json(self) -> str:
        """The plan as JSON (a kernel's ``memotvm.memo_plan`` attribute)."""
        return json.dumps({"predictor": self.predictor, "thresholds": list(self.thresholds)})

    @classmethod
    def from_json(cls, text: str) -> "MemoPlan":
        data = json.loads(text)
        return cls(data["predictor"], tuple(data["thresholds"]))


def kernel_name(loop, memo: MemoPlan | None = None) -> str:
    """The global symbol of ``loop``'s kernel (memoized when ``memo`` is given)."""
    raw = loop.name + (f"_memo_{memo.predictor}" if memo else "")
    safe = "".join(ch if ch.isalnum() else "_" for ch in raw)
    return f"{loop.op.lower()}_{safe}"

"""Reuse statistics: counts of computed and reused neuron evaluations.

A neuron evaluation is one (batch element, direction, neuron, valid step); the kernels
count them per gate, and this module sums and labels those counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GateCount:
    computed: int = 0
    reused: int = 0

    @property
    def total(self) -> int:
        return self.computed + self.reused

    @property
    def reuse(self) -> float:
        return self.reused / self.total if self.total else 0.0

    def add(self, other: "GateCount") -> None:
        self.computed += other.computed
        self.reused += other.reused


class KernelCounts:
    """Counts of one or more calls as the kernels give them (per loop, int64
    [directions, batch, gates, 2], numpy arrays or the VM's tensors), summed over the
    batch when first read, and made :class:`ReuseStats` when asked for: a stream's
    calls rarely are, so a session adds its calls' counts without reading them."""

    __slots__ = ("_pending", "_summed", "layout", "_stats")

    # Calls whose counts a session keeps unsummed at most (a few bytes each).
    PENDING = 256

    def __init__(self, arrays, layout):
        self._pending = [list(arrays)]
        self._summed = None
        self.layout = layout
        self._stats = None

    @property
    def summed(self) -> list:
        """Per loop: the counts summed over the calls and the batch, [directions, gates, 2]."""
        if self._pending:
            folded = [_fold([np.from_dlpack(arrays[i]) for arrays in self._pending])
                      for i in range(len(self._pending[0]))]
            if self._summed is not None:
                folded = [a + b for a, b in zip(self._summed, folded)]
            self._summed, self._pending = folded, []
        return self._summed

    def append(self, arrays) -> None:
        """Add one more call's counts (per loop, as the kernels gave them)."""
        self._extend([arrays])

    def add(self, other: "KernelCounts") -> None:
        """Add the counts of ``other`` (its calls' arrays, read when these are)."""
        if other._summed is not None:
            self._summed = [a + b for a, b in zip(self.summed, other.summed)]
        self._extend(other._pending)

    def _extend(self, calls: list) -> None:
        self._pending.extend(calls)
        self._stats = None
        if len(self._pending) > self.PENDING:
            self.summed  # noqa: B018 (folds them)

    def stats(self) -> "ReuseStats":
        if self._stats is None:
            self._stats = ReuseStats.from_summed_counts(self.summed, self.layout)
        return self._stats


def _fold(calls: list) -> np.ndarray:
    """One loop's counts of several calls ([directions, batch, gates, 2] each) summed
    over the calls and the batch: stacked where the batches agree (one sum, not one
    per call: a session folds 256 calls at a time)."""
    first = calls[0].shape
    if all(c.shape == first for c in calls):
        return np.stack(calls).sum(axis=(0, 2)) if len(calls) > 1 else calls[0].sum(axis=1)
    return sum(c.sum(axis=1) for c in calls)


@dataclass
class ReuseStats:
    """Counts of one call: ``per_gate[(node, direction, gate)]`` and their sums."""

    per_gate: dict = field(default_factory=dict)
    # node -> (multiply-adds of one neuron evaluation, share of them a reuse skips)
    costs: dict = field(default_factory=dict)

    @classmethod
    def from_kernel_counts(cls, loops, arrays, config=None, layout=None) -> "ReuseStats":
        """``arrays[i]`` is loop i's int64 [directions, batch, gates, 2] stats output;
        ``config`` (the MemoConfig) says which predictor, hence what a reuse skips.
        ``layout``: :meth:`counts_layout` of the same loops and config, made once (a
        model's every call has the same)."""
        return cls.from_summed_counts([np.asarray(a).sum(axis=1) for a in arrays],
                                      layout or cls.counts_layout(loops, config))

    @classmethod
    def from_summed_counts(cls, summed, layout) -> "ReuseStats":
        """``summed[i]``: loop i's counts summed over the batch ([directions, gates, 2]);
        ``layout``: :meth:`counts_layout`."""
        stats = cls()
        for (name, cost, keys), counts in zip(layout, summed):
            stats.costs[name] = cost
            counts = counts.tolist()
            for d, g, key in keys:
                computed, reused = counts[d][g]
                stats.per_gate[key] = GateCount(computed, reused)
        return stats

    @staticmethod
    def counts_layout(loops, config=None) -> list:
        """Per loop: its name, (multiply-adds of one neuron evaluation, share of them a
        reuse skips) and the (direction, gate, per_gate key) of each count."""
        from .predictors import get_predictor

        layout = []
        for loop in loops:
            predictor = get_predictor(config.plan_for(loop).predictor) if config else None
            share = predictor.skipped_share(loop) if predictor is not None else 1.0
            macs = loop.input_size + loop.hidden_size
            if predictor is not None and predictor.scheme == "delta":
                macs = 1  # delta execution counts multiply-adds themselves
            keys = [(d, g, (loop.name, loop.direction_name(d), gate))
                    for d in range(loop.num_directions) for g, gate in enumerate(loop.gates)]
            layout.append((loop.name, (macs, share), keys))
        return layout

    def add(self, other: "ReuseStats") -> None:
        """Add another call's counts (a session accumulates its calls')."""
        for key, count in other.per_gate.items():
            self.per_gate.setdefault(key, GateCount()).add(count)
        self.costs.update(other.costs)

    def _group(self, key_of) -> dict:
        out: dict = {}
        for key, count in self.per_gate.items():
            out.setdefault(key_of(key), GateCount()).add(count)
        return out

    @property
    def total(self) -> GateCount:
        return self._group(lambda k: None).get(None, GateCount())

    @property
    def per_node(self) -> dict:
        return self._group(lambda k: k[0])

    @property
    def per_direction(self) -> dict:
        return self._group(lambda k: (k[0], k[1]))

    @property
    def reuse(self) -> float:
        return self.total.reuse

    def computations_avoided_of(self, nodes=None) -> float:
        """Skipped multiply-adds / all multiply-adds of the recurrent layers (the spec's
        measure; equal to the reuse ratio when a reuse skips the whole neuron)."""
        skipped = total = 0.0
        for node, count in self.per_node.items():
            if nodes is not None and node not in nodes:
                continue
            macs, share = self.costs.get(node, (1, 1.0))
            skipped += count.reused * macs * share
            total += count.total * macs
        return skipped / total if total else 0.0

    @property
    def computations_avoided(self) -> float:
        return self.computations_avoided_of()

    def weight_traffic_avoided(self, weight_bytes: dict | None = None) -> float:
        """The share of the fp32 model's weight traffic avoided: every multiply-add of
        the recurrent layers reads one weight, of ``weight_bytes[node]`` bytes (4,
        float32, where not given: 2 at bf16, 1 at int8); reused neurons read none.
        With every weight at 4 bytes this is :attr:`computations_avoided`; it is how
        calibration weighs memoization against reduced precision."""
        if not weight_bytes or all(b == 4 for b in weight_bytes.values()):
            return self.computations_avoided
        read = total = 0.0
        for node, count in self.per_node.items():
            macs, share = self.costs.get(node, (1, 1.0))
            total += count.total * macs * 4
            read += (count.total * macs - count.reused * macs * share) * weight_bytes.get(node, 4)
        return 1 - read / total if total else 0.0

    def to_dict(self) -> dict:
        def entry(c):
            return {"computed": c.computed, "reused": c.reused, "reuse": c.reuse}

        return {
            "total": entry(self.total),
            "computations_avoided": self.computations_avoided,
            "nodes": {
                node: {
                    "total": entry(count),
                    "computations_avoided": self.computations_avoided_of({node}),
                    "directions": {
                        direction: {
                            "total": entry(dc),
                            "gates": {
                                g: entry(gc)
                                for (n2, d2, g), gc in self.per_gate.items()
                                if n2 == node and d2 == direction
                            },
                        }
                        for (n1, direction), dc in self.per_direction.items()
                        if n1 == node
                    },
                }
                for node, count in self.per_node.items()
            },
        }

"""Functional simulation of an :class:`EpurProgram`.

The accelerator's datapath computes exactly what docs/spec.md says, neuron by
neuron, chain by chain, in float32 -- which is what :func:`memotvm.reference.run_layer`
states -- so the simulator executes the program through it and keeps the per-step trace
of computed neurons that the timing model needs.  Its results therefore equal the CPU
target's (same decisions, outputs within rounding), which the tests check.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ...frontend.recurrent import OPTIONAL_INPUTS
from ...precision import unpack_bf16_pairs
from ...predictors import get_predictor
from ...reference import predictor_data, run_layer
from .program import EpurProgram, LayerCost, cost


@dataclasses.dataclass
class LayerRun:
    outputs: list  # the kernel's outputs: Y, Y_h, [Y_c], stats, status
    cost: LayerCost


def simulate(prog: EpurProgram, args: list) -> LayerRun:
    """Run ``prog`` on the kernel's input arrays (X, W, R, then the optional inputs the
    node has, in ONNX order, all in layout 0; int8 weights' scales; then, memoized, the predictor's data, which
    the simulator derives again, the thresholds and last the memo table)."""
    loop = dataclasses.replace(prog.loop, layout=0)  # kernels see layout 0
    plan, table = prog.plan, None
    if plan is not None:  # the thresholds and memo table of this call
        plan = dataclasses.replace(plan, thresholds=tuple(float(t) for t in args[-2]))
        table = args[-1]
    X, W, R = args[:3]
    optional = [n for n in OPTIONAL_INPUTS.values() if loop.has(n)]
    given = dict(zip(optional, args[3: 3 + len(optional)]))
    # Weights at reduced precision: the values they stand for (memotvm.precision).
    if prog.weights in ("bfloat16", "int8"):
        W, R = W.astype(np.float32), R.astype(np.float32)
    if prog.weights == "bfloat16_pairs":  # bf16-act: R in pairs, x and h rounded
        W, R = W.astype(np.float32), unpack_bf16_pairs(R, loop.hidden_size)
    if prog.weights == "int8":
        scales = args[3 + len(optional): 5 + len(optional)]
        W, R = W * scales[0][..., None], R * scales[1][..., None]
    seq, batch = X.shape[0], X.shape[1]
    lens = given.get("sequence_lens")
    status = np.zeros((loop.num_directions, batch), np.int32)
    if lens is not None:
        bad = (lens < 0) | (lens > seq)
        status[:, bad] = 1
        lens = np.clip(lens, 0, seq)
    data = _cached_predictor_data(prog, loop, plan, W, R)
    result = run_layer(loop, X, W, R, given.get("B"), lens, given.get("initial_h"),
                       given.get("initial_c"), given.get("P"), memo=plan, pred_data=data,
                       table=table, rounded_operands=prog.weights == "bfloat16_pairs")
    lengths = np.full(batch, seq) if lens is None else np.asarray(lens)
    outputs = [result.Y, result.Y_h] + ([result.Y_c] if loop.op == "LSTM" else [])
    outputs += [result.stats, status]
    resumed = 0
    if plan is not None:
        outputs.append(result.table)
        if table is not None and table.shape[1] == batch:
            resumed = int(np.count_nonzero(table[:, :, -1]))
    return LayerRun(outputs, cost(prog, result.computed, lengths, resumed_chains=resumed))


def _cached_predictor_data(prog, loop, plan, W, R):
    """The predictor's data (an SVD, packed signs) for these weights, computed on the
    first call and again only if the weights change (they may be computed at run time)."""
    if plan is None:
        return None
    key = hashlib.blake2b(np.ascontiguousarray(W).tobytes() + np.ascontiguousarray(R).tobytes(),
                          digest_size=16).digest()
    cached = getattr(prog, "_predictor_data", None)
    if cached is None or cached[0] != key:
        cached = prog._predictor_data = (key, predictor_data(get_predictor(plan.predictor), loop, W, R))
    return cached[1]

"""A numpy reference of recurrent layers and of memoization (docs/spec.md).

It is meant to be read as a second statement of the spec: one direction of one batch
element at a time, step by step, every neuron's decision made explicitly.  It shares the
gate math with the kernels (:mod:`memotvm.cells`) and is the oracle the tests hold the
compiled memoization pass to: same decisions, same counts, outputs within rounding.

``reference_session`` runs a whole ONNX model with these layers standing in for the
recurrent nodes (``onnx.reference`` evaluates everything else).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cells import NumpyMath, gru_cell, gru_reset, lstm_cell, rnn_cell
from .kernels import MemoPlan
from .kernels.memo_table import field_offsets, resumable, table_size
from .frontend.recurrent import RecurrentLoop
from .precision import rounded_activations
from .predictors import get_predictor


@dataclass
class LayerResult:
    Y: np.ndarray  # in the node's layout
    Y_h: np.ndarray
    Y_c: np.ndarray | None
    stats: np.ndarray  # int64 [directions, batch, gates, 2]: computed, reused
    # int32 [directions, batch, seq, gates]: neurons computed at each step (the trace a
    # timing model needs; steps past a sequence's length stay 0)
    computed: np.ndarray | None = None
    # float64 [directions, batch, size]: the memo tables after the call (memoized only;
    # the layout of memotvm.kernels.memo_table)
    table: np.ndarray | None = None


class MemoTable:
    """One chain's memo table: the cached dot products and predictor values."""

    def __init__(self, rows, dtype):
        self.a = np.zeros(rows, dtype)
        self.b = np.zeros(rows, dtype)
        self.q = np.zeros(rows, np.float64)
        self.filled = False


class DeltaState:
    """One chain's delta-execution state: the pre-activation parts, which start from the
    biases, and the last transmitted copy of each input vector ("x", "h" and, for the
    GRU candidate with linear_before_reset = 0, "rh")."""

    def __init__(self, Wb, Rb, D, H, dtype):
        self.a, self.b = Wb.copy(), Rb.copy()
        self.sent = {"x": np.zeros(D, dtype), "h": np.zeros(H, dtype), "rh": np.zeros(H, dtype)}
        self.filled = False

    def transmit(self, which, vec, thr):
        """Components of ``vec`` that changed by >= thr since last sent: (indices, deltas);
        the copy is updated."""
        sent = self.sent[which]
        diff = vec - sent
        idx = np.nonzero(~(np.abs(diff) < thr))[0]  # a NaN change is transmitted
        sent[idx] = vec[idx]
        return idx, diff[idx]


def predictor_data(predictor, loop: RecurrentLoop, W, R) -> dict:
    """What ``predictor`` derives from the weights (once per set of weights); delta
    execution reads the weights themselves."""
    if predictor is None or predictor.scheme == "delta":
        return {}
    return {**predictor.weight_data(loop, W, R), **predictor.reference_data(W, R)}


def run_layer(loop: RecurrentLoop, X, W, R, B=None, sequence_lens=None, initial_h=None,
              initial_c=None, P=None, memo: MemoPlan | None = None,
              pred_data: dict | None = None, table=None,
              rounded_operands: bool = False) -> LayerResult:
    """Evaluate one recurrent node; arrays as the ONNX node receives them.

    ``rounded_operands``: x and h rounded to bfloat16 where W and R multiply them
    (precision ``bf16-act``; W and R given rounded).

    ``pred_data`` may pass :func:`predictor_data` of these weights, computed before.
    ``table`` (memoized): the memo tables an earlier call returned (``LayerResult.table``),
    which the forward chains continue (a streaming session's next call)."""
    dtype = np.float64 if loop.dtype == "float64" else np.float32
    if loop.layout == 1:
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
        initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
    X = X.astype(dtype)
    seq, batch, _ = X.shape
    nd, H, G = loop.num_directions, loop.hidden_size, loop.rows
    Y = np.zeros((seq, nd, batch, H), dtype)
    Y_h = np.zeros((nd, batch, H), dtype)
    Y_c = np.zeros((nd, batch, H), dtype)
    stats = np.zeros((nd, batch, loop.num_gates, 2), np.int64)
    computed = np.zeros((nd, batch, seq, loop.num_gates), np.int32)
    predictor = get_predictor(memo.predictor) if memo else None
    tables_out = np.zeros((nd, batch, table_size(loop, memo.predictor)), np.float64) if memo else None
    if pred_data is None:
        pred_data = predictor_data(predictor, loop, W, R)
    for d in range(nd):
        Wd, Rd = W[d].astype(dtype), R[d].astype(dtype)
        Wb = B[d, :G].astype(dtype) if B is not None else np.zeros(G, dtype)
        Rb = B[d, G:].astype(dtype) if B is not None else np.zeros(G, dtype)
        Pd = P[d].astype(dtype) if P is not None else None
        thr = memo.thresholds[d] if memo else None
        for b in range(batch):
            length = seq if sequence_lens is None else int(sequence_lens[b])
            if not 0 <= length <= seq:
                raise ValueError(f"sequence_lens[{b}] = {length} is outside [0, {seq}]")
            h = initial_h[d, b].astype(dtype) if initial_h is not None else np.zeros(H, dtype)
            c = initial_c[d, b].astype(dtype) if initial_c is not None else np.zeros(H, dtype)
            delta = predictor is not None and predictor.scheme == "delta"
            chain_table = DeltaState(Wb, Rb, loop.input_size, H, dtype) if delta else MemoTable(G, dtype)
            resumed = memo is not None and _resume(loop, memo, table, d, b, batch, chain_table)
            steps = range(length - 1, -1, -1) if loop.is_reverse(d) else range(length)
            for t in steps:
                before = stats[d, b, :, 0].copy()
                chain = (_DeltaChain if delta else _Chain)(loop, d, Wd, Rd, Wb, Rb, memo, thr,
                                                           chain_table, stats[d, b], predictor, pred_data)
                chain.rounded_operands = rounded_operands
                h, c = chain.step(X[t, b], h, c, Pd)
                computed[d, b, t] = stats[d, b, :, 0] - before
                Y[t, d, b] = h
            if length > 0:  # an empty sequence has no last state: 0 (as in onnxruntime)
                Y_h[d, b], Y_c[d, b] = h, c
            if memo is not None:
                tables_out[d, b] = _table_values(loop, memo, chain_table, resumed or length > 0, d)
    if loop.layout == 1:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return LayerResult(Y, Y_h, Y_c if loop.op == "LSTM" else None, stats, computed, tables_out)


def _table_arrays(table) -> dict:
    """A chain's table (MemoTable or DeltaState) as its fields in memo_table's names."""
    if isinstance(table, DeltaState):
        return {"a": table.a, "b": table.b, "sent_x": table.sent["x"], "sent_h": table.sent["h"],
                "sent_rh": table.sent["rh"]}
    return {"a": table.a, "b": table.b, "q": table.q}


def _resume(loop, memo, table, d, b, batch, chain_table) -> bool:
    """Load chain (d, b)'s table from an earlier call's, where it continues one."""
    if table is None or not resumable(loop, d) or table.shape[1] != batch or table[d, b, -1] == 0:
        return False
    arrays = _table_arrays(chain_table)
    for name, (offset, length) in field_offsets(loop, memo.predictor).items():
        arrays[name][...] = table[d, b, offset:offset + length]
    chain_table.filled = True
    return True


def _table_values(loop, memo, chain_table, filled, d) -> np.ndarray:
    """Chain (d, b)'s row of LayerResult.table: its fields and flag (0 where it holds
    nothing or cannot be continued).  Delta execution's input parts are 0 where the
    kernel projects x's copy instead of keeping them."""
    row = np.zeros(table_size(loop, memo.predictor), np.float64)
    if not (filled and resumable(loop, d)):
        return row
    arrays = _table_arrays(chain_table)
    predictor = get_predictor(memo.predictor)
    if predictor is not None and predictor.scheme == "delta" and predictor.projects_input(loop):
        arrays["a"] = np.zeros_like(arrays["a"])
    if predictor is not None and predictor.scheme == "delta" and not (
            loop.op == "GRU" and not loop.linear_before_reset):
        arrays["sent_rh"] = np.zeros_like(arrays["sent_rh"])
    for name, (offset, length) in field_offsets(loop, memo.predictor).items():
        row[offset:offset + length] = arrays[name]
    row[-1] = 1.0
    return row


class _Chain:
    """One step of one (direction, batch element) chain."""

    def __init__(self, loop, d, W, R, Wb, Rb, memo, thr, table, counts, predictor, pred_data):
        self.loop, self.d, self.W, self.R, self.Wb, self.Rb = loop, d, W, R, Wb, Rb
        self.memo, self.thr, self.table, self.counts = memo, thr, table, counts
        self.predictor, self.pred_data = predictor, pred_data
        self.m = NumpyMath(W.dtype)
        self.rounded_operands = False  # (bf16-act: see run_layer)

    def neurons(self, rows, x, u):
        """Fill table.a/b for ``rows`` (a slice), computing or reusing each neuron."""
        W, R = self.W[rows], self.R[rows]
        x_op, u_op = (rounded_activations(x), rounded_activations(u)) if self.rounded_operands \
            else (x, u)
        a = W @ x_op + self.Wb[rows]
        b = R @ u_op + self.Rb[rows]
        n = a.shape[0]
        reuse = np.zeros(n, bool)
        if self.memo is not None:
            if self.predictor is not None:
                q = self.predictor.reference(self.pred_data, self.d, rows, x, u, a)
                floor = self.predictor.floor
            else:  # oracle: the true pre-activation
                q = (a + b).astype(np.float64)
                floor = 1e-6
            # A NaN has no sign: a predictor of signs cannot judge an input holding one,
            # and the neuron is computed (its prediction is kept as computed, a NaN
            # counting as positive).  Other predictors' values become NaN themselves.
            signs_undefined = (self.predictor is not None and self.predictor.reads_signs
                               and (np.isnan(x).any() or np.isnan(u).any()))
            qm = self.table.q[rows]
            if self.table.filled and not signs_undefined:
                reuse = np.abs(q - qm) < self.thr * np.maximum(np.abs(qm), floor)
            self.table.q[rows] = np.where(reuse, qm, q)
        fresh_input = self.predictor is not None and self.predictor.fresh_input
        self.table.a[rows] = a if fresh_input else np.where(reuse, self.table.a[rows], a)
        self.table.b[rows] = np.where(reuse, self.table.b[rows], b)
        H = self.loop.hidden_size
        gate_of = (np.arange(rows.start, rows.stop)) // H
        np.add.at(self.counts, (gate_of, np.where(reuse, 1, 0)), 1)

    def step(self, x, h, c, P):
        loop, m, H, tab = self.loop, self.m, self.loop.hidden_size, self.table
        acts = loop.activations[self.d]
        if loop.op == "GRU" and not loop.linear_before_reset:
            self.neurons(slice(0, 2 * H), x, h)
            r = gru_reset(m, acts, tab.a[H:2 * H] + tab.b[H:2 * H], loop.clip)
            self.neurons(slice(2 * H, 3 * H), x, r * h)
        else:
            self.neurons(slice(0, loop.rows), x, h)
        tab.filled = True
        pre = tab.a + tab.b
        if loop.op == "LSTM":
            gates = {g: pre[n * H:(n + 1) * H] for n, g in enumerate(loop.gates)}
            peep = {g: P[n * H:(n + 1) * H] for n, g in enumerate("iof")} if P is not None else None
            return lstm_cell(m, acts, gates, c, peep, loop.clip, loop.input_forget)
        if loop.op == "GRU":
            r = gru_reset(m, acts, pre[H:2 * H], loop.clip) if loop.linear_before_reset else None
            h = gru_cell(m, acts, pre[:H], tab.a[2 * H:], tab.b[2 * H:], r, h, loop.clip,
                         loop.linear_before_reset)
            return h, c
        return rnn_cell(m, acts, pre, loop.clip), c


class _DeltaChain(_Chain):
    """One step of one chain under delta execution: the parts are updated by the
    transmitted columns, in column order (as the kernel accumulates them); for the
    layers whose kernel projects x's transmitted copies instead
    (``DeltaExecution.projects_input``), the input parts are that product, W x^ + Wb."""

    def __init__(self, *args):
        super().__init__(*args)
        self._x = None  # this step's transmitted input columns, shared by both GRU phases

    def neurons(self, rows, x, u):
        tab, H = self.table, self.loop.hidden_size
        if self._x is None:
            self._x = tab.transmit("x", x, self.thr)
        u_kind = "rh" if (self.loop.op == "GRU" and not self.loop.linear_before_reset
                          and rows.start == 2 * H) else "h"
        xs, dx = self._x
        us, du = tab.transmit(u_kind, u, self.thr)
        if self.predictor.projects_input(self.loop):
            tab.a[rows] = self.W[rows] @ tab.sent["x"] + self.Wb[rows]
        else:
            for k, v in zip(xs, dx):
                tab.a[rows] += self.W[rows, k] * v
        for k, v in zip(us, du):
            tab.b[rows] += self.R[rows, k] * v
        D = self.loop.input_size
        sent = len(xs) + len(us)
        for g in range(rows.start // H, rows.stop // H):
            self.counts[g, 0] += H * sent
            self.counts[g, 1] += H * (D + H - sent)


class ReferenceSession:
    """Run a whole ONNX model with :func:`run_layer` standing in for each recurrent node
    (``onnx.reference`` evaluates every other op); ``memo`` as for ``memotvm.compile``.

    After ``run``, ``stats`` holds the reuse counts in the compiled model's format.
    """

    def __init__(self, model, memo=None, precision=None):
        from onnx.reference import ReferenceEvaluator

        from .precision import PrecisionConfig

        from .frontend.importer import RECURRENT_OPS, _recurrent_node_names
        from .frontend.loader import load_model
        from .passes import MemoConfig

        proto = load_model(model)
        self.config = MemoConfig.coerce(memo) if memo is not None else None
        # Weights at reduced precision: the layers run on the values they stand for.
        self.precision = PrecisionConfig.coerce(precision) if precision is not None else None
        if self.precision is not None and self.precision.products_precision != "fp32":
            proto = _rounded_products(proto, self.precision.products_precision)
        graph = proto.graph
        recurrent = [n for n in graph.node if n.op_type in RECURRENT_OPS]
        names = dict(zip((_node_key(n) for n in recurrent), _recurrent_node_names(graph)))
        self.loops: dict[str, RecurrentLoop] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._order = list(names.values())
        session = self
        custom = [_reference_op(op, session, names) for op in RECURRENT_OPS]
        self._evaluator = ReferenceEvaluator(proto, new_ops=custom)
        self.stats = None

    def run(self, feeds: dict) -> list:
        from .stats import ReuseStats

        self._counts.clear()
        outputs = self._evaluator.run(None, feeds)
        loops = [self.loops[n] for n in self._order]
        self.stats = ReuseStats.from_kernel_counts(loops, [self._counts[n] for n in self._order],
                                                   self.config)
        return outputs


def _rounded_products(proto, precision):
    """A copy of ``proto`` whose MatMul, Gemm and Conv weights given as initializers are
    rounded to ``precision``, one output's weights per row (memotvm.precision)."""
    import onnx
    from onnx import helper, numpy_helper

    from .precision import rounded_rows

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 \
                or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.dtype != np.float32 or (node.op_type != "Conv" and w.ndim != 2):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        # The rows: MatMul's and Gemm's B [K, N] by column (B^T with transB), Conv by
        # output channel.
        axis = 0 if node.op_type == "Conv" or attrs.get("transB", 0) else 1
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(rounded_rows(w, precision, axis),
                                                              node.input[1]))
    return proto


def _node_key(node):
    return (node.op_type, tuple(node.input), tuple(node.output))


def _reference_op(op_type, session, names):
    from onnx import helper
    from onnx.reference.op_run import OpRun

    from .frontend.recurrent import OPTIONAL_INPUTS, parse_recurrent_node
    from .precision import rounded_directions

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **_):
        node = self.onnx_node
        name = names[_node_key(node)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        given = {"B": B, "sequence_lens": sequence_lens, "initial_h": initial_h,
                 "initial_c": initial_c, "P": P}
        present = {label for label in OPTIONAL_INPUTS.values() if given[label] is not None}
        loop = parse_recurrent_node(op_type, name, attrs, present, list(W.shape), list(R.shape),
                                    str(X.dtype))
        plan = session.config.plan_for(loop) if session.config is not None else None
        rounded_operands = False
        if session.precision is not None:
            wanted = session.precision.for_loop(loop)
            W, R = (rounded_directions(w, wanted).astype(w.dtype) for w in (W, R))
            rounded_operands = "bf16-act" in wanted
        result = run_layer(loop, X, W, R, B, sequence_lens, initial_h, initial_c, P, memo=plan,
                           rounded_operands=rounded_operands)
        session.loops[name] = loop
        session._counts[name] = result.stats
        outs = (result.Y, result.Y_h, result.Y_c)
        return tuple(outs[: len(node.output)])

    return type(op_type, (OpRun,), {"op_domain": "", "_run": _run})

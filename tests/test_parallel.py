"""The kernels' time loop runs inside one parallel launch: every worker walks the steps
and takes its share of each parallel loop.  Work outside a parallel loop would be done
by every worker at once, on buffers they share, so no store may sit there."""

import numpy as np
import pytest
import tvm
from tvm import tirx
from tvm.ir.instrument import pass_instrument

import memotvm
from memotvm.frontend import from_onnx
from memotvm.kernels import MemoPlan, build_kernel
from memotvm.kernels.builder import KernelBuilder
from memotvm.kernels.tiling import STREAM_WEIGHT_BYTES
from memotvm.passes import MemoConfig
from memotvm.targets.cpu import _KERNEL_SKIPPED_PASSES, host_target
from memotvm.testing import make_inputs, make_recurrent_model

from conftest import assert_outputs_close, run_onnxruntime


def lowered(func):
    """``func`` after the CPU TIR pipeline's StorageRewrite (the last pass that moves
    allocations), as the CPU backend lowers it."""
    seen = {}

    @pass_instrument
    class Capture:
        def run_after_pass(self, mod, info):
            if info.name == "tirx.StorageRewrite":
                seen["func"] = mod["main"]

    with tvm.transform.PassContext(opt_level=3, instruments=[Capture()],
                                   disabled_pass=_KERNEL_SKIPPED_PASSES):
        tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    return seen["func"]


def stores_outside_parallel_loops(func):
    """Names of the buffers stored to inside the parallel launch but in no parallel loop."""
    found = []

    def visit(node, in_launch, in_parallel):
        if isinstance(node, tirx.AttrStmt) and node.attr_key == "pragma_parallel_launch_point":
            in_launch = True
        elif isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL:
            in_parallel = True
        elif isinstance(node, tirx.BufferStore) and in_launch and not in_parallel:
            found.append(node.buffer.name)
        if isinstance(node, tirx.SeqStmt):
            children = list(node.seq)
        elif isinstance(node, tirx.IfThenElse):
            children = [node.then_case] + ([node.else_case] if node.else_case is not None else [])
        else:
            body = getattr(node, "body", None)
            children = [body] if isinstance(body, tirx.Stmt) else []
        for child in children:
            visit(child, in_launch, in_parallel)

    visit(func.body, False, False)
    return sorted(set(found))


# Hidden size 15: 60 gate rows or fewer, one task of the input projection (a loop the
# simplifier would remove); 40: two tasks for LSTM and GRU, one for RNN.
@pytest.mark.parametrize("op,hidden,direction,predictor", [
    ("LSTM", 15, "forward", None),
    ("LSTM", 15, "forward", "bnn"),
    ("LSTM", 15, "forward", "delta"),
    ("GRU", 15, "bidirectional", "delta-projected"),
    ("LSTM", 15, "forward", "oracle"),
    ("GRU", 15, "forward", None),
    ("GRU", 40, "bidirectional", "bnn"),
    ("RNN", 40, "reverse", None),
])
def test_no_store_inside_the_launch_is_outside_a_parallel_loop(op, hidden, direction, predictor,
                                                               monkeypatch):
    if predictor == "delta-projected":
        # The input parts from the projection of x's transmitted copies (large layers).
        import memotvm.predictors.delta as predictors

        monkeypatch.setattr(predictors, "DELTA_COLUMN_BYTES", 0)
        predictor = "delta"
    model = make_recurrent_model(op, 19, hidden, direction=direction,
                                 attrs={"linear_before_reset": 0} if op == "GRU" else None)
    loop = from_onnx(model).loops[0]
    plan = MemoPlan(predictor, (0.3,) * loop.num_directions) if predictor else None
    assert stores_outside_parallel_loops(lowered(build_kernel(loop, plan))) == []


# Batches around the blocks of two elements (one block, a repeated last element,
# several blocks); hidden 40 (one unit block), 100 (two, R of 160 KB: still streams);
# input 60 > hidden 40 (a single chain keeps its projection's tasks in parallel).
@pytest.mark.parametrize("op,input_size,hidden,direction,batches", [
    ("LSTM", 24, 40, "forward", (1, 2, 3, 8)),
    ("GRU", 24, 40, "reverse", (2, 5)),
    ("RNN", 24, 40, "bidirectional", (1, 3)),
    ("LSTM", 60, 40, "forward", (1, 3)),
    ("GRU", 24, 100, "forward", (1, 2, 5)),
])
def test_streams_give_the_step_by_step_kernels_bits(op, input_size, hidden, direction, batches):
    """Where the unmodified and memoized kernels run their chains as independent
    streams (each worker all the steps of its blocks of elements, no barrier per
    step), their results are those of the oracle at threshold 0, which keeps the
    step-by-step tasks, bit for bit (and the unmodified kernel's are onnxruntime's);
    on every worker of the pool."""
    attrs = {"linear_before_reset": 0} if op == "GRU" else None
    model = make_recurrent_model(op, input_size, hidden, direction=direction, sequence_lens=True,
                                 initial_h=True, attrs=attrs, seed=hidden)
    loop = from_onnx(model).loops[0]
    thresholds = (0.0,) * loop.num_directions
    assert KernelBuilder(loop).has_streams and KernelBuilder(loop, MemoPlan("bnn", thresholds)).has_streams
    assert not KernelBuilder(loop, MemoPlan("oracle", thresholds)).has_streams
    plain = memotvm.compile(model, adaptive_threads=False)
    memoized = memotvm.compile(model, memo=MemoConfig(threshold=0.0), adaptive_threads=False)
    stepwise = memotvm.compile(model, memo=MemoConfig(threshold=0.0, predictor="oracle"),
                               adaptive_threads=False)
    for batch in batches:
        feeds = make_inputs(model, 11, batch, seed=batch)
        got = plain.run(feeds)
        assert_outputs_close(got, run_onnxruntime(model, feeds), atol=1e-5)
        want = stepwise.run(feeds)
        for outputs in (got, memoized.run(feeds)):
            for a, b in zip(outputs, want):
                np.testing.assert_array_equal(a, b)


def test_streams_only_where_each_worker_can_keep_r_in_its_cache():
    """A stream reads all of R every step: layers whose R exceeds STREAM_WEIGHT_BYTES
    (LSTM 256: 1 MiB) keep the tasks that split it by unit blocks."""
    small, large = (from_onnx(make_recurrent_model("LSTM", 8, h)).loops[0] for h in (128, 256))
    assert KernelBuilder(small).has_streams and not KernelBuilder(large).has_streams
    assert 4 * 128 * 128 * 4 <= STREAM_WEIGHT_BYTES < 4 * 256 * 256 * 4


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_repeated_calls_of_a_one_task_layer_agree(op):
    """The layer whose projection once ran on both workers at once (wrong in 1-20 % of
    calls): 300 calls, each equal to the first and to onnxruntime.  On every worker of
    the pool: adaptive threads would move so small a layer to one thread."""
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    model = make_recurrent_model(op, 19, 15, attrs=attrs, seed=814)
    feeds = make_inputs(model, 1, 3, seed=814)
    compiled = memotvm.compile(model, adaptive_threads=False)
    first = compiled.run(feeds)
    assert_outputs_close(first, run_onnxruntime(model, feeds), atol=1e-5)
    for _ in range(300):
        for got, want in zip(compiled.run(feeds), first):
            np.testing.assert_array_equal(got, want)


def test_adaptive_threads_fall_back_to_one_thread_while_it_is_faster():
    from memotvm.threads import AdaptiveThreads

    now = [0.0]
    chooser = AdaptiveThreads(2, clock=lambda: now[0])
    cost = {2: 1.0, 1: 1.6}  # an idle machine: two threads faster
    picks = []
    for call in range(600):
        now[0] += 0.05  # (a call every 50 ms: the threads are tried again after 2 s)
        if call == 200:
            cost = {2: 5.0, 1: 1.7}  # another process busy: the barriers wait
        if call == 400:
            cost = {2: 1.0, 1: 1.6}
        n = chooser.pick()
        spike = 6.0 if call % 17 == 0 else 1.0  # now and then one slow call
        # The first call on threads that slept wakes them: three times as slow.
        waking = 3.0 if n == 2 and picks and picks[-1] == 1 else 1.0
        picks.append(n)
        chooser.record(n, cost[n] * spike * waking, 10)
    idle, busy, again = picks[100:200], picks[220:400], picks[470:]
    assert idle.count(1) <= 8 and busy.count(2) <= 8 and again.count(1) <= 8
    assert 1 in picks[200:220] and 2 in picks[400:470]  # switched within one probe interval
    # While one thread is the choice, the threads are tried (two calls) no more than
    # once in 2 s.
    tries = [i for i in range(220, 400) if picks[i] == 2 and picks[i - 1] == 1]
    assert tries and all(picks[i + 1] == 2 for i in tries)
    assert all(b - a >= 40 for a, b in zip(tries, tries[1:]))
    fixed = AdaptiveThreads(2, adaptive=False)
    assert {fixed.pick() for _ in range(50)} == {2}


def test_a_model_can_keep_its_thread_count():
    model = make_recurrent_model("GRU", 8, 8)
    compiled = memotvm.compile(model, threads=2, adaptive_threads=False)
    compiled.run(make_inputs(model, 3, 1))
    chooser = compiled._threads_chooser()
    assert not chooser.adaptive and chooser.pick() == 2
    assert memotvm.compile(model, threads=2)._threads_chooser().adaptive

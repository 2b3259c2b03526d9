"""ONNX Loop compiled as a recursive function (memotvm/frontend/loops.py), checked
against onnxruntime: trip counts and conditions, scan outputs, loop-carried values that
grow, bodies that read outer values, Ifs, loops and recurrent nodes inside bodies, and
the bound on iterations."""

import concurrent.futures
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import memotvm
from memotvm.errors import NothingToMemoizeWarning
from memotvm.frontend import from_onnx
from memotvm.frontend.loops import MAX_ITERATIONS, UNROLL

onnxruntime = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((8, 8)) * 0.5).astype(np.float32)
U = RNG.standard_normal((8, 5)).astype(np.float32)
EOS = 3


def _info(name, elem, dims):
    return helper.make_tensor_value_info(name, elem, dims)


def decoder(trip=True, cond=True, stop_at_eos=True, scan=True, grow=False, body_if=False):
    """A greedy decoder: h = tanh(h W + x) (x read from the enclosing graph, W carried
    unchanged as Paddle2ONNX carries weights), its token argmax(h U) appended to a
    growing sequence, its logits plus the iteration number stacked as a scan output,
    and the loop stopped at the end token."""
    nodes = [
        helper.make_node("MatMul", ["h_in", "w_in"], ["hw"]),
        helper.make_node("Add", ["hw", "x"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "U"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["token"], axis=1, keepdims=0),
        helper.make_node("Cast", ["iteration"], ["iteration_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["logits", "iteration_f"], ["scan_value"]),
    ]
    if stop_at_eos:
        nodes += [helper.make_node("Constant", [], ["eos"], value=numpy_helper.from_array(np.array([EOS], np.int64))),
                  helper.make_node("Equal", ["token", "eos"], ["at_eos"]),
                  helper.make_node("Not", ["at_eos"], ["going"]),
                  helper.make_node("Squeeze", ["going"], ["cond_out"])]
    else:
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    if body_if:  # the first iteration's scan value doubled, in an If on the iteration number
        zero = numpy_helper.from_array(np.array(0, np.int64))
        then = helper.make_graph([helper.make_node("Add", ["scan_value", "scan_value"], ["doubled"])], "then",
                                 [], [_info("doubled", TensorProto.FLOAT, [1, 5])])
        other = helper.make_graph([helper.make_node("Identity", ["scan_value"], ["same"])], "else",
                                  [], [_info("same", TensorProto.FLOAT, [1, 5])])
        nodes += [helper.make_node("Constant", [], ["zero"], value=zero),
                  helper.make_node("Equal", ["iteration", "zero"], ["first"]),
                  helper.make_node("If", ["first"], ["scan_final"], then_branch=then, else_branch=other)]
    scanned = "scan_final" if body_if else "scan_value"
    inputs = [_info("iteration", TensorProto.INT64, []), _info("cond_in", TensorProto.BOOL, []),
              _info("h_in", TensorProto.FLOAT, [1, 8]), _info("w_in", TensorProto.FLOAT, [8, 8])]
    outputs = [_info("cond_out", TensorProto.BOOL, []), _info("h_out", TensorProto.FLOAT, [1, 8]),
               _info("w_in", TensorProto.FLOAT, [8, 8])]
    if grow:
        nodes.append(helper.make_node("Concat", ["tokens_in", "token"], ["tokens_out"], axis=0))
        inputs.append(_info("tokens_in", TensorProto.INT64, ["n"]))
        outputs.append(_info("tokens_out", TensorProto.INT64, ["m"]))
    if scan:
        outputs.append(_info(scanned, TensorProto.FLOAT, [1, 5]))
    body = helper.make_graph(nodes, "body", inputs, outputs, initializer=[numpy_helper.from_array(U, "U")])
    loop_inputs = ["M" if trip else "", "cond0" if cond else "", "h0", "W"] + (["tokens0"] if grow else [])
    loop_outputs = ["h_final", "W_final"] + (["tokens"] if grow else []) + (["scans"] if scan else [])
    graph_inputs = [_info("x", TensorProto.FLOAT, [1, 8]), _info("h0", TensorProto.FLOAT, [1, 8])]
    graph_inputs += [_info("M", TensorProto.INT64, [])] if trip else []
    graph_inputs += [_info("cond0", TensorProto.BOOL, [])] if cond else []
    initializers = [numpy_helper.from_array(W, "W")]
    initializers += [numpy_helper.from_array(np.zeros((0,), np.int64), "tokens0")] if grow else []
    graph_outputs = [_info("h_final", TensorProto.FLOAT, [1, 8])]
    graph_outputs += [_info("tokens", TensorProto.INT64, ["k"])] if grow else []
    graph_outputs += [_info("scans", TensorProto.FLOAT, ["t", 1, 5])] if scan else []
    graph = helper.make_graph([helper.make_node("Loop", loop_inputs, loop_outputs, name="decoder", body=body)],
                              "g", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model, seed, trips=None, cond=True):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((1, 8)).astype(np.float32),
             "h0": rng.standard_normal((1, 8)).astype(np.float32)}
    names = {i.name for i in model.graph.input}
    if "M" in names:
        feeds["M"] = np.array(trips, np.int64)
    if "cond0" in names:
        feeds["cond0"] = np.array(cond)
    return feeds


def _check(model, compiled, feeds):
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = compiled.run(feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert e.shape == g.shape and e.dtype == g.dtype
        # float32 matrix products in another summation order, over up to 40 steps of a
        # contracting recurrence (tanh): a few ulp of values up to 45.
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=2e-6)
    return got


@pytest.mark.parametrize("options", [
    dict(),
    dict(stop_at_eos=False),
    dict(grow=True),
    dict(cond=False, stop_at_eos=False, body_if=True),
])
def test_a_loop_gives_what_onnxruntime_gives(options):
    """Trip counts of 0, 1, one call's unrolled iterations and more, with and without
    the end token stopping the loop (the seeds include runs that stop early)."""
    model = decoder(**options)
    compiled = memotvm.compile(model)
    stopped_early = False
    for seed, trips in enumerate([0, 1, UNROLL - 1, UNROLL, UNROLL + 1, 3 * UNROLL + 2, 40]):
        got = _check(model, compiled, _feeds(model, seed, trips))
        if "scans" in [o.name for o in model.graph.output]:
            stopped_early |= got[-1].shape[0] < trips
    if options.get("stop_at_eos", True):
        assert stopped_early


def test_a_loop_without_trip_count_runs_until_its_condition_fails():
    """Seeds whose decoding reaches the end token after 1, 2 and 10 steps; one that
    never does stops at the bound with an error (onnxruntime runs it forever)."""
    model = decoder(trip=False)
    compiled = memotvm.compile(model)
    lengths = [_check(model, compiled, _feeds(model, seed))[-1].shape[0] for seed in (0, 7, 8)]
    assert lengths == [1, 2, 10]
    _check(model, compiled, _feeds(model, 0, cond=False))  # (no iteration)
    with pytest.raises(memotvm.InputError, match="would run more than"):
        compiled.run(_feeds(model, 1))


def test_weights_a_loop_carries_unchanged_are_constants_of_its_body():
    """Paddle2ONNX carries every weight of a decoder through its Loop: the body reads
    the initial value (here a constant) instead of a parameter."""
    mod = from_onnx(decoder()).mod
    body = next(f for gv, f in mod.functions.items() if gv.name_hint == "decoder_body")
    shapes = [[int(d) for d in p.ty.shape.values] for p in body.params]
    assert [8, 8] not in shapes  # iteration, condition, h and x only
    assert len(body.params) == 4


def test_a_loop_past_its_bound_stops_with_an_input_error():
    """Each call of the loop function takes C stack of the calling thread, so the
    iterations are bounded; the bound itself runs."""
    model = decoder(stop_at_eos=False, scan=False)
    compiled = memotvm.compile(model)
    feeds = _feeds(model, 0, MAX_ITERATIONS)
    _check(model, compiled, feeds)
    with pytest.raises(memotvm.InputError, match=r"node 'decoder' \(Loop\) would run more than 8192 iterations"):
        compiled.run({**feeds, "M": np.array(MAX_ITERATIONS + 1, np.int64)})
    _check(model, compiled, _feeds(model, 1, 5))  # (the model still runs after the error)


def test_a_loop_runs_from_several_threads():
    model = decoder()
    compiled = memotvm.compile(model)
    feeds = [_feeds(model, seed, trips) for seed, trips in enumerate([3, 17, 0, 40, 9, 25])]
    expected = [compiled.run(f) for f in feeds]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for got, want in zip(pool.map(compiled.run, feeds * 3), expected * 3):
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


def _loop_over_rows():
    """A Loop over the rows of a run-time input: each iteration slices row i (a size
    TVM knows only when it runs), adds it and 0.5 expanded to its shape to a running
    sum, and emits the sum doubled twice by a nested Loop.  The trip count is the
    input's row count."""
    inner_body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "inner",
        [_info("j", TensorProto.INT64, []), _info("c_in", TensorProto.BOOL, []),
         _info("v_in", TensorProto.FLOAT, [1, 3])],
        [_info("c_out", TensorProto.BOOL, []), _info("v_out", TensorProto.FLOAT, [1, 3])])
    two = numpy_helper.from_array(np.array(2, np.int64), "two")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    axes = numpy_helper.from_array(np.array([0], np.int64), "zero_axis")
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["i", "zero_axis"], ["start"]),
         helper.make_node("Add", ["start", "one"], ["end"]),
         helper.make_node("Slice", ["rows", "start", "end", "zero_axis"], ["row"]),
         helper.make_node("Shape", ["row"], ["row_shape"]),
         helper.make_node("Expand", ["half", "row_shape"], ["halves"]),
         helper.make_node("Add", ["row", "halves"], ["row_plus"]),
         helper.make_node("Add", ["sum_in", "row_plus"], ["sum_out"]),
         helper.make_node("Loop", ["two", "", "sum_out"], ["doubled"], body=inner_body, name="inner"),
         helper.make_node("Identity", ["c"], ["c_next"])], "body",
        [_info("i", TensorProto.INT64, []), _info("c", TensorProto.BOOL, []),
         _info("sum_in", TensorProto.FLOAT, [1, 3])],
        [_info("c_next", TensorProto.BOOL, []), _info("sum_out", TensorProto.FLOAT, [1, 3]),
         _info("doubled", TensorProto.FLOAT, [1, 3])],
        initializer=[two, one, axes, numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    nodes = [helper.make_node("Shape", ["rows"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["count"], axis=0),
             helper.make_node("Loop", ["count", "", "sum0"], ["total", "doubles"], body=body, name="rows_loop")]
    graph = helper.make_graph(
        nodes, "g", [_info("rows", TensorProto.FLOAT, ["n", 3])],
        [_info("total", TensorProto.FLOAT, [1, 3]), _info("doubles", TensorProto.FLOAT, ["n", 1, 3])],
        [numpy_helper.from_array(np.zeros((1, 3), np.float32), "sum0"),
         numpy_helper.from_array(np.array(0, np.int64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_loop_over_a_run_time_size_with_a_loop_inside():
    model = _loop_over_rows()
    compiled = memotvm.compile(model)
    for n in (1, 5, 19):
        _check(model, compiled, {"rows": RNG.standard_normal((n, 3)).astype(np.float32)})


def test_memoization_asked_of_a_decoder_loop_warns_that_it_has_no_recurrent_node():
    with pytest.warns(NothingToMemoizeWarning, match=r"no LSTM, GRU or RNN node.*Loop"):
        compiled = memotvm.compile(decoder(), memo=0.2)
    model = decoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(model, compiled, _feeds(model, 2, 12))


def stepped_cell(op, seq_lens=False, hidden=6, inputs=4, every_other=False):
    """A decoder that steps a recurrent node once per iteration: x [batch, D] becomes a
    sequence of one step, the node runs it from the carried state (h, and c for an
    LSTM), and h projected back is the next x (stacked as a scan output).  With
    ``seq_lens``, the node reads a graph input as its sequence_lens; with
    ``every_other`` (GRU or RNN), it runs in an If's branch on even iterations only,
    the other branch passing h on unchanged."""
    rng = np.random.default_rng(len(op) + 10 * seq_lens)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    weights = {"W": rng.standard_normal((1, gates * hidden, inputs)) * 0.4,
               "R": rng.standard_normal((1, gates * hidden, hidden)) * 0.4,
               "B": rng.standard_normal((1, 2 * gates * hidden)) * 0.1,
               "P": rng.standard_normal((hidden, inputs)) * 0.3}
    states = ["h", "c"] if op == "LSTM" else ["h"]
    cell = [helper.make_node(op, ["step", "W", "R", "B", "lens" if seq_lens else ""]
                             + [f"{s}_in" for s in states], ["Y"] + [f"{s}_out" for s in states],
                             hidden_size=hidden, name="cell")]
    if every_other:
        assert op != "LSTM"
        cell[0].output[:] = ["", "h_cell"]
        then = helper.make_graph(cell, "then", [], [_info("h_cell", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Identity", ["h_in"], ["h_kept"])], "else", [],
                                  [_info("h_kept", TensorProto.FLOAT, None)])
        cell = [helper.make_node("Mod", ["i", "two"], ["parity"]),
                helper.make_node("Equal", ["parity", "zero"], ["even"]),
                helper.make_node("If", ["even"], ["h_out"], then_branch=then, else_branch=other)]
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x_in", "first_axis"], ["step"]), *cell,
         helper.make_node("Squeeze", ["h_out", "first_axis"], ["h_flat"]),
         helper.make_node("MatMul", ["h_flat", "P"], ["x_out"]),
         helper.make_node("Identity", ["x_out"], ["x_scan"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [_info("i", TensorProto.INT64, []), _info("cond_in", TensorProto.BOOL, []),
         _info("x_in", TensorProto.FLOAT, ["batch", inputs])]
        + [_info(f"{s}_in", TensorProto.FLOAT, [1, "batch", hidden]) for s in states],
        [_info("cond_out", TensorProto.BOOL, []), _info("x_out", TensorProto.FLOAT, ["batch", inputs])]
        + [_info(f"{s}_out", TensorProto.FLOAT, [1, "batch", hidden]) for s in states]
        + [_info("x_scan", TensorProto.FLOAT, ["batch", inputs])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "x0"] + [f"{s}0" for s in states],
                          ["x_last"] + [f"{s}_last" for s in states] + ["xs"], body=body, name="decode")],
        "g", [_info("M", TensorProto.INT64, []), _info("x0", TensorProto.FLOAT, ["batch", inputs])]
        + [_info(f"{s}0", TensorProto.FLOAT, [1, "batch", hidden]) for s in states]
        + ([_info("lens", TensorProto.INT32, ["batch"])] if seq_lens else []),
        [_info("h_last", TensorProto.FLOAT, None), _info("xs", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        + [numpy_helper.from_array(np.array([0], np.int64), "first_axis"),
           numpy_helper.from_array(np.array(2, np.int64), "two"),
           numpy_helper.from_array(np.array(0, np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cell_feeds(model, seed, trips, batch=3):
    rng = np.random.default_rng(seed)
    feeds = {"M": np.array(trips, np.int64)}
    for value in model.graph.input[1:]:
        dims = [batch if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = (np.ones(dims, np.int32) if value.name == "lens"
                             else rng.standard_normal(dims).astype(np.float32))
    return feeds


@pytest.mark.parametrize("op,options", [
    pytest.param("LSTM", {}, id="LSTM"), pytest.param("GRU", {}, id="GRU", marks=pytest.mark.slow),
    pytest.param("RNN", {}, id="RNN", marks=pytest.mark.slow),
    pytest.param("GRU", {"every_other": True}, id="GRU-in-an-If")])
def test_a_loop_that_steps_a_recurrent_node_gives_what_onnxruntime_gives(op, options):
    """The node's kernel runs once per iteration, inside the body's function: trip
    counts of 0, 1 and across several calls of the loop function, batches of 1 and 3;
    and in an If of the body (its final state typed as the carried one it started
    from, which the other branch passes on)."""
    model = stepped_cell(op, **options)
    compiled = memotvm.compile(model)
    assert not compiled.loops  # (a body's kernel is not one of the memoizable layers)
    for seed, (trips, batch) in enumerate([(0, 3), (1, 1), (UNROLL + 3, 3), (30, 2)]):
        _check(model, compiled, _cell_feeds(model, seed, trips, batch))


def test_memoization_asked_of_a_loop_that_steps_a_recurrent_node_warns_and_compiles_it_unmodified():
    """Each iteration's call of the node is a sequence of one step whose memo table
    starts empty (docs/spec.md): nothing could be reused, and the user is told so."""
    model = stepped_cell("LSTM")
    with pytest.warns(NothingToMemoizeWarning, match=r"node\(s\) 'cell' run in the body of a Loop"):
        compiled = memotvm.compile(model, memo=0.5)
    with pytest.warns(UserWarning, match=r"reduced precision requested, but node\(s\) 'cell'"):
        memotvm.compile(model, precision="int8")
    feeds = _cell_feeds(model, 4, 9)
    _check(model, compiled, feeds)
    assert compiled.last_stats.per_gate == {}  # (no memoizable layer to count)


def test_a_stepped_node_with_sequence_lens_out_of_range_stops_with_an_input_error():
    model = stepped_cell("GRU", seq_lens=True)
    compiled = memotvm.compile(model)
    feeds = _cell_feeds(model, 5, 4)
    _check(model, compiled, feeds)
    feeds["lens"][1] = 2  # a sequence of one step
    with pytest.raises(memotvm.InputError, match=r"GRU node 'cell' \(in a Loop's body\): a "
                                                 r"sequence_lens is outside \[0, seq_length\]"):
        compiled.run(feeds)


def _collecting_loop(concats, read_inside=False):
    """A Loop that appends h [2, 3] (h = tanh(h W) + i) to a sequence each iteration,
    then ``concats`` ((axis, new_axis) of a ConcatFromSequence each) of the final
    sequence; with ``read_inside``, the body also reads the sequence's length."""
    w = (RNG.standard_normal((3, 3)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["h_in", "w"], ["hw"]), helper.make_node("Tanh", ["hw"], ["t"]),
             helper.make_node("Cast", ["i"], ["i_f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["t", "i_f"], ["h_out"]),
             helper.make_node("SequenceInsert", ["seq_in", "h_out"], ["seq_out"]),
             helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    outputs = [_info("cond_out", TensorProto.BOOL, []), _info("h_out", TensorProto.FLOAT, [2, 3]),
               helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, [2, 3])]
    if read_inside:
        nodes.append(helper.make_node("SequenceLength", ["seq_in"], ["length"]))
        outputs.append(_info("length", TensorProto.INT64, []))
    body = helper.make_graph(nodes, "body", [
        _info("i", TensorProto.INT64, []), _info("cond_in", TensorProto.BOOL, []),
        _info("h_in", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, [2, 3])], outputs,
        [numpy_helper.from_array(w, "w")])
    loop_outputs = ["h", "seq"] + (["lengths"] if read_inside else [])
    graph = helper.make_graph(
        [helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
         helper.make_node("Loop", ["M", "", "h0", "empty"], loop_outputs, body=body, name="collect")]
        + [helper.make_node("ConcatFromSequence", ["seq"], [f"out{k}"], axis=axis, new_axis=new_axis)
           for k, (axis, new_axis) in enumerate(concats)],
        "g", [_info("M", TensorProto.INT64, []), _info("h0", TensorProto.FLOAT, [2, 3])],
        [_info("h", TensorProto.FLOAT, [2, 3])] + [_info(f"out{k}", TensorProto.FLOAT, None)
                                                  for k in range(len(concats))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_sequence_a_loop_appends_to_is_stacked_and_concatenated_as_onnxruntime_does():
    """torch's list.append in a scripted loop: SequenceEmpty, SequenceInsert in the body,
    ConcatFromSequence after it, compiled as a scan output moved (stack) or merged
    (concatenation) to every axis, negative axes included."""
    concats = [(0, 1), (1, 1), (2, 1), (-1, 1), (0, 0), (1, 0), (-1, 0), (-2, 0)]
    model = _collecting_loop(concats)
    compiled = memotvm.compile(model)
    for trips in (1, 2, UNROLL + 3):
        feeds = {"M": np.array(trips, np.int64), "h0": RNG.standard_normal((2, 3)).astype(np.float32)}
        got = _check(model, compiled, feeds)
        assert [g.shape for g in got[1:5]] == [(trips, 2, 3), (2, trips, 3), (2, 3, trips), (2, 3, trips)]


def test_a_sequence_read_inside_its_loop_is_refused_by_name():
    with pytest.raises(memotvm.UnsupportedModelError,
                       match=r"node 'seq_out' \(SequenceInsert\) in the body of Loop 'collect': ONNX "
                             r"sequences in a loop are supported only as a list the loop appends"):
        memotvm.compile(_collecting_loop([(0, 1)], read_inside=True))


def test_a_loop_whose_carried_value_changes_rank_is_refused_by_name():
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["v", "zero_axis"], ["v_out"]),
         helper.make_node("Identity", ["c"], ["c_out"])], "body",
        [_info("i", TensorProto.INT64, []), _info("c", TensorProto.BOOL, []), _info("v", TensorProto.FLOAT, None)],
        [_info("c_out", TensorProto.BOOL, []), _info("v_out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "zero_axis")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "x"], ["y"], body=body, name="growing")], "g",
        [_info("x", TensorProto.FLOAT, [2])], [_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(2, np.int64), "M")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(memotvm.UnsupportedModelError,
                       match=r"node 'growing' \(Loop\): loop-carried value 'v' enters the body as a float32 "
                             r"tensor of shape \[2\] and leaves it as a float32 tensor of shape \[1, 2\]"):
        memotvm.compile(model)


def _scan(reverse_in=0, reverse_out=0, in_axis=0, out_axis=0):
    """A Scan (opset 16) carrying a running sum and a step count over the rows of x (or
    its columns, in_axis=1) and, reversed where asked, of y (its length declared apart:
    ONNX requires the two to be equal); it emits the running sum times y's slice,
    stacked along out_axis and reversed where asked."""
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
         helper.make_node("Add", ["count_in", "one"], ["count_out"]),
         helper.make_node("Mul", ["sum_out", "y_t"], ["product"])], "body",
        [_info("sum_in", TensorProto.FLOAT, [3]), _info("count_in", TensorProto.FLOAT, []),
         _info("x_t", TensorProto.FLOAT, [3]), _info("y_t", TensorProto.FLOAT, [3])],
        [_info("sum_out", TensorProto.FLOAT, [3]), _info("count_out", TensorProto.FLOAT, []),
         _info("product", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    scan = helper.make_node("Scan", ["sum0", "count0", "x", "y"], ["total", "count", "products"], name="scanner",
                            body=body, num_scan_inputs=2, scan_input_axes=[in_axis, 0],
                            scan_input_directions=[0, reverse_in], scan_output_axes=[out_axis],
                            scan_output_directions=[reverse_out])
    x_shape = ["n", 3] if in_axis == 0 else [3, "n"]
    graph = helper.make_graph(
        [scan], "g", [_info("x", TensorProto.FLOAT, x_shape), _info("y", TensorProto.FLOAT, ["m", 3])],
        [_info("total", TensorProto.FLOAT, [3]), _info("count", TensorProto.FLOAT, []),
         _info("products", TensorProto.FLOAT, ["n", 3] if out_axis == 0 else [3, "n"])],
        [numpy_helper.from_array(np.zeros(3, np.float32), "sum0"),
         numpy_helper.from_array(np.array(0.0, np.float32), "count0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("reverse_in,reverse_out,in_axis,out_axis",
                         [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 1), (1, 1, 1, -1)])
def test_a_scan_gives_what_onnxruntime_gives(reverse_in, reverse_out, in_axis, out_axis):
    """A Scan runs as the Loop it is rewritten into (memotvm/frontend/scan.py), its
    directions and axes included; scan inputs of different lengths are refused when
    the model runs, as onnxruntime refuses them."""
    model = _scan(reverse_in, reverse_out, in_axis, out_axis)
    compiled = memotvm.compile(model)
    for n in (1, 4, 11):
        x = RNG.standard_normal((n, 3) if in_axis == 0 else (3, n)).astype(np.float32)
        _check(model, compiled, {"x": x, "y": RNG.standard_normal((n, 3)).astype(np.float32)})
    x = RNG.standard_normal((5, 3) if in_axis == 0 else (3, 5)).astype(np.float32)
    for m in (4, 6):
        with pytest.raises(memotvm.InputError, match=r"reshape: cannot reshape input 0 of shape \(\d,\) to \(5,\)"):
            compiled.run({"x": x, "y": np.ones((m, 3), np.float32)})

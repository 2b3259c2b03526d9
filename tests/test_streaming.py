"""Streaming sessions (docs/spec.md, "Streaming sessions"): memo tables that live across
calls.

The central property: on a graph where chunk by chunk computes what one call over the
whole sequence computes (a recurrent layer whose state is passed out and back in), a
session gives bit-identical outputs and the same counts as the whole call, for every
predictor and for delta execution, on the CPU and the accelerator target.
"""

import os
import threading

import numpy as np
import onnxruntime as ort
import pytest

import memotvm
from memotvm.errors import ConfigError, InputError
from memotvm.testing import make_recurrent_model

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")
CHUNKS = (1, 3, 7)


def stateful_layer(op, D=10, H=24, direction="forward"):
    """One recurrent node whose initial state is an input (initial_h, initial_c) and
    whose last state is an output (Y_h, Y_c)."""
    return make_recurrent_model(op, D, H, weight_scale=1.0, direction=direction,
                                initial_h=True, initial_c=op == "LSTM", seed=3)


def smooth(T, batch, D, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.3, (T, batch, D)), axis=0).astype(np.float32)


def state_of(op):
    return {"initial_h": "Y_h", **({"initial_c": "Y_c"} if op == "LSTM" else {})}


def whole_call(model, op, x, nd=1):
    H = model.input_types["initial_h"][0][2]
    zeros = np.zeros((nd, x.shape[1], H), np.float32)
    feeds = {"X": x, "initial_h": zeros, **({"initial_c": zeros} if op == "LSTM" else {})}
    outputs = model.run(feeds)
    return outputs, model.last_stats


def chunked(session, x, chunk):
    return [session.run({"X": x[t:t + chunk]}) for t in range(0, len(x), chunk)]


@pytest.mark.parametrize("op,predictor,threshold", [
    ("LSTM", "bnn", 0.3), ("GRU", "delta", 0.1), ("RNN", "exactinput:4", 0.3),
    pytest.param("GRU", "lowrank:3", 0.3, marks=pytest.mark.slow),
    pytest.param("LSTM", "oracle", 0.3, marks=pytest.mark.slow),
    pytest.param("RNN", "delta", 0.1, marks=pytest.mark.slow),
])
def test_session_chunks_equal_one_call_over_the_sequence(op, predictor, threshold):
    model = memotvm.compile(stateful_layer(op), memo={"predictor": predictor, "threshold": threshold})
    x = smooth(23, 2, 10)
    whole, stats = whole_call(model, op, x)
    assert 0 < stats.reuse < 1
    for chunk in CHUNKS:
        session = model.session(state=state_of(op))
        outs = chunked(session, x, chunk)
        np.testing.assert_array_equal(np.concatenate([o[0] for o in outs]), whole[0])
        np.testing.assert_array_equal(outs[-1][1], whole[1])
        assert session.stats.per_gate == stats.per_gate
        assert session.calls == -(-len(x) // chunk)


def test_without_a_session_every_call_starts_empty():
    """The motivation: chunk by chunk through run(), each chunk's first step computes
    everything; a session reuses from the first step of every chunk but the first."""
    model = memotvm.compile(stateful_layer("GRU"), memo=0.3)
    x = smooth(20, 1, 10)
    zeros = np.zeros((1, 1, 24), np.float32)
    session = model.session(state={"initial_h": "Y_h"})
    h = zeros
    for t in range(0, 20, 1):
        y = model.run({"X": x[t:t + 1], "initial_h": h})
        assert model.last_stats.reuse == 0
        h = y[1]
        session.run({"X": x[t:t + 1]})
    assert session.stats.reuse > 0.2


def test_reset_and_interleaved_sessions():
    model = memotvm.compile(stateful_layer("LSTM"), memo=0.3)
    x, other = smooth(12, 2, 10, seed=1), smooth(12, 2, 10, seed=2)
    first, second = model.session(state=state_of("LSTM")), model.session(state=state_of("LSTM"))
    fresh = model.session(state=state_of("LSTM"))
    want = chunked(fresh, x, 3)
    # Interleaved with another stream: each keeps its own tables and state.
    got = []
    for t in range(0, 12, 3):
        got.append(first.run({"X": x[t:t + 3]}))
        second.run({"X": other[t:t + 3]})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a[0], b[0])
    assert first.stats.per_gate == fresh.stats.per_gate
    # reset: the same as a fresh session.
    first.reset()
    again = chunked(first, x, 3)
    for a, b in zip(again, want):
        np.testing.assert_array_equal(a[0], b[0])
    assert first.stats.per_gate == fresh.stats.per_gate


def test_bidirectional_reverse_direction_memoizes_within_each_call():
    """The forward direction continues its table; the reverse one starts empty at every
    call, so its first step of each chunk computes everything."""
    model = memotvm.compile(stateful_layer("GRU", direction="bidirectional"), memo=0.3)
    x = smooth(12, 1, 10)
    session = model.session(state={"initial_h": "Y_h"})
    outs = chunked(session, x, 4)
    whole, stats = whole_call(model, "GRU", x, nd=2)
    forward = ("rnn", "forward")
    np.testing.assert_array_equal(np.concatenate([o[0] for o in outs])[:, 0], whole[0][:, 0])
    per_direction = session.stats.per_direction
    assert per_direction[forward] == stats.per_direction[forward]
    assert session.within_call_only == [("rnn", "reverse")]


def test_accelerator_session_matches_the_cpu_and_charges_the_table():
    x = smooth(12, 2, 10)
    results = {}
    for target in ("cpu", "epur"):
        model = memotvm.compile(stateful_layer("GRU"), memo=0.3, target=target)
        session = model.session(state={"initial_h": "Y_h"})
        outs = chunked(session, x, 4)
        results[target] = (np.concatenate([o[0] for o in outs]), session.stats.per_gate)
        if target == "epur":
            first = model.session(state={"initial_h": "Y_h"})
            first.run({"X": x[:4]})
            fresh_dram = model.last_cost.layers[0].dram_bytes
            first.run({"X": x[4:8]})  # restores two chains' tables
            assert model.last_cost.layers[0].dram_bytes > fresh_dram
    np.testing.assert_allclose(results["epur"][0], results["cpu"][0], atol=1e-5)
    assert results["epur"][1] == results["cpu"][1]


def test_session_is_one_stream_per_thread():
    model = memotvm.compile(stateful_layer("RNN"), memo=0.3)
    session = model.session(state={"initial_h": "Y_h"})
    session.run({"X": smooth(3, 1, 10)})
    errors = []

    def other_thread():
        try:
            session.run({"X": smooth(3, 1, 10)})
        except InputError as err:
            errors.append(str(err))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors and "another thread" in errors[0]


def test_batch_change_within_a_session_is_refused():
    model = memotvm.compile(stateful_layer("RNN"), memo=0.3)
    session = model.session(state={"initial_h": "Y_h"})
    session.run({"X": smooth(3, 2, 10)})
    with pytest.raises(InputError, match="batch size changed within the session"):
        session.run({"X": smooth(3, 1, 10), "initial_h": np.zeros((1, 1, 24), np.float32)})


@pytest.mark.parametrize("carry", ["Identity", "Reshape"])
def test_a_state_that_is_an_input_as_it_is_survives_the_next_call(carry):
    """A model that returns an input unchanged (or reshaped) as a state returns the very
    buffer a small input was copied into; the next call's input must not change the
    carried value."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Add", ["state", "x"], ["y"])]
    if carry == "Identity":
        nodes.append(helper.make_node("Identity", ["x"], ["state_out"]))
    else:
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["state_out"]))
    graph = helper.make_graph(
        nodes, "carry", [x, state],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 4])],
        initializer=[shape] if carry == "Reshape" else [])
    model = memotvm.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    session = model.session(state={"state": "state_out"})
    a, b, c = (np.full((1, 4), v, np.float32) for v in (1.0, 10.0, 100.0))
    np.testing.assert_array_equal(session.run({"x": a})[0], a)
    np.testing.assert_array_equal(session.run({"x": b})[0], a + b)
    np.testing.assert_array_equal(session.run({"x": c})[0], b + c)


def test_a_long_session_counts_every_call(monkeypatch):
    """A session keeps its calls' counts unread and sums them in batches; every call
    is counted, whatever the batches."""
    from memotvm.stats import KernelCounts

    monkeypatch.setattr(KernelCounts, "PENDING", 2)
    model = memotvm.compile(stateful_layer("GRU"), memo=0.3)
    x = smooth(11, 1, 10)
    whole, stats = whole_call(model, "GRU", x)
    session = model.session(state={"initial_h": "Y_h"})
    for t in range(11):
        session.run({"X": x[t:t + 1]})
        if t == 4:
            assert session.stats.total.total > 0  # read in the middle: the rest still counts
    assert session.stats.per_gate == stats.per_gate


def test_a_streams_repeated_calls_still_check_what_may_change():
    """After a checked call, a session repeats calls like it with only the values
    checked; any other call is checked in full.  Each kind of change in between gives
    the full check's answer, and the stream goes on as one sequence."""
    model = memotvm.compile(stateful_layer("GRU"), memo=0.3)
    x = smooth(9, 1, 10)
    want, _ = whole_call(model, "GRU", x)
    session = model.session(state={"initial_h": "Y_h"})
    got = [session.run({"X": x[t:t + 1]}) for t in range(2)]
    bad = x[2:3].copy()
    bad[0, 0, 3] = np.nan
    with pytest.raises(InputError, match="'X' contains NaN"):
        session.run({"X": bad})
    with pytest.raises(InputError, match="dtype float64"):
        session.run({"X": x[2:3].astype(np.float64)})
    with pytest.raises(InputError, match="unknown input"):
        session.run({"X": x[2:3], "Z": x[2:3]})
    strided = np.repeat(x[2:3], 2, axis=2)[:, :, ::2]
    assert not strided.flags.c_contiguous
    got.append(session.run({"X": strided}))  # a view: copied to C order
    got.append(session.run({"X": x[3:6]}))  # another length
    got += [session.run({"X": x[t:t + 1]}) for t in range(6, 9)]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), want[0])
    np.testing.assert_array_equal(got[-1][1], want[1])
    # A state passed explicitly overrides the carried one (unmemoized, so that no
    # memo table remembers the calls before: the same as a fresh start).
    plain = memotvm.compile(stateful_layer("GRU")).session(state={"initial_h": "Y_h"})
    first = [plain.run({"X": x[t:t + 1]}) for t in range(3)][0]
    again = plain.run({"X": x[:1], "initial_h": np.zeros((1, 1, 24), np.float32)})
    np.testing.assert_array_equal(again[0], first[0])


def test_a_stream_of_views_is_repeated_without_the_full_check(monkeypatch):
    """Chunks sliced from a recording along a later axis are views, not C-contiguous:
    after the first call they go the repeated call's way too (copied), with the
    results of contiguous chunks."""
    from memotvm.session import Session

    model = memotvm.compile(stateful_layer("GRU"), memo=0.3)
    x = smooth(9, 1, 10)
    by_time_last = np.ascontiguousarray(x.transpose(1, 2, 0))  # [batch, features, time]
    views = [by_time_last[:, :, t:t + 1].transpose(2, 0, 1) for t in range(9)]
    assert not views[0].flags.c_contiguous
    reference = model.session(state={"initial_h": "Y_h"})
    want = [reference.run({"X": x[t:t + 1]}) for t in range(9)]
    checked = []
    full_check = Session._run_checked
    monkeypatch.setattr(Session, "_run_checked",
                        lambda self, *args: checked.append(1) or full_check(self, *args))
    session = model.session(state={"initial_h": "Y_h"})
    got = [session.run({"X": v}) for v in views]
    assert len(checked) == 1
    for a, b in zip(got, want):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert session.stats.per_gate == reference.stats.per_gate


def test_state_pairs_found_by_name_or_refused_with_the_candidates():
    layer = memotvm.compile(stateful_layer("LSTM"))
    with pytest.raises(ConfigError, match="found no state input/output pair.*initial_h: Y_h, Y_c"):
        layer.session()
    with pytest.raises(ConfigError, match="state names output 'nope'"):
        layer.session(state={"initial_h": "nope"})
    with pytest.raises(ConfigError, match="state names input 'nope'"):
        layer.session(state={"nope": "Y_h"})
    assert layer.session(state={}).state_pairs == {}


def _one_state_tensor_lstm(signal_out, state_out, H=6):
    """tf2onnx's shape of DTLN's LSTM core: one state input [2, 1, H] split into h and c,
    the final h and c concatenated into one output, and a signal output of the signal
    input's shape."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)
               for name, shape in (("W", (1, 4 * H, H)), ("R", (1, 4 * H, H)))]
    nodes = [h.make_node("Split", ["input_3", "halves"], ["h0", "c0"], axis=0),
             h.make_node("LSTM", ["input_2", "W", "R", "", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], hidden_size=H),
             h.make_node("Squeeze", ["Y", "one"], [signal_out]),
             h.make_node("Concat", ["Y_h", "Y_c"], [state_out], axis=0)]
    graph = h.make_graph(
        nodes, "core", [h.make_tensor_value_info("input_2", T.FLOAT, [1, 1, H]),
                        h.make_tensor_value_info("input_3", T.FLOAT, [2, 1, H])],
        [h.make_tensor_value_info(signal_out, T.FLOAT, [1, 1, H]),
         h.make_tensor_value_info(state_out, T.FLOAT, [2, 1, H])],
        weights + [h.make_tensor("halves", T.INT64, [2], [1, 1]), h.make_tensor("one", T.INT64, [1], [1])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


# DTLN's names, which do not pair; TEN VAD's, numbered input_N/output_N, where input_2
# and output_2 pair by name only if input_2 is a recurrent state (it is the signal here).
@pytest.mark.parametrize("signal_out, state_out", [("activation_2", "tf_op_layer_stack_2"),
                                                   ("output_2", "output_3")])
def test_state_pairs_found_from_the_recurrent_nodes_where_names_do_not_pair(tmp_path, signal_out, state_out):
    onnx_model = _one_state_tensor_lstm(signal_out, state_out)
    model = memotvm.compile(onnx_model, memo=0.0)
    reference = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    model.export(str(tmp_path / "core.so"))
    exported = memotvm.load(str(tmp_path / "core.so"))
    for compiled in (model, exported):
        session = compiled.session()
        assert session.state_pairs == {"input_3": state_out}
        state = np.zeros((2, 1, 6), np.float32)
        for x in smooth(5, 1, 6)[:, None]:
            want = reference.run(None, {"input_2": x, "input_3": state})
            got = session.run({"input_2": x})
            assert max(float(np.max(np.abs(np.asarray(g) - w))) for g, w in zip(got, want)) <= 1e-6
            state = want[1]


@pytest.mark.parametrize("batch", [1, "batch", "gathered"])
def test_zero_state_sizes_come_from_what_the_recurrent_node_requires(batch):
    """TEN VAD's state inputs name their batch dimension apart from every other input
    (tf2onnx's unk__N); the LSTM they feed fixes it: to X's batch of 1, or to X's
    symbolic batch, which the call's input then gives, also where X is an input's
    slice over all of its batch (silero-vad's: its batch becomes max(batch, 0))."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    rng = np.random.default_rng(6)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)
               for name, shape in (("W", (1, 18, 5)), ("R", (1, 18, 6)))]
    nodes = [h.make_node("GRU", ["x", "W", "R", "", "", "h_in"], ["Y", "h_out"], hidden_size=6)]
    if batch == "gathered":
        batch = "batch"
        nodes[:0] = [h.make_node("Slice", ["x_in", "start", "end", "axis"], ["x"])]
        weights += [numpy_helper.from_array(np.array([v], np.int64), name)
                    for name, v in (("start", 0), ("end", 2**63 - 1), ("axis", 1))]
    x_name = nodes[0].input[0] if nodes[0].op_type == "Slice" else "x"
    graph = h.make_graph(
        nodes, "gru",
        [h.make_tensor_value_info(x_name, T.FLOAT, ["frames", batch, 5]),
         h.make_tensor_value_info("h_in", T.FLOAT, [1, "unk__188", 6])],
        [h.make_tensor_value_info("Y", T.FLOAT, None), h.make_tensor_value_info("h_out", T.FLOAT, [1, "unk__196", 6])],
        weights)
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model = memotvm.compile(onnx_model)
    assert model.implied_sizes == {"unk__188": 1 if batch == 1 else "batch"}
    size = 1 if batch == 1 else 3
    session = model.session()
    reference = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    state = np.zeros((1, size, 6), np.float32)
    for x in smooth(4, size, 5)[:, None]:
        want = reference.run(None, {x_name: x, "h_in": state})
        got = session.run({x_name: x})
        assert max(float(np.max(np.abs(np.asarray(g) - w))) for g, w in zip(got, want)) <= 1e-6
        state = want[1]


def test_vad_session_matches_onnxruntime_call_by_call_and_reuses_across_chunks():
    """The streaming detector, one chunk of samples per call: the unmodified session
    equals onnxruntime fed its own state back; memoized, the LSTM reuses from the
    second chunk on (without a session it could not reuse at all at one frame per
    chunk)."""
    path = os.path.join(FIELD, "vad_stream.onnx")
    rng = np.random.default_rng(0)
    audio = (np.sin(np.arange(576 * 6) / 9.0) + np.cumsum(rng.normal(0, 0.02, 576 * 6))).astype(np.float32)
    chunks = audio.reshape(6, 1, 576)
    plain = memotvm.compile(path, fixed_inputs={"sr": 16000}).session()
    assert plain.state_pairs == {"state": "stateN"}  # found by name
    ort_session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 64), np.float32)
    for chunk in chunks:
        prob, state = ort_session.run(None, {"input": chunk, "state": state, "sr": np.array(16000)})
        got = plain.run({"input": chunk})
        np.testing.assert_allclose(got[0], prob, atol=1e-5)
        np.testing.assert_allclose(got[1], state, atol=1e-5)
    memoized = memotvm.compile(path, fixed_inputs={"sr": 16000}, memo=0.5).session()
    for chunk in chunks:
        memoized.run({"input": chunk})
    assert memoized.stats.reuse > 0


@pytest.mark.parametrize("shapes", [None, {"input": [1, 576], "state": [2, 1, 64]}])
def test_a_branch_not_taken_leaves_its_nodes_table_as_it_was(shapes):
    """The VAD with its sample rate at run time, memoized, in a session: a call at
    8 kHz runs the narrow LSTM only; the wide one's memo table comes out of it as it
    went in, so the next 16 kHz call continues from the last 16 kHz one."""
    path = os.path.join(FIELD, "vad_stream.onnx")
    model = memotvm.compile(path, memo=0.3, shapes=shapes)
    wide = [loop.name for loop in model.loops].index("/wide/LSTM")
    x = np.random.default_rng(0).standard_normal((1, 576)).astype(np.float32)
    session = model.session(state={"state": "stateN"})
    tables = []
    for sr in (16000, 16000, 8000):
        session.run({"input": x, "sr": np.array(sr, np.int64)})
        tables.append([np.from_dlpack(t).copy() for t in session._tables])
    np.testing.assert_array_equal(tables[2][wide], tables[1][wide])
    assert not np.array_equal(tables[2][1 - wide], tables[1][1 - wide])


@pytest.mark.slow
def test_validate_sweep_and_calibrate_stream_a_recording(tmp_path, capsys):
    """--stream runs the tools over a recorded stream in sessions: validate's counts are
    the session's (equal to one call's on a stateful layer), sweep and calibrate run
    every candidate the same way."""
    from memotvm.calibrate import calibrate
    from memotvm.cli import main as cli_main
    from memotvm.streaming import StreamSpec
    from memotvm.sweep import sweep
    from memotvm.validate import validate

    model = stateful_layer("GRU")
    x = smooth(24, 4, 10)
    zeros = np.zeros((1, 4, 24), np.float32)
    spec = StreamSpec(chunk=3, state={"initial_h": "Y_h"})
    streamed = validate(model, {"X": x}, 0.3, stream=spec)
    whole = validate(model, {"X": x, "initial_h": zeros}, 0.3)
    assert streamed.stats.per_gate == whole.stats.per_gate
    assert streamed.stream == {"chunk": 3, "calls": 8, "state": {"initial_h": "Y_h"},
                               "within_call_only": []}
    rows = sweep(model, {"X": x}, [0.0, 0.3], predictors=["bnn"], stream=spec, progress=False)
    assert rows[0]["reuse"] == 0 and rows[1]["computations_avoided"] == pytest.approx(
        whole.stats.computations_avoided)
    plain = memotvm.compile(model)
    labels = plain.run({"X": x, "initial_h": zeros})[0]  # fidelity to the unmodified outputs
    result = calibrate(model, {"X": x[:, :2]}, labels[:, :, :2], "mse", {"X": x[:, 2:]},
                       labels[:, :, 2:], max_loss=0.05, grid=[0.0, 0.1, 0.3], stream=spec,
                       progress=False)
    assert result.chosen["calibration"]["computations_avoided"] > 0
    inputs = tmp_path / "x.npz"
    np.savez(inputs, X=x)
    path = tmp_path / "gru.onnx"
    path.write_bytes(model.SerializeToString())
    assert cli_main(["validate", str(path), "--inputs", str(inputs), "--threshold", "0.3",
                     "--stream", "--chunk", "3", "--state", "initial_h=Y_h"]) == 0
    assert "streamed: 8 calls of 3 step(s)" in capsys.readouterr().out
    assert cli_main(["validate", str(path), "--inputs", str(inputs), "--threshold", "0.3",
                     "--state", "initial_h=Y_h"]) == 2
    assert "--state needs --stream" in capsys.readouterr().err


def test_cli_validate_streams_a_recording(tmp_path, capsys):
    from memotvm.cli import main as cli_main

    model = stateful_layer("RNN")
    path = tmp_path / "rnn.onnx"
    path.write_bytes(model.SerializeToString())
    inputs = tmp_path / "x.npz"
    np.savez(inputs, X=smooth(12, 2, 10))
    assert cli_main(["validate", str(path), "--inputs", str(inputs), "--threshold", "0.3",
                     "--stream", "--chunk", "3", "--state", "initial_h=Y_h"]) == 0
    assert "streamed: 4 calls of 3 step(s)" in capsys.readouterr().out
    assert cli_main(["validate", str(path), "--inputs", str(inputs), "--threshold", "0.3",
                     "--state", "initial_h=Y_h"]) == 2
    assert "--state needs --stream" in capsys.readouterr().err

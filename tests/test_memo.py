"""The compiled memoization pass against the numpy reference of the spec."""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memotvm
from memotvm.passes import MemoConfig
from memotvm.reference import ReferenceSession
from memotvm.testing import make_inputs, make_recurrent_model


def counts(stats):
    return {key: (c.computed, c.reused) for key, c in stats.per_gate.items()}


def check_against_reference(model, feeds, config, compiled=None):
    """``compiled``: a model compiled with ``tunable=True`` to run with ``config``
    (thresholds are data: one compilation serves them all)."""
    if compiled is None:
        compiled = memotvm.compile(model, memo=config)
        got = compiled.run(feeds)
    else:
        got = compiled.run(feeds, memo=config)
    ref = ReferenceSession(model, memo=config)
    expected = ref.run(feeds)
    # Same decisions, hence identical counts per node, direction and gate.
    assert counts(compiled.last_stats) == counts(ref.stats)
    # Outputs differ only by float32 summation order of the dot products.
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
    return compiled.last_stats


@st.composite
def memo_case(draw):
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    attrs = {"linear_before_reset": draw(st.sampled_from([0, 1]))} if op == "GRU" else {}
    kwargs = dict(
        direction=draw(st.sampled_from(["forward", "reverse", "bidirectional"])),
        sequence_lens=draw(st.booleans()),
        initial_h=draw(st.booleans()),
        peepholes=op == "LSTM" and draw(st.booleans()),
        attrs=attrs,
        seed=draw(st.integers(0, 100)),
    )
    sizes = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    config = MemoConfig(
        threshold=draw(st.sampled_from([0.05, 0.2, 0.5, 1.0])),
        predictor=draw(st.sampled_from(["bnn", "oracle", "lowrank:1", "lowrank:8", "exactinput:3",
                                         "delta"])),
    )
    return op, sizes, kwargs, config, draw(st.integers(1, 12)), draw(st.integers(1, 3))


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(memo_case())
def test_memoized_layers_agree_with_reference(case):
    check_memo_case(case)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(memo_case())
def test_many_memoized_layers_agree_with_reference(case):
    check_memo_case(case)


def check_memo_case(case):
    op, (D, H), kwargs, config, seq_length, batch = case
    model = make_recurrent_model(op, D, H, **kwargs)
    feeds = make_inputs(model, seq_length, batch, seed=kwargs["seed"], smooth=True)
    check_against_reference(model, feeds, config)


@pytest.mark.parametrize("op,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1), ("RNN", 0)])
def test_reuse_grows_with_threshold_on_smooth_inputs(op, lbr):
    attrs = {"linear_before_reset": lbr} if op == "GRU" else {}
    model = make_recurrent_model(op, 32, 32, direction="bidirectional", attrs=attrs)
    feeds = make_inputs(model, 40, 2, smooth=True)
    reuse = [check_against_reference(model, feeds, MemoConfig(threshold=t)).reuse
             for t in (0.1, 0.3, 0.6)]
    assert reuse == sorted(reuse) and reuse[-1] > reuse[0] > 0


# (19, 23): every product has a tail; (32, 48): none, and consecutive rows are stored as
# vectors (dot_vector: always in the unmodified kernel, in a memoized one where a
# block's listed rows are consecutive, the others one by one); (1 or 5, 32): x has no
# whole vector, and the projection sums rows as vectors (the kernels share the
# projection, the oracle computes input parts itself).
# (One op per shape in the default run, every op in the slow one.)
@pytest.mark.parametrize("op, sizes", [
    *[pytest.param(op, (19, 23, 3), id=f"{op}-tails",
                   marks=[pytest.mark.slow] if op != "LSTM" else []) for op in ("LSTM", "GRU", "RNN")],
    *[pytest.param(op, (32, 48, 5), id=f"{op}-vector_rows",
                   marks=[pytest.mark.slow] if op != "GRU" else []) for op in ("LSTM", "GRU", "RNN")],
    pytest.param("LSTM", (1, 32, 3), id="LSTM-one_input"),
    pytest.param("GRU", (5, 32, 3), id="GRU-small_input"),
])
def test_threshold_zero_is_exactly_the_unmodified_model(op, sizes):
    D, H, batch = sizes
    model = make_recurrent_model(op, D, H, direction="bidirectional", sequence_lens=True,
                                 initial_h=True, initial_c=op == "LSTM")
    # A batch of one too: its tasks take single elements, not blocks of four.
    batches = [make_inputs(model, 15, n, smooth=True, seed=n) for n in (batch, 1)]
    plain = memotvm.compile(model)
    expected = [plain.run(feeds) for feeds in batches]
    for predictor in ("bnn", "oracle", "lowrank:4", "exactinput:4"):
        memo = memotvm.compile(model, memo=MemoConfig(threshold=0.0, predictor=predictor))
        for feeds, want in zip(batches, expected):
            for a, b in zip(want, memo.run(feeds)):
                np.testing.assert_array_equal(a, b)
            assert memo.last_stats.total.reused == 0


def test_per_node_and_direction_thresholds():
    model = make_recurrent_model("LSTM", 16, 16, direction="bidirectional", name="enc")
    feeds = make_inputs(model, 30, 2, smooth=True)
    config = MemoConfig(threshold=0.0, per_node={"enc": {"forward": 0.0, "reverse": 0.5}})
    stats = check_against_reference(model, feeds, config)
    per_dir = stats.per_direction
    assert per_dir[("enc", "forward")].reused == 0
    assert per_dir[("enc", "reverse")].reused > 0


def test_stacked_model_agrees_with_reference(torch_fixture):
    model, feeds = torch_fixture
    for predictor in ("bnn", "oracle"):
        stats = check_against_reference(model, feeds, MemoConfig(threshold=0.3, predictor=predictor))
        assert set(stats.per_node) == {"/lstm/LSTM", "/lstm/LSTM_1", "/gru/GRU"}
        assert stats.reuse > 0


def test_repeated_and_concurrent_calls_are_independent():
    model = make_recurrent_model("GRU", 24, 20, direction="bidirectional", sequence_lens=True)
    compiled = memotvm.compile(model, memo=0.4)
    inputs = [make_inputs(model, 25, 2, seed=s, smooth=True) for s in range(4)]
    expected = [compiled.run(f) for f in inputs]
    expected_stats = []
    for f in inputs:
        compiled.run(f)
        expected_stats.append(counts(compiled.last_stats))
    # Again, in another order: nothing carried over from earlier calls.
    for i in (3, 1, 0, 2):
        for a, b in zip(compiled.run(inputs[i]), expected[i]):
            np.testing.assert_array_equal(a, b)
        assert counts(compiled.last_stats) == expected_stats[i]
    errors = []

    def worker(i):
        try:
            for _ in range(5):
                out = compiled.run(inputs[i])
                for a, b in zip(out, expected[i]):
                    np.testing.assert_array_equal(a, b)
                assert counts(compiled.thread_last_stats) == expected_stats[i]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x", True, np.bool_(True),
                                 np.float32(-1)])
def test_bad_thresholds_are_rejected(bad):
    with pytest.raises(memotvm.ConfigError, match="threshold"):
        MemoConfig(threshold=bad)
    with pytest.raises(memotvm.ConfigError, match="threshold"):
        MemoConfig(per_node={"n": {"forward": bad}})


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.int64(0), 0.25, 0])
def test_a_number_of_any_numeric_type_is_a_threshold(value):
    """Sweeps take thresholds from numpy (np.linspace, arrays of float32)."""
    config = MemoConfig.coerce(value)
    assert config.threshold == float(value) and config.predictor == "bnn"
    assert type(config.threshold) is float


def test_unknown_node_and_predictor_are_rejected():
    model = make_recurrent_model("RNN", 4, 4, name="rnn0")
    with pytest.raises(memotvm.ConfigError, match="not in the model: nope"):
        memotvm.compile(model, memo=MemoConfig(per_node={"nope": 0.1}))
    with pytest.raises(memotvm.ConfigError, match="predictor"):
        MemoConfig(predictor="psychic")
    with pytest.raises(memotvm.ConfigError, match="lowrank needs a rank"):
        MemoConfig(predictor="lowrank")
    with pytest.raises(memotvm.ConfigError, match="rank"):
        MemoConfig(predictor="lowrank:0")
    with pytest.raises(memotvm.ConfigError, match="reverse"):
        memotvm.compile(model, memo=MemoConfig(per_node={"rnn0": {"reverse": 0.1}}))


def _weights_as_inputs(op):
    """A layer whose W and R are graph inputs (computed at run time, not constants)."""
    from onnx import TensorProto, helper, numpy_helper

    model = make_recurrent_model(op, 12, 10, direction="bidirectional")
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for name in ("W", "R"):
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(weights[name].shape)))
    keep = [t for t in graph.initializer if t.name not in ("W", "R")]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model, weights


def test_bnn_with_weights_computed_at_run_time():
    """The sign bits are then packed by a kernel at run time; same decisions."""
    model, weights = _weights_as_inputs("LSTM")
    feeds = make_inputs(model, 20, 2, smooth=True)
    feeds.update({"W": weights["W"], "R": weights["R"]})
    check_against_reference(model, feeds, MemoConfig(threshold=0.3))
    with pytest.raises(memotvm.ConfigError, match="computes W or R at run time"):
        memotvm.compile(model, memo=MemoConfig(threshold=0.3, predictor="lowrank:4"))


@pytest.mark.parametrize("weights_in_graph", [True, False])
def test_memoized_module_keeps_only_the_kernels_it_calls(weights_in_graph):
    """The unmodified kernels the pass replaces are gone (they were compiled too, half
    of a memoized model's code); the sign packers of run-time weights are kept."""
    import tvm

    from memotvm.passes import MemoizeRecurrentLoops

    if weights_in_graph:
        model = make_recurrent_model("LSTM", 8, 8, direction="bidirectional")
    else:
        model, _ = _weights_as_inputs("LSTM")
    mod = MemoizeRecurrentLoops(MemoConfig(threshold=0.3))(memotvm.frontend.from_onnx(model).mod)
    names = sorted(gv.name_hint for gv, func in mod.functions_items()
                   if isinstance(func, tvm.tirx.PrimFunc))
    assert names == (["lstm_memo_kernel"] if weights_in_graph
                     else ["lstm_memo_kernel", "pack_signs_R", "pack_signs_W"])


def test_numpy_and_kernel_sign_packing_agree():
    import tvm

    from memotvm.kernels import build_sign_packer
    from memotvm.predictors import SIGN_GROUP, group_rows, pack_signs
    from memotvm.targets import host_target

    model = make_recurrent_model("GRU", 70, 130, direction="bidirectional")
    loop = memotvm.frontend.from_onnx(model).loops[0]
    rng = np.random.default_rng(0)
    for which, n in (("W", 70), ("R", 130)):
        w = rng.standard_normal((2, loop.rows, n)).astype(np.float32)
        w[0, 0, :5] = 0.0  # s(0) = +1: bit clear
        lib = tvm.compile(tvm.IRModule({"main": build_sign_packer(loop, which)}), target=host_target())
        out = tvm.runtime.empty((2, -(-loop.rows // SIGN_GROUP), (n + 63) // 64, SIGN_GROUP), "uint64")
        lib["main"](tvm.runtime.tensor(w), out)
        np.testing.assert_array_equal(out.numpy(), group_rows(pack_signs(w), SIGN_GROUP))


def test_exactinput_memoizes_only_the_recurrent_part():
    model = make_recurrent_model("LSTM", 24, 8, direction="bidirectional")
    feeds = make_inputs(model, 30, 2, smooth=True)
    stats = check_against_reference(model, feeds, MemoConfig(threshold=0.5, predictor="exactinput:4"))
    assert stats.reuse > 0.1
    # A reuse skips the H = 8 recurrent multiply-adds of the neuron's D + H = 32.
    assert abs(stats.computations_avoided - stats.reuse * 8 / 32) < 1e-12
    bnn = check_against_reference(model, feeds, MemoConfig(threshold=0.5))
    assert bnn.computations_avoided == bnn.reuse


def project_inputs(monkeypatch, projected):
    """Make delta execution take its input parts from the projection of x's transmitted
    copies (what it does for large layers) or from W's columns, whatever the size."""
    import memotvm.predictors.delta as predictors

    monkeypatch.setattr(predictors, "DELTA_COLUMN_BYTES", 0 if projected else 1 << 62)


@pytest.mark.parametrize("op,lbr,projected", [("LSTM", 0, False), ("GRU", 0, False), ("GRU", 1, False),
                                              ("RNN", 0, False), ("LSTM", 0, True), ("GRU", 0, True)])
def test_delta_execution_skips_columns(op, lbr, projected, monkeypatch):
    project_inputs(monkeypatch, projected)
    model = make_recurrent_model(op, 12, 70, direction="bidirectional", sequence_lens=True,
                                 attrs={"linear_before_reset": lbr} if op == "GRU" else None)
    feeds = make_inputs(model, 25, 2, smooth=True)
    plain = memotvm.compile(model).run(feeds)
    delta = memotvm.compile(model, memo=MemoConfig(predictor="delta"), tunable=True)
    # Threshold 0 sends every component: the unmodified layer up to summation order.
    zero_config = MemoConfig(threshold=0.0, predictor="delta")
    zero = check_against_reference(model, feeds, zero_config, compiled=delta)
    assert zero.computations_avoided == 0
    for g, e in zip(delta.run(feeds, memo=zero_config), plain):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
    avoided = [check_against_reference(model, feeds, MemoConfig(threshold=t, predictor="delta"),
                                       compiled=delta).computations_avoided for t in (0.02, 0.1, 0.4)]
    assert 0 < avoided[0] < avoided[1] < avoided[2] < 1


def test_tunable_thresholds_equal_fixed_ones():
    model = make_recurrent_model("GRU", 10, 20, direction="bidirectional")
    feeds = make_inputs(model, 15, 2, smooth=True)
    tunable = memotvm.compile(model, memo=MemoConfig(predictor="lowrank:4"), tunable=True)
    for config in (MemoConfig(threshold=0.0, predictor="lowrank:4"),
                   MemoConfig(threshold=0.3, predictor="lowrank:4"),
                   MemoConfig(predictor="lowrank:4", per_node={"rnn": {"forward": 0.5, "reverse": 0.1}})):
        fixed = memotvm.compile(model, memo=config)
        for g, e in zip(tunable.run(feeds, memo=config), fixed.run(feeds)):
            np.testing.assert_array_equal(g, e)
        assert counts(tunable.last_stats) == counts(fixed.last_stats)
    with pytest.raises(memotvm.errors.ConfigError, match="compiled for predictor"):
        tunable.run(feeds, memo=0.2)
    with pytest.raises(memotvm.errors.ConfigError, match="fixed thresholds"):
        fixed.run(feeds, memo=MemoConfig(predictor="lowrank:4"))


@pytest.mark.parametrize("op,kwargs,predictor,hidden", [
    ("LSTM", {"direction": "bidirectional", "peepholes": True}, "bnn", 70),
    ("GRU", {"direction": "reverse", "attrs": {"linear_before_reset": 0}}, "delta", 70),
    ("GRU", {"direction": "bidirectional", "attrs": {"linear_before_reset": 1}}, "exactinput:3", 70),
    ("LSTM", {"direction": "bidirectional"}, "delta-projected", 70),
    ("LSTM", {"direction": "forward"}, "bnn", 64),
    ("RNN", {"direction": "reverse"}, "bnn", 128),
])
def test_batch_blocks_with_ragged_lengths_agree_with_reference(op, kwargs, predictor, hidden,
                                                               monkeypatch):
    if predictor == "delta-projected":
        project_inputs(monkeypatch, True)
        predictor = "delta"
    # lengths from 0 to the whole sequence, so elements leave their blocks at different
    # steps; H = 70 leaves a partial block of units, H = 64 and 128 have whole vectors
    # (a block's consecutive listed rows are stored as vectors, the others one by one).
    # Every element must make the reference's decisions and keep its own values.
    model = make_recurrent_model(op, 9, hidden, sequence_lens=True, initial_h=True, **kwargs)
    feeds = make_inputs(model, 12, 6, smooth=True, lengths=[12, 3, 0, 7, 12, 5], seed=4)
    compiled = memotvm.compile(model, memo=MemoConfig(predictor=predictor), tunable=True)
    for threshold in ((0.0, 0.3) if predictor != "delta" else (0.0, 0.05)):
        stats = check_against_reference(model, feeds, MemoConfig(threshold=threshold, predictor=predictor),
                                        compiled=compiled)
        assert (stats.computations_avoided > 0) == (threshold > 0)


@pytest.mark.parametrize("predictor,projected", [(None, False), ("bnn", False), ("delta", True),
                                                 pytest.param("delta", False, marks=pytest.mark.slow)])
def test_projection_in_chunks_of_steps(predictor, projected, monkeypatch):
    """A sequence longer than a chunk of input projections (here 8 steps: a small W keeps
    the chunks to about a core's L2; see memotvm.kernels.tiling) runs chunk after chunk
    with the same results and decisions as the reference, ragged lengths included."""
    import memotvm.kernels.builder as builder

    monkeypatch.setattr(builder, "CACHED_PROJECTION_BYTES", 1)  # the least: 8 steps
    project_inputs(monkeypatch, projected)
    model = make_recurrent_model("LSTM", 6, 20, direction="bidirectional", sequence_lens=True)
    feeds = make_inputs(model, 29, 3, seed=13, smooth=True, lengths=[29, 17, 8])
    if predictor is None:
        got = memotvm.compile(model).run(feeds)
        for g, e in zip(got, ReferenceSession(model).run(feeds)):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
    else:
        stats = check_against_reference(model, feeds, MemoConfig(threshold=0.1, predictor=predictor))
        assert stats.computations_avoided > 0

"""Property tests: random recurrent layers compiled by memotvm agree with onnxruntime.

The bound is an absolute 1e-4: both sides compute in float32 with different summation
orders (and onnxruntime uses polynomial sigmoid/tanh), which over a few steps of
moderately sized layers stays well below it.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memotvm
from memotvm.cells import ACTIVATION_PARAMS, DEFAULT_ACTIVATIONS
from memotvm.testing import make_inputs, make_recurrent_model, to_layout0

from conftest import assert_outputs_close, run_onnxruntime

# Bounded activations keep the state bounded, so a 1e-4 absolute bound is meaningful;
# the unbounded ones appear with small alphas below.
ACTIVATIONS = sorted(ACTIVATION_PARAMS)


@st.composite
def recurrent_case(draw):
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    nd = 2 if direction == "bidirectional" else 1
    attrs = {}
    if draw(st.booleans()):
        names, alphas, betas = [], [], []
        for _ in range(len(DEFAULT_ACTIVATIONS[op]) * nd):
            name = draw(st.sampled_from(ACTIVATIONS))
            uses_a, uses_b, _, _ = ACTIVATION_PARAMS[name]
            names.append(name)
            if uses_a:
                alphas.append(draw(st.sampled_from([0.1, 0.5, 0.9])))
            if uses_b:
                betas.append(draw(st.sampled_from([0.0, 0.3, 0.6])))
        attrs["activations"] = names
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    if draw(st.booleans()):
        attrs["clip"] = draw(st.sampled_from([0.3, 1.0, 2.5]))
    if op == "LSTM" and draw(st.booleans()):
        attrs["input_forget"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = draw(st.sampled_from([0, 1]))
    kwargs = dict(
        direction=direction,
        layout=draw(st.sampled_from([0, 1])),
        bias=draw(st.booleans()),
        sequence_lens=draw(st.booleans()),
        initial_h=draw(st.booleans()),
        initial_c=op == "LSTM" and draw(st.booleans()),
        peepholes=op == "LSTM" and draw(st.booleans()),
        attrs=attrs,
        seed=draw(st.integers(0, 1000)),
    )
    outputs = draw(st.sampled_from([("Y", "Y_h", "Y_c"), ("Y",), ("Y_h",), ("Y", "Y_c"), ("Y_h", "Y_c")]))
    if op != "LSTM" and outputs == ("Y_c",):
        outputs = ("Y",)
    sizes = dict(
        input_size=draw(st.integers(1, 40)),
        hidden_size=draw(st.integers(1, 24)),
    )
    seq_length = draw(st.integers(1, 9))
    batch = draw(st.integers(1, 4))
    return op, sizes, kwargs, outputs, seq_length, batch


@settings(max_examples=16, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(recurrent_case())
def test_random_layers_match_onnxruntime(case):
    check_random_layer(case)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(recurrent_case())
def test_many_random_layers_match_onnxruntime(case):
    check_random_layer(case)


def check_random_layer(case):
    op, sizes, kwargs, outputs, seq_length, batch = case
    model = make_recurrent_model(op, sizes["input_size"], sizes["hidden_size"], outputs=outputs, **kwargs)
    if not [o for o in model.graph.output]:
        return
    feeds = make_inputs(model, seq_length, batch, seed=kwargs["seed"])
    reference = to_layout0(model) if kwargs["layout"] == 1 else model
    expected = run_onnxruntime(reference, feeds)
    got = memotvm.compile(model).run(feeds)
    assert_outputs_close(got, expected, atol=1e-4)


def test_layout1_twin_is_a_faithful_reference():
    """The layout-0 twin used above really is the same model: compare both in memotvm."""
    model = make_recurrent_model("LSTM", 5, 4, layout=1, direction="bidirectional",
                                 sequence_lens=True, initial_h=True, initial_c=True)
    feeds = make_inputs(model, 6, 3, seed=3)
    a = memotvm.compile(model).run(feeds)
    b = memotvm.compile(to_layout0(model)).run(feeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_dynamic_sequence_length_and_batch_one_compile():
    """One compiled model serves any sequence length and batch size."""
    model = make_recurrent_model("GRU", 7, 6, direction="bidirectional", sequence_lens=True)
    compiled = memotvm.compile(model)
    for seq_length, batch in [(1, 1), (13, 2), (40, 5)]:
        feeds = make_inputs(model, seq_length, batch, seed=seq_length)
        assert_outputs_close(compiled.run(feeds), run_onnxruntime(model, feeds), atol=1e-4)



def test_zero_length_elements_match_onnxruntime():
    for op in ("LSTM", "GRU", "RNN"):
        model = make_recurrent_model(op, 5, 4, direction="bidirectional", sequence_lens=True,
                                     initial_h=True, initial_c=op == "LSTM")
        feeds = make_inputs(model, 6, 3, lengths=[0, 6, 2])
        assert_outputs_close(memotvm.compile(model).run(feeds), run_onnxruntime(model, feeds), atol=1e-5)

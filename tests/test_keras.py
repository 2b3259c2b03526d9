"""Keras recurrent models as tf2onnx exports them (``tests/fixtures/keras``, made by
``scripts/make_keras_fixtures.py``), against onnxruntime.

Each output is computed by the same float32 operations in another order: 1e-6
(outputs of LSTMs and GRUs lie in [-1, 1]; the dense heads' up to about 3).
"""

import os
import warnings

import numpy as np
import pytest

import memotvm

from conftest import run_onnxruntime

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras")


def _load(name):
    import onnx
    return onnx.load(os.path.join(FIXTURES, f"{name}.onnx"))


def _feeds(model, batch=3, steps=11):
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value or None for d in value.type.tensor_type.shape.dim]
        shape = [batch if i == 0 else (steps if d is None else d) for i, d in enumerate(dims)]
        if value.type.tensor_type.elem_type == 6:  # int32 tokens
            feeds[value.name] = rng.integers(1, 100, shape).astype(np.int32)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _compiled(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memotvm.compile(model, **options)


@pytest.mark.parametrize("name", ["lstm_backwards", "rnn_backwards", "stacked_bilstm", "lstm_state",
                                  "masked_lstm", "conv_lstm", "tagger"])
def test_keras_exports_compile_as_shipped(name):
    # lstm_backwards and rnn_backwards reverse their sequence by lengths that tf2onnx
    # expands from a dimension (an Expand of a shape value, which TVM could not take).
    model = _load(name)
    feeds = _feeds(model)
    if name == "masked_lstm":  # rows of zeros at the end are masked steps
        feeds["x"][0, 6:] = 0
        feeds["x"][2, 2:] = 0
    expected = run_onnxruntime(model, feeds)
    got = _compiled(model).run(feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


def test_expand_of_a_shape_value_over_other_lengths():
    model = _compiled(_load("lstm_backwards"))
    for batch, steps in [(1, 1), (2, 5), (4, 17)]:
        feeds = _feeds(_load("lstm_backwards"), batch, steps)
        np.testing.assert_allclose(model.run(feeds)[0], run_onnxruntime(_load("lstm_backwards"), feeds)[0],
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["bigru", "gru_v1"])
@pytest.mark.parametrize("batch, steps", [(3, 11), pytest.param(1, 1, marks=pytest.mark.slow),
                                          pytest.param(5, 4, marks=pytest.mark.slow)])
def test_a_cell_written_out_in_a_loop(name, batch, steps):
    # Keras 3's GRU becomes a Loop running the cell as MatMul, Sigmoid and Tanh, whose
    # carried state and input have batch sizes of their own in the loop's functions:
    # TVM's FuseTIR failed on the run-time check relating them (memotvm.passes.param_sizes).
    model = _load(name)
    compiled = _compiled(model)
    feeds = _feeds(model, batch, steps)
    for g, e in zip(compiled.run(feeds), run_onnxruntime(model, feeds)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


def test_keras_lstms_are_memoized():
    model = _load("stacked_bilstm")
    feeds = _feeds(model, batch=2, steps=30)
    memo = _compiled(model, memo=0.0)
    np.testing.assert_allclose(memo.run(feeds)[0], run_onnxruntime(model, feeds)[0], rtol=0, atol=1e-6)
    assert len(memo.last_stats.per_node) == 2
    assert memo.last_stats.reuse == 0
    loose = _compiled(model, memo=0.5)
    loose.run(feeds)
    assert loose.last_stats.reuse > 0

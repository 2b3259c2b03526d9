"""Resize and Upsample as onnxruntime computes them (:mod:`memotvm.frontend.resize`), and
the operators of older opsets that take as attributes what later ones take as inputs
(:mod:`memotvm.frontend.legacy_forms`).

Nearest resizing copies values: exact.  Linear and cubic outputs are weighted sums of
at most 16 (64 with antialiasing) inputs with weights summing to 1, computed in float32
in another order than onnxruntime's: 1e-5 relative to the largest value.
"""

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import memotvm
from memotvm.errors import UnsupportedModelError

from conftest import run_onnxruntime


def _model(nodes, inits, opset, shape, dtype=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, None)],
                              [numpy_helper.from_array(np.asarray(a), name) for name, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _check(model, x):
    expected = run_onnxruntime(model, {"x": x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the checker's note on the output's missing shape)
        got = memotvm.compile(model).run({"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def _backend_cases():
    """The onnx package's Resize and Upsample node tests, with scales, sizes and roi
    as initializers (as models carry them)."""
    import onnx.backend.test.case.node as node_cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    return [c for c in cases if re.match(r"test_(resize|upsample)_", c.name)]


_CASES = {c.name: c for c in _backend_cases()}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_onnx_resize_cases_match_onnxruntime(name):
    # onnxruntime departs from the onnx reference where align_corners downsamples to a
    # length that scale * length does not reach (the reference uses the fractional
    # length); memotvm follows onnxruntime, which models are checked against.
    case = _CASES[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    graph = model.graph
    for info, value in zip(list(graph.input)[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
    first = graph.input[0]
    del graph.input[:]
    graph.input.append(first)
    graph.input[0].name = "x"
    for node in graph.node:
        node.input[0] = "x" if node.input[0] == first.name else node.input[0]
    _check(model, np.asarray(inputs[0]))


# (onnxruntime defines tf_half_pixel_for_nn for nearest only)
@pytest.mark.parametrize("mode, transform", [
    (mode, transform) for mode in ("nearest", "linear", "cubic")
    for transform in ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners")
    if mode == "nearest" or transform != "tf_half_pixel_for_nn"])
@pytest.mark.parametrize("scales", [(2.0, 1.5), (0.5, 0.6), (1.7, 0.45)])
def test_scales_whose_sizes_are_not_whole(mode, transform, scales):
    # 7 x 9 by 1.5 is 13.5 columns, 13 of them: TVM mapped them with 9/13, not 1/1.5.
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode=transform)
    _check(_model([node], {"roi": np.zeros(0, np.float32),
                           "scales": np.array((1, 1) + scales, np.float32)}, 13, [2, 3, 7, 9]), x)


def test_whole_scales_over_a_symbolic_size_keep_tvms_resize():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 6)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    model = _model([node], {"scales": np.array([1, 1, 2, 2], np.float32)}, 13, [1, 2, "h", "w"])
    _check(model, x)


def test_scales_not_whole_over_a_symbolic_size_are_refused_by_name():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", name="up")
    model = _model([node], {"scales": np.array([1, 1, 1.5, 1.5], np.float32)}, 13, [1, 2, "h", "w"])
    with pytest.raises(UnsupportedModelError, match=r"'up' \(Resize\).*--shape"):
        memotvm.compile(model)


def test_nearest_resizing_of_integers():
    x = np.arange(2 * 7 * 9, dtype=np.uint8).reshape(1, 2, 7, 9)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    _check(_model([node], {"scales": np.array([1, 1, 0.5, 1.5], np.float32)}, 13, [1, 2, 7, 9],
                  TensorProto.UINT8), x)


# Opset 7 and 9 Upsample and opset 10 Resize: asymmetric coordinates, and nearest rounds
# down along axes that grow and up along axes that shrink (onnxruntime's rule).
@pytest.mark.parametrize("opset, op, scales, mode", [
    (7, "Upsample", (1, 1, 2, 3), "nearest"),
    (8, "Upsample", (1, 1, 2, 2), "linear"),
    (9, "Upsample", (1, 1, 2, 1.5), "nearest"),
    (9, "Upsample", (1, 1, 1.5, 2.5), "linear"),
    (10, "Resize", (1, 1, 2, 1.5), "nearest"),
    (10, "Resize", (1, 1, 0.5, 0.6), "nearest"),
    (10, "Resize", (1, 1, 2, 1.5), "linear"),
    (10, "Resize", (1, 1, 0.8, 0.45), "linear"),
])
def test_resizing_of_older_opsets(opset, op, scales, mode):
    x = np.random.default_rng(2).standard_normal((1, 3, 7, 9)).astype(np.float32)
    scales = np.array(scales, np.float32)
    if opset < 9:
        model = _model([helper.make_node(op, ["x"], ["y"], scales=scales.tolist(), mode=mode)], {}, opset,
                       [1, 3, 7, 9])
    else:
        model = _model([helper.make_node(op, ["x", "scales"], ["y"], mode=mode)], {"scales": scales}, opset,
                       [1, 3, 7, 9])
    _check(model, x)


def test_opset_10_nearest_resize_that_grows_and_shrinks_is_refused_by_name():
    node = helper.make_node("Resize", ["x", "scales"], ["y"], mode="nearest", name="mixed")
    model = _model([node], {"scales": np.array([1, 1, 2, 0.5], np.float32)}, 10, [1, 3, 7, 9])
    with pytest.raises(UnsupportedModelError, match="'mixed' .*grow some axes and shrink others"):
        memotvm.compile(model)


@pytest.mark.parametrize("attrs", [dict(starts=[1, -3], ends=[2 ** 62, 100], axes=[1, 3]),
                                   dict(starts=[0, 1], ends=[1, -1])])
def test_slice_of_opset_9_takes_its_bounds_from_attributes(attrs):
    # keras2onnx and torch's opset-9 exports write them so; TVM read missing inputs.
    x = np.random.default_rng(3).standard_normal((1, 3, 4, 5)).astype(np.float32)
    _check(_model([helper.make_node("Slice", ["x"], ["y"], **attrs)], {}, 9, [1, 3, 4, 5]), x)


def test_reshape_and_cast_of_old_opsets():
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x"], ["r"], shape=[3, 4]),
             helper.make_node("Cast", ["r"], ["c"], to="INT32"),
             helper.make_node("Cast", ["c"], ["y"], to="FLOAT")]
    model = _model(nodes, {}, 4, [2, 6])
    model.ir_version = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = memotvm.compile(model).run({"x": x})[0]
    np.testing.assert_array_equal(got, x.reshape(3, 4).astype(np.int32).astype(np.float32))


def test_old_opset_forms_inside_a_loop_body_next_to_constants():
    # A Constant beside an opset-9 Slice in a Loop's body (folding leaves bodies' nodes).
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
         helper.make_node("Slice", ["acc"], ["head"], starts=[0], ends=[2], axes=[1]),
         helper.make_node("Add", ["head", "one"], ["head1"]),
         helper.make_node("Concat", ["head1", "tail"], ["next"], axis=1),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, [2, 5])])
    nodes = [helper.make_node("Slice", ["x"], ["tail_full"], starts=[2], ends=[5], axes=[1]),
             helper.make_node("Identity", ["tail_full"], ["tail"]),
             helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)]
    model = _model(nodes, {"trips": np.array(3, np.int64)}, 9, [2, 5])
    x = np.random.default_rng(5).standard_normal((2, 5)).astype(np.float32)
    _check(model, x)


def test_scales_not_whole_with_a_symbolic_batch():
    x = np.random.default_rng(6).standard_normal((3, 2, 7, 9)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    _check(_model([node], {"scales": np.array([1, 1, 1.5, 0.6], np.float32)}, 13, ["n", 2, 7, 9]), x)

"""The CPU target's own operator forms: matrix products by constant weights, which
:mod:`memotvm.targets.host_gemm` replaces by a register-blocked kernel, and the
recurrent matrices of unmodified kernels in row blocks (:mod:`memotvm.targets.recurrent_layout`).

Each output is a float32 sum of K products; against a float64 reference its error is
bounded by K * 2^-24 * (|x| @ |W|) (the standard bound for a dot product summed in
float32), which is the tolerance used, per element.
"""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import memotvm
from memotvm.frontend import from_onnx
from memotvm.kernels import BlockRow, pack_row_blocks
from memotvm.targets.recurrent_layout import PackRecurrentWeights
from memotvm.testing import make_inputs, make_recurrent_model
from memotvm.kernels.panels import panel_vectors, panel_widths
from memotvm.kernels.tiling import vector_lanes
from memotvm.targets.host_gemm import PackConstantMatmuls, pack_weight

from conftest import run_onnxruntime


def _model(nodes, inputs, inits, out_shape, opset=17):
    graph = helper.make_graph(nodes, "head", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(a, name) for name, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _assert_within_dot_bound(got, x, w, bias=None):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64 + (0 if bias is None else bias)
    bound = w.shape[0] * 2.0 ** -24 * (np.abs(x64) @ np.abs(w64)) + 1e-30
    if bias is not None:
        bound = bound + 2.0 ** -24 * np.abs(ref)  # the bias add's rounding
    assert got.shape == ref.shape
    excess = np.abs(got - ref) - bound
    assert got.size == 0 or excess.max() <= 0, f"max error over the bound: {excess.max():.3g}"


def test_panels_cover_every_column_once():
    # (The panel is 16 lanes x 6 vectors with AVX-512, 8 x 3 with AVX2: the machine's.)
    lanes, full = vector_lanes(), panel_vectors()
    for n in [1, 15, 16, 17, 96, 97, 200]:
        widths = panel_widths(n)
        assert all(0 < w <= full for w in widths) and sum(widths) * lanes >= n > (sum(widths) - 1) * lanes
    panel = lanes * full
    w = np.arange(3 * (panel + 1), dtype=np.float32).reshape(3, panel + 1)
    packed, scales = pack_weight(w)
    assert scales is None  # float32: no scales
    first = packed[:3 * panel].reshape(3, panel)   # panel 0: its columns, row-major
    last = packed[3 * panel:].reshape(3, lanes)    # panel 1: the last column, zero-padded
    assert np.array_equal(first, w[:, :panel]) and np.array_equal(last[:, 0], w[:, panel])
    assert not last[:, 1:].any()


# K and N cover: one column, a whole vector, a tail, a whole panel, full panels and a
# narrower last one; the row counts: a single row, rows that end inside a block of 4,
# and two chunks of 64 with a tail.
@pytest.mark.parametrize("k, n", [(1, 1), (7, 16), (33, 17), (64, 96), (256, 97), (40, 200)])
def test_matmul_by_constant_weight(k, n):
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", k])], {"w": w}, ["T", "N", n])
    mod = PackConstantMatmuls()(from_onnx(model, None).mod)
    assert any(gv.name_hint.startswith("packed_matmul") for gv in mod.get_global_vars())
    compiled = memotvm.compile(model)
    for seq, batch in [(1, 1), (5, 3), (70, 2)]:
        x = rng.standard_normal((seq, batch, k)).astype(np.float32)
        _assert_within_dot_bound(compiled.run({"x": x})[0], x, w)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_constant_weight_and_bias(trans_b):
    rng = np.random.default_rng(trans_b)
    w = rng.standard_normal((48, 23)).astype(np.float32)
    b = rng.standard_normal(23).astype(np.float32)
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48])],
                   {"w": w.T.copy() if trans_b else w, "b": b}, ["N", 23])
    mod = PackConstantMatmuls()(from_onnx(model, None).mod)
    text = mod["main"].script()
    assert "packed_matmul" in text and "permute_dims" not in text  # no transpose per call
    compiled = memotvm.compile(model)
    for rows in [1, 6, 130]:
        x = rng.standard_normal((rows, 48)).astype(np.float32)
        got = compiled.run({"x": x})[0]
        _assert_within_dot_bound(got, x, w, bias=b)
        np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=0, atol=1e-5)


def test_products_of_computed_operands_keep_tvms_lowering():
    rng = np.random.default_rng(3)
    model = _model([helper.make_node("MatMul", ["x", "z"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                    helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 5])], {}, ["N", 5])
    mod = PackConstantMatmuls()(from_onnx(model, None).mod)
    assert not any(gv.name_hint.startswith("packed_matmul") for gv in mod.get_global_vars())
    x, z = rng.standard_normal((9, 8)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    _assert_within_dot_bound(memotvm.compile(model).run({"x": x, "z": z})[0], x, z)


@pytest.mark.parametrize("fixture", ["vad_stream", "quantized_lstm", "gru_denoiser"])
def test_every_host_operator_of_the_field_fixtures_is_scheduled(fixture, monkeypatch):
    """No host operator of these models is left as TVM's single-threaded scalar loops
    (a schedule that fails on a function keeps them, silently): 24 of their 63 were,
    when the schedule called a TIR visitor this TVM does not have."""
    import os

    from memotvm.targets import host_schedule
    from memotvm.targets.cpu import cpu_pipeline, host_target

    failed = []
    schedule = host_schedule.schedule_func

    def counted(func):
        try:
            return schedule(func)
        except Exception:
            failed.append(func.script().splitlines()[5][:100])
            raise

    monkeypatch.setattr(host_schedule, "schedule_func", counted)
    path = os.path.join(os.path.dirname(__file__), "fixtures", "field", f"{fixture}.onnx")
    with host_target() as target, tvm.transform.PassContext(opt_level=3):
        cpu_pipeline(target)(from_onnx(path).mod)
    assert not failed


def test_products_of_computed_operands_with_a_quantized_result_are_scheduled():
    """Attention in a QDQ model (a turn detector's Whisper encoder): Q K^T of computed
    operands, its result quantized and dequantized again.  The fused function is
    scheduled (it was left as TVM's loops, 15x slower), and each value is within one
    quantization step of onnxruntime's (a product that lands at a half between two
    levels may round either way, as float sums in another order do)."""
    from memotvm.targets.cpu import cpu_pipeline, host_target

    node = helper.make_node
    model = _model([node("MatMul", ["q", "k"], ["m"]), node("QuantizeLinear", ["m", "s", "z"], ["u"]),
                    node("DequantizeLinear", ["u", "s", "z"], ["y"])],
                   [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", 2, 24, 16]),
                    helper.make_tensor_value_info("k", TensorProto.FLOAT, ["B", 2, 16, 24])],
                   {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8)}, ["B", 2, 24, 24], opset=18)
    with host_target() as target, tvm.transform.PassContext(opt_level=3):
        lowered = cpu_pipeline(target)(from_onnx(model).mod)
    product = next(f.script() for _, f in lowered.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in f.script())
    assert "T.vectorized" in product and "T.parallel" in product
    rng = np.random.default_rng(5)
    feeds = {"q": rng.standard_normal((3, 2, 24, 16)).astype(np.float32),
             "k": rng.standard_normal((3, 2, 16, 24)).astype(np.float32) / 4}
    got = memotvm.compile(model).run(feeds)[0]
    np.testing.assert_allclose(got, run_onnxruntime(model, feeds)[0], rtol=0, atol=0.05 * 1.0001)


# Edge values: NaN, infinities, beyond float32 exp's range, around 0, and ordinary ones.
EDGES = np.array([np.nan, np.inf, -np.inf, 100.0, 88.8, 88.7, -87.4, -87.3, -104.0, -200.0,
                  0.0, -0.0, 1e-30, -1e-7, 0.5, -3.25, 20.0, -20.0], np.float32)


@pytest.mark.parametrize("op", ["Exp", "Sigmoid", "Tanh"])
def test_exp_based_activations(op):
    x = np.concatenate([EDGES, np.random.default_rng(4).standard_normal(190).astype(np.float32) * 6])
    x = x.reshape(4, 2, 26)
    model = _model([helper.make_node(op, ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 26])], {}, ["T", "N", 26])
    got = memotvm.compile(model).run({"x": x}, check_finite=False)[0]
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = {"Exp": np.exp, "Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh}[op](x64)
        ref = ref.astype(np.float32).astype(np.float64)  # inf beyond float32's range
    assert np.array_equal(np.isnan(got), np.isnan(x))
    ok = ~np.isnan(x)
    # 2 ulp for exp (Cephes expf) and the few roundings on top (one of them into the
    # denormals below 2^-126, exact to 2^-149); tanh's (1 - e) / (1 + e) near 0 is
    # exact only to an absolute 1e-7 (TVM's own formula).
    np.testing.assert_allclose(got[ok], ref[ok], rtol=4e-7, atol=2.0 ** -148 if op == "Exp" else 1e-7)


# erf and GELU as polynomials (no libm call per element), over the edges, both sides of
# erf's split (0.875) and top (3.92), and ordinary values; GELU as ONNX's Gelu (opset 20)
# with and without approximate="tanh".
@pytest.mark.parametrize("op", ["Erf", "Gelu", "Gelu_tanh"])
def test_erf_and_gelu_as_polynomials(op):
    import math

    x = np.concatenate([EDGES, np.float32([0.87499994, 0.875, 3.9199998, 3.92, 3.93, -0.874, -1.3, 2.5]),
                        np.random.default_rng(5).standard_normal(182).astype(np.float32) * 2]).reshape(4, 2, 26)
    attrs = {"approximate": "tanh"} if op == "Gelu_tanh" else {}
    model = _model([helper.make_node(op.split("_")[0], ["x"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 26])], {}, ["T", "N", 26],
                   opset=20)
    compiled = memotvm.compile(model)
    lowered = compiled.executable.memotvm_lowered[0]
    assert not any("T.erf(" in f.script() or "T.tanh(" in f.script() for _, f in lowered.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc))
    got = compiled.run({"x": x}, check_finite=False)[0].astype(np.float64)
    x64 = x.astype(np.float64)
    erf = np.vectorize(lambda v: math.erf(v) if v == v else v)
    if op == "Erf":
        ref = erf(x64)
    elif op == "Gelu":
        ref = x64 * 0.5 * (1 + erf(x64 / math.sqrt(2)))
    else:
        ref = x64 * 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    ok = np.isfinite(ref)
    # erf: within 3 ulp (scripts/fit_erf.py measures 1.9 before the roundings of exp);
    # GELU: those of erf and the products after it, and 1 + erf(x) is exact only to a
    # few ulp of 1 (x well below 0 leaves a difference of nearly equal numbers), scaled
    # by x / 2; in the tanh form, tanh's absolute 1e-7 near 0 (test_exp_based_activations).
    rtol = {"Erf": 3 * 2.0 ** -24, "Gelu": 6 * 2.0 ** -24, "Gelu_tanh": 6 * 2.0 ** -24}[op]
    atol = {"Erf": 2.0 ** -149, "Gelu": 4 * 2.0 ** -24 * np.abs(x64[ok]), "Gelu_tanh": 1e-7 * np.abs(x64[ok])}[op]
    assert (np.abs(got[ok] - ref[ok]) <= rtol * np.abs(ref[ok]) + atol).all(), \
        np.max(np.abs(got[ok] - ref[ok]) / np.abs(ref[ok]).clip(1e-38))
    # (onnxruntime's GELU rounds 1 + erf or 1 + tanh too: a few ulp of 1 times x / 2)
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=1e-6,
                               atol=1e-7 if op == "Erf" else 1e-6)


# Sums and means over consecutive axes add their terms in float64, so each result is
# float32's rounding of the exact one (onnxruntime's were 3-17 ulp away on these):
# trailing axes (global average pooling over a symbolic map, everything to a scalar, the
# last axis of a symbolic batch) and axes with others after them (the frames of [N, T,
# C], in blocks of 64 columns and a partial one; the first axis; two middle ones); a sum
# of fewer than 64 terms keeps TVM's loop nest (a few ulp at most).
@pytest.mark.parametrize("op,attrs,dims,shape,rewritten", [
    ("GlobalAveragePool", {}, ["N", 32, "H", "W"], (2, 32, 160, 161), True),
    ("ReduceMean", dict(axes=[2, 3], keepdims=1), ["N", 32, "H", "W"], (1, 32, 37, 45), True),
    ("ReduceSum", dict(keepdims=0), [4, 3000], (4, 3000), True),
    ("ReduceMean", dict(axes=[-1], keepdims=0), ["N", "T", 300], (2, 7, 300), True),
    ("ReduceMean", dict(axes=[1], keepdims=0), ["N", "T", 80], (2, 3000, 80), True),
    ("ReduceMean", dict(axes=[1], keepdims=1), ["N", "T", "C"], (1, 500, 130), True),
    ("ReduceMean", dict(axes=[0], keepdims=0), ["T", 5], (2000, 5), True),
    ("ReduceMean", dict(axes=[1, 2], keepdims=0), [2, 40, 50, 7], (2, 40, 50, 7), True),
    ("ReduceMean", dict(axes=[1], keepdims=0), ["N", 40, 5], (2, 40, 5), False),
])
def test_sums_over_consecutive_axes_are_rounded_once(op, attrs, dims, shape, rewritten):
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], {}, None)
    x = (np.random.default_rng(6).standard_normal(shape) + 1).astype(np.float32)
    compiled = memotvm.compile(model)
    names = [gv.name_hint for gv, _ in compiled.executable.memotvm_lowered[0].functions_items()]
    assert any("_last_" in n or "_axes_" in n for n in names) == rewritten, names
    got = compiled.run({"x": x})[0]
    axes = (2, 3) if op == "GlobalAveragePool" else tuple(a % x.ndim for a in attrs.get("axes", range(x.ndim)))
    reduce = np.sum if op == "ReduceSum" else np.mean
    exact = reduce(x.astype(np.float64), axis=axes, keepdims=bool(attrs.get("keepdims", 1)))
    assert got.shape == exact.shape
    ulps = 0.5 if rewritten else 16
    assert (np.abs(got - exact) <= ulps * np.spacing(np.abs(exact).astype(np.float32))).all(), \
        np.max(np.abs(got - exact) / np.spacing(np.abs(exact).astype(np.float32)))


# Rows of 37 (two vectors and a tail) along the last axis (the row kernel) and along
# axis 1 (TVM's loop nests); 5 (only a tail) and 4096 (vectors only, a long sum).
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis, n", [(-1, 37), (1, 37), (-1, 5), (-1, 4096)])
def test_softmax(op, axis, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((3, 5, n)) * 4).astype(np.float32)
    x[0, 0, :3] = [60.0, -60.0, 0.0]
    model = _model([helper.make_node(op, ["x"], ["y"], axis=axis)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 5, n])], {}, ["T", 5, n])
    got = memotvm.compile(model).run({"x": x})[0]
    x64 = np.moveaxis(x.astype(np.float64), axis, -1)
    shifted = x64 - x64.max(-1, keepdims=True)
    total = np.exp(shifted).sum(-1, keepdims=True)
    ref = np.moveaxis(shifted - np.log(total) if op == "LogSoftmax" else np.exp(shifted) / total, -1, axis)
    # A few ulp of exp and of the sum (relative to the largest term), as onnxruntime.
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 if op == "LogSoftmax" else 2e-7)
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=4e-6, atol=4e-6)


def test_several_packed_products_and_row_softmaxes_in_one_model():
    """Each kernel its own symbol (two products by constants of different shapes, as in
    a model with attention, failed to compile: duplicate global symbol)."""
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((16, 24)).astype(np.float32), rng.standard_normal((24, 7)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Softmax", ["a"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["b"]), helper.make_node("LogSoftmax", ["b"], ["c"], axis=-1),
             helper.make_node("Softmax", ["b"], ["d"], axis=-1), helper.make_node("Add", ["c", "d"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 16])],
                   {"w1": w1, "w2": w2}, ["T", 7])
    x = rng.standard_normal((9, 16)).astype(np.float32)
    np.testing.assert_allclose(memotvm.compile(model).run({"x": x})[0],
                               run_onnxruntime(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_softmax_of_a_row_with_nan_is_nan_in_that_row_only():
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])], {}, ["N", 20])
    x = np.random.default_rng(6).standard_normal((3, 20)).astype(np.float32)
    x[1, 17] = np.nan
    got = memotvm.compile(model).run({"x": x}, check_finite=False)[0]
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()


def test_outputs_of_every_kind_and_borrowed_inputs():
    """bool, float16, int64 computed from shapes alone, 0-d; inputs at any alignment
    (TVM borrows 64-byte aligned ones), writeable or not, left unchanged; outputs that
    stay valid."""
    g = helper.make_graph(
        [helper.make_node("Less", ["x", "z"], ["b"]), helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
         helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0)], "kinds",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(n, t, None)
         for n, t in [("b", TensorProto.BOOL), ("h", TensorProto.FLOAT16), ("s", TensorProto.INT64), ("r", TensorProto.FLOAT)]])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compiled = memotvm.compile(model)
    z = np.full((2, 3), 2.5, np.float32)
    storage = np.zeros(64, np.float32)
    first = None
    for offset in range(16):  # 4-byte steps over 64 bytes: exactly one is aligned
        for writeable in (True, False):  # read-only arrays cannot be borrowed
            x = storage[offset:offset + 6].reshape(2, 3)
            x[:] = np.arange(6, dtype=np.float32).reshape(2, 3) * (offset + 1)
            before = x.copy()
            x.flags.writeable = writeable
            got = compiled.run({"x": x, "z": z})
            expected = run_onnxruntime(model, {"x": x, "z": z})
            for g_, e in zip(got, expected):
                assert g_.dtype == e.dtype and g_.shape == e.shape and np.array_equal(g_, e)
            assert np.array_equal(x, before)
            if first is None:
                first, first_expected = got, expected
    for g_, e in zip(first, first_expected):  # not overwritten by later calls
        assert np.array_equal(g_, e)


def _conv_case(kind):
    rng = np.random.default_rng(len(kind))
    if kind.startswith("conv1d") and kind != "conv1d_static":
        groups = {"conv1d": 1, "conv1d_groups": 2, "conv1d_depthwise": 12}[kind]
        w = (rng.standard_normal((12, 12 // groups, 3)) / 5).astype(np.float32)
        attrs = dict(pads=[2, 1], strides=[2], dilations=[2], group=groups)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
        inits = {"w": w, "b": rng.standard_normal(12).astype(np.float32)}
        dims, x = ["N", 12, "L"], rng.standard_normal((3, 12, 37)).astype(np.float32)
    elif kind == "conv1d_static":  # static length: im2col and the packed matmul
        w = (rng.standard_normal((20, 3, 5)) / 5).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[3, 1], strides=[2], dilations=[2])]
        inits = {"w": w, "b": rng.standard_normal(20).astype(np.float32)}
        dims, x = ["N", 3, 41], rng.standard_normal((3, 3, 41)).astype(np.float32)
    elif kind == "conv2d_static":
        w = (rng.standard_normal((33, 4, 3, 2)) / 6).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])]
        inits = {"w": w}
        dims, x = [2, 4, 9, 13], rng.standard_normal((2, 4, 9, 13)).astype(np.float32)
    elif kind == "conv2d":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 1, 2])]
        inits = {"w": (rng.standard_normal((5, 4, 3, 3)) / 6).astype(np.float32)}
        dims, x = ["N", 4, "H", 19], rng.standard_normal((2, 4, 9, 19)).astype(np.float32)
    elif kind == "avgpool":
        nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1])]
        inits, dims, x = {}, ["N", 6, "L"], rng.standard_normal((3, 6, 25)).astype(np.float32)
    else:  # reduce_mean over the last two axes
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)]
        inits, dims, x = {}, ["N", 6, 25], rng.standard_normal((3, 6, 25)).astype(np.float32)
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], inits, None, opset=17), x


# Convolutions (groups, strides, dilations, asymmetric padding) and poolings: TVM's
# loop nests with several reduction axes, scheduled by the host schedule; with static
# channels and spatial sizes, one group: im2col and the packed matmul (host_conv).
@pytest.mark.parametrize("kind", ["conv1d", "conv1d_groups", "conv1d_depthwise", "conv2d",
                                  "conv1d_static", "conv2d_static", "avgpool", "reduce_mean"])
def test_convolutions_and_poolings(kind):
    from memotvm.frontend import from_onnx
    from memotvm.targets.host_conv import ConvolutionsAsMatmuls

    model, x = _conv_case(kind)
    np.testing.assert_allclose(memotvm.compile(model).run({"x": x})[0], run_onnxruntime(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
    rewritten = ConvolutionsAsMatmuls()(from_onnx(model).mod)
    # (the windows come from an im2col, or for stride 1 from a zero-bordered copy)
    rewritten_as_product = any(str(gv.name_hint).startswith(("im2col", "bordered"))
                               for gv, _ in rewritten.functions_items())
    assert rewritten_as_product == (kind.endswith("_static") or kind in ("conv1d", "conv2d"))


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("n", [4, 16, 20, 37])
def test_row_blocks_hold_each_weight_once_where_the_kernel_reads_it(n, lanes):
    """Every R[d, j, k] is at the position the kernel's BlockRow reads, once, for every
    vector width."""
    R = np.random.default_rng(n).standard_normal((2, 12, n)).astype(np.float32)
    packed = pack_row_blocks(R, lanes)
    assert packed.shape == (2, 3, 4 * n)
    seen = np.zeros(packed.shape, int)
    full = n // lanes * lanes
    for d in range(2):
        for j in range(12):
            row = BlockRow(None, d, j // 4, j % 4, n, lanes)
            for k in range(n):
                at = row.index((k // lanes, k % lanes)) if k < full else row.index(k)
                assert packed[at] == R[d, j, k]
                seen[at] += 1
    assert (seen == 1).all()


def _with_run_time(model, name):
    """The same model with the weight ``name`` a graph input (kept as it is by the CPU
    target), and the weight's value."""
    from onnx import helper as oh
    out = type(model)()
    out.CopyFrom(model)
    weight = next(t for t in out.graph.initializer if t.name == name)
    out.graph.input.append(oh.make_tensor_value_info(name, weight.data_type, list(weight.dims)))
    kept = [t for t in out.graph.initializer if t.name != name]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, numpy_helper.to_array(weight)


def _packed_kernels(model, layout):
    """Whether the CPU target gives a recurrent kernel of ``model`` the weight layout
    ``layout`` ("_row_blocks" or "_input_panels", as the kernel's name says)."""
    mod = PackRecurrentWeights()(from_onnx(model).mod)
    return any(layout in str(f.attrs["global_symbol"]) for _, f in mod.functions_items() if f.attrs)


@pytest.mark.parametrize("op,hidden,batch,kwargs", [
    ("LSTM", 8, 1, {}),
    ("GRU", 36, 5, {"direction": "bidirectional", "attrs": {"linear_before_reset": 0}}),
    ("GRU", 20, 2, {"attrs": {"linear_before_reset": 1}, "sequence_lens": True}),
    ("RNN", 68, 3, {"direction": "reverse"}),
    ("LSTM", 6, 2, {}),  # not a multiple of the block: R stays as it is
    ("GRU", 8, 3, {"dtype": "float64"}),
    ("LSTM", 20, 1, {"dtype": "float16"}),
])
def test_unmodified_kernels_read_r_in_row_blocks_with_the_same_arithmetic(op, hidden, batch, kwargs):
    model = make_recurrent_model(op, 11, hidden, **kwargs)
    as_input, r = _with_run_time(model, "R")
    assert _packed_kernels(model, "_row_blocks") == (hidden % 4 == 0)
    assert not _packed_kernels(as_input, "_row_blocks")
    feeds = make_inputs(model, 9, batch, seed=hidden)
    got = memotvm.compile(model).run(feeds)
    plain = memotvm.compile(as_input).run(dict(feeds, R=r))
    for a, b in zip(got, plain):
        np.testing.assert_array_equal(a, b)
    if kwargs.get("dtype") != "float64":  # (onnxruntime has no float64 recurrent kernels)
        atol = 1e-3 if kwargs.get("dtype") == "float16" else 1e-5
        for a, b in zip(got, run_onnxruntime(model, feeds)):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=atol)


@pytest.mark.parametrize("op,input_size,hidden,batch,kwargs", [
    ("LSTM", 64, 64, 3, {}),  # whole panels of whole vectors
    ("GRU", 11, 5, 2, {"direction": "bidirectional", "sequence_lens": True}),  # 15 rows
    ("RNN", 3, 7, 1, {"direction": "reverse"}),  # 7 rows: one partial vector
    ("LSTM", 40, 24, 5, {"direction": "bidirectional", "peepholes": True}),  # 96 rows
    ("LSTM", 20, 20, 2, {"dtype": "float16"}),
    ("GRU", 8, 8, 2, {"dtype": "float64"}),  # float64: W stays as it is
])
def test_input_projection_reads_w_in_panels(op, input_size, hidden, batch, kwargs):
    """A constant W is packed in panels and the input projection is a register-tiled
    product (each W_j . x_t summed in order of k); a W given at run time keeps the lane
    sums.  Both agree with onnxruntime, and with each other within the rounding of two
    orders of summation."""
    model = make_recurrent_model(op, input_size, hidden, **kwargs)
    as_input, w = _with_run_time(model, "W")
    assert _packed_kernels(model, "_input_panels") == (kwargs.get("dtype") != "float64")
    assert not _packed_kernels(as_input, "_input_panels")
    feeds = make_inputs(model, 9, batch, seed=hidden)
    got = memotvm.compile(model).run(feeds)
    lanes_summed = memotvm.compile(as_input).run(dict(feeds, W=w))
    # float32 sums of at most 64 products below 1 in magnitude: each order is within
    # 64 x 2^-24 of the exact sum, and the gate functions do not enlarge differences.
    close = 1e-3 if kwargs.get("dtype") == "float16" else 8e-6
    for a, b in zip(got, lanes_summed):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=0, atol=close)
    if kwargs.get("dtype") != "float64":  # (onnxruntime has no float64 recurrent kernels)
        atol = 1e-3 if kwargs.get("dtype") == "float16" else 1e-5
        for a, b in zip(got, run_onnxruntime(model, feeds)):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=atol)


def _conv64(x, w, pads, strides, dilations):
    """Convolution (one group, NCW/NCHW) in float64, from its definition: the reference
    of the channel-by-channel form."""
    nd = x.ndim - 2
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[a], pads[nd + a]) for a in range(nd)])
    taps = w.shape[2:]
    outs = [(x.shape[2 + a] - dilations[a] * (taps[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
    y = np.zeros((x.shape[0], w.shape[0], *outs))
    for t in np.ndindex(*taps):
        window = x[(slice(None), slice(None), *[
            slice(t[a] * dilations[a], t[a] * dilations[a] + strides[a] * (outs[a] - 1) + 1, strides[a])
            for a in range(nd)])]
        y += np.einsum("nc...,oc->no...", window, w[(slice(None), slice(None), *t)].astype(np.float64))
    return y


# Channel by channel (memotvm.targets.host_conv.build_conv_matmul): static sizes with
# many panels and a partial last vector, strides, dilations and asymmetric padding in
# both axes; a symbolic width run at several widths (down to a single position, and one
# whose positions end inside a vector); a symbolic height and width (an image), and a
# pointwise convolution over them (its im2col a copy); a long 1-d convolution; weights
# stored as bfloat16 and int8 (the reference convolves the weights they hold).  All
# but the pointwise one read their windows in place (host_conv.Windows), the "shifted"
# cases with stride 1: static and symbolic images (down to one output column, where
# every vector holds columns that are not stored), dilations, asymmetric padding, and
# a 1-d one padded by more than a vector on one side only.
@pytest.mark.parametrize("case,precision", [("2d_static", "fp32"), ("2d_width", "fp32"), ("1d_static", "fp32"),
                                            ("2d_image", "fp32"), ("2d_pointwise", "fp32"),
                                            ("2d_width", "bf16"), ("2d_static", "int8"),
                                            ("2d_shifted_static", "fp32"), ("2d_shifted_image", "fp32"),
                                            ("1d_shifted", "fp32"), ("2d_shifted_image", "int8"),
                                            ("2d_strided_image", "fp32")])
def test_convolutions_channel_by_channel(case, precision):
    from memotvm.precision import store_weights
    from memotvm.targets.cpu import host_target
    from memotvm.targets.host_conv import ConvolutionsAsMatmuls

    rng = np.random.default_rng(len(case))
    if case == "1d_static":
        w = rng.standard_normal((9, 4, 5)).astype(np.float32)
        attrs = dict(pads=[4, 2], strides=[2], dilations=[3])
        dims, widths = ["N", 4, 300], [300]
    elif case == "1d_shifted":
        w = rng.standard_normal((9, 4, 5)).astype(np.float32)
        attrs = dict(pads=[19, 0], strides=[1], dilations=[3])
        dims, widths = ["N", 4, 300], [300]
    elif case == "2d_strided_image":  # strides 2 and 3, a dilation that meets the stride
        w = rng.standard_normal((10, 3, 3, 3)).astype(np.float32)
        attrs = dict(pads=[1, 2, 0, 1], strides=[2, 3], dilations=[1, 2])
        dims, widths = ["N", 3, "H", "W"], [(2, 3), (7, 10), (20, 33), (21, 70)]
    elif case.startswith("2d_shifted"):
        w = rng.standard_normal((10, 3, 3, 2)).astype(np.float32)
        attrs = dict(pads=[1, 0, 2, 1], strides=[1, 1], dilations=[2, 1])
        dims, widths = {"2d_shifted_static": (["N", 3, 21, 70], [70]),
                        "2d_shifted_image": (["N", 3, "H", "W"], [(2, 1), (3, 7), (9, 16), (21, 70)])}[case]
    elif case == "2d_pointwise":
        w = rng.standard_normal((10, 6, 1, 1)).astype(np.float32)
        attrs = dict(pads=[0, 0, 0, 0], strides=[1, 1], dilations=[1, 1])
        dims, widths = ["N", 6, "H", "W"], [(1, 1), (3, 5), (16, 9), (20, 33)]
    else:
        w = rng.standard_normal((10, 3, 3, 2)).astype(np.float32)
        attrs = dict(pads=[1, 0, 2, 1], strides=[1, 2], dilations=[2, 1])
        dims, widths = {"2d_static": (["N", 3, 21, 70], [70]), "2d_width": (["N", 3, 21, "W"], [1, 2, 15, 70]),
                        "2d_image": (["N", 3, "H", "W"], [(2, 1), (3, 7), (9, 16), (21, 70)])}[case]
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], {"w": w, "b": b}, None)
    with host_target():
        rewritten = ConvolutionsAsMatmuls()(from_onnx(model).mod)
    names = [str(gv.name_hint) for gv, _ in rewritten.functions_items()]
    assert any(n.startswith("conv_matmul") for n in names), names
    # (every one but the pointwise convolution reads its windows in place)
    assert any(n.startswith("bordered") for n in names) == (case != "2d_pointwise"), names
    compiled = memotvm.compile(model, precision={"default": "fp32", "products": precision})
    stored = store_weights(w.reshape(w.shape[0], -1), precision)
    held = stored.values.astype(np.float32) * (1 if stored.scales is None else stored.scales[:, None])
    w = held.reshape(w.shape).astype(np.float32)
    for width in widths:
        spatial = width if isinstance(width, tuple) else (*dims[2:-1], width)
        x = rng.standard_normal((2, dims[1], *spatial)).astype(np.float32)
        got = compiled.run({"x": x})[0]
        pads, strides, dilations = attrs["pads"], attrs["strides"], attrs["dilations"]
        expected = _conv64(x, w, pads, strides, dilations) + b.reshape(-1, *[1] * (x.ndim - 2))
        k = w[0].size
        bound = (k + 1) * 2.0 ** -24 * (_conv64(np.abs(x), np.abs(w), pads, strides, dilations)
                                        + np.abs(b).reshape(-1, *[1] * (x.ndim - 2))) + 1e-30
        assert got.shape == expected.shape
        assert (np.abs(got - expected) <= bound).all(), (width, np.abs(got - expected).max())


def _conv_transpose64(x, w, pads, strides, dilations, output_padding):
    """Transposed convolution (one group, NCW/NCHW, W [C, O, *taps]) in float64, from
    its definition: every input position scatters W times itself over its taps."""
    nd = x.ndim - 2
    ins, taps = x.shape[2:], w.shape[2:]
    outs = [(ins[a] - 1) * strides[a] - pads[a] - pads[nd + a] + dilations[a] * (taps[a] - 1)
            + output_padding[a] + 1 for a in range(nd)]
    full = [max((ins[a] - 1) * strides[a] + dilations[a] * (taps[a] - 1) + 1, pads[a] + outs[a])
            for a in range(nd)]
    y = np.zeros((x.shape[0], w.shape[1], *full))
    for t in np.ndindex(*taps):
        place = tuple(slice(t[a] * dilations[a], t[a] * dilations[a] + strides[a] * (ins[a] - 1) + 1, strides[a])
                      for a in range(nd))
        y[(slice(None), slice(None), *place)] += np.einsum(
            "nc...,co->no...", x.astype(np.float64), w[(slice(None), slice(None), *t)].astype(np.float64))
    return y[(slice(None), slice(None), *[slice(pads[a], pads[a] + outs[a]) for a in range(nd)])]


# Transposed convolutions (memotvm.targets.host_conv_transpose): a detector's 2 x 2
# upsampling of stride 2 over a symbolic height and width; overlapping taps with
# asymmetric padding and output padding; a dilation and strides that differ per axis;
# 1-d over a symbolic length and over one frame with output padding past the last tap
# (positions no tap reaches stay zero).  Against the definition in float64: each output
# is a sum of at most C x taps float32 products, hence the bound.
@pytest.mark.parametrize("case", [
    dict(w=(24, 8, 2, 2), strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], out_pad=[0, 0],
         dims=["N", 24, "H", "W"], sizes=[(1, 1), (20, 17), (40, 40)]),
    dict(w=(5, 3, 3, 3), strides=[2, 2], pads=[1, 0, 1, 2], dilations=[1, 1], out_pad=[1, 0],
         dims=["N", 5, "H", "W"], sizes=[(2, 3), (7, 9)]),
    dict(w=(5, 3, 3, 2), strides=[1, 3], pads=[0, 1, 2, 0], dilations=[2, 1], out_pad=[0, 2],
         dims=[2, 5, 7, 9], sizes=[(7, 9)]),
    dict(w=(6, 4, 4), strides=[2], pads=[1, 1], dilations=[1], out_pad=[0],
         dims=["N", 6, "T"], sizes=[(1,), (11,), (64,)]),
    dict(w=(6, 4, 5), strides=[3], pads=[0, 2], dilations=[2], out_pad=[2],
         dims=[1, 6, 1], sizes=[(1,)]),
], ids=["upsample_2x2", "overlapping", "dilated", "1d_length", "1d_one_frame"])
def test_transposed_convolutions_as_products_and_col2im(case):
    from memotvm.targets.cpu import host_target
    from memotvm.targets.host_conv import ConvolutionsAsMatmuls

    rng = np.random.default_rng(len(case["sizes"]) + case["w"][0])
    w = rng.standard_normal(case["w"]).astype(np.float32)
    b = rng.standard_normal(w.shape[1]).astype(np.float32)
    attrs = dict(strides=case["strides"], pads=case["pads"], dilations=case["dilations"],
                 output_padding=case["out_pad"])
    model = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, case["dims"])], {"w": w, "b": b}, None)
    with host_target():
        rewritten = ConvolutionsAsMatmuls()(from_onnx(model).mod)
    names = [str(gv.name_hint) for gv, _ in rewritten.functions_items()]
    assert any(n.startswith("col2im") for n in names) and not any("transpose" in n for n in names), names
    compiled = memotvm.compile(model)
    bias = b.reshape(-1, *[1] * (len(case["dims"]) - 2))
    for sizes in case["sizes"]:
        x = rng.standard_normal((2 if case["dims"][0] == "N" else case["dims"][0], w.shape[0], *sizes)) \
            .astype(np.float32)
        got = compiled.run({"x": x})[0]
        reference = (case["pads"], case["strides"], case["dilations"], case["out_pad"])
        expected = _conv_transpose64(x, w, *reference) + bias
        bound = (w.shape[0] * np.prod(w.shape[2:]) + 1) * 2.0 ** -24 * (
            _conv_transpose64(np.abs(x), np.abs(w), *reference) + np.abs(bias)) + 1e-30
        assert got.shape == expected.shape
        assert (np.abs(got - expected) <= bound).all(), (sizes, np.abs(got - expected).max())
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def _conv_transpose_model(dims, **attrs):
    w = np.random.default_rng(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    return _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", **attrs)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], {"w": w}, None)


# output_shape (which TVM's converter ignored: a 9 x 9 output where 10 x 8 was asked)
# sets the pads, the extra at the start unless auto_pad is SAME_UPPER, or zeros at the
# end where it asks for up to a stride more than the taps reach; as onnxruntime.
@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("output_shape", [[10, 8], [9, 9], [8, 7], [10, 10]])
def test_conv_transpose_output_shape_sets_the_pads_as_onnxruntime_does(auto_pad, output_shape):
    model = _conv_transpose_model([1, 4, 4, 4], strides=[2, 2], output_shape=output_shape, auto_pad=auto_pad)
    x = np.random.default_rng(4).standard_normal((1, 4, 4, 4)).astype(np.float32)
    got = memotvm.compile(model).run({"x": x})[0]
    expected = run_onnxruntime(model, {"x": x})[0]
    assert got.shape == expected.shape == (1, 3, *output_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_refusals_name_the_node_and_why():
    from memotvm.errors import InputError, UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"node 'up' \(ConvTranspose\): output_shape \[11, 9\] is "
                                                    r"inconsistent .* axis 2 can be at most 10 long"):
        memotvm.compile(_conv_transpose_model([1, 4, 4, 4], strides=[2, 2], output_shape=[11, 9]))
    with pytest.raises(UnsupportedModelError, match=r"output_shape \[8, 7\] with input sizes \(H, 4\) not known "
                                                    r"at compile time; fix them \(--shape\)"):
        memotvm.compile(_conv_transpose_model(["N", 4, "H", 4], strides=[2, 2], output_shape=[8, 7]))
    # Padding that crops more than the taps add leaves a short input no output position.
    model = memotvm.compile(_conv_transpose_model(["N", 4, "H", 4], pads=[3, 3, 0, 0]))
    assert model.run({"x": np.ones((1, 4, 2, 4), np.float32)})[0].shape == (1, 3, 1, 3)
    with pytest.raises(InputError, match=r"ConvTranspose node 'up': axis 2 of its input \(1, 4, 1, 4\) must be "
                                         r"at least 2 long: its padding 3 \+ 0 crops every output position"):
        model.run({"x": np.ones((1, 4, 1, 4), np.float32)})


# The zero-bordered copy that convolutions read their windows from
# (memotvm.targets.host_conv.build_bordered), along strides 2 and 3: a vector of a
# phase is read as one run of stride x lanes inputs and a shuffle, where that run lies
# inside the input, so every width from 1 to past 5 runs is copied, with pads that start
# a phase before, at and after the input's first position.  Against the phases taken
# from a padded numpy copy, position by position (a copy: exact).
@pytest.mark.parametrize("taps,strides,dilation,pads", [
    ((3,), (2,), (1,), (1, 1)), ((3,), (3,), (2,), (0, 2)), ((5, 3), (1, 2), (1, 1), (2, 1, 2, 0)),
    ((3, 3), (2, 3), (1, 2), (1, 2, 0, 1))], ids=["1d_s2", "1d_s3_dilated", "2d_s1x2", "2d_s2x3"])
def test_bordered_copy_along_strides(taps, strides, dilation, pads):
    from memotvm.targets.cpu import host_target
    from memotvm.targets.host_conv import Windows, build_bordered, output_sizes

    nd, channels = len(taps), 3
    windows = Windows(taps, strides, dilation)
    with host_target() as target:
        lib = tvm.build(tvm.IRModule({"main": build_bordered([channels] + [None] * nd, windows, list(pads))}),
                        target=target)
    # (the copy's row length as the kernel computes it, over symbolic sizes)
    sizes = [tvm.tirx.Var(f"size{a}", "int64") for a in range(nd)]
    symbolic_length = windows.length(output_sizes(sizes, taps, strides, list(pads), dilation))
    lanes, rng = vector_lanes(), np.random.default_rng(nd)
    for width in range(1, 5 * 3 * lanes + 4, 3):
        spatial = (5, width)[-nd:] if nd == 2 else (width,)
        if any(o < 1 for o in output_sizes(list(spatial), taps, strides, list(pads), dilation)):
            continue
        x = rng.standard_normal((2, channels, *spatial)).astype(np.float32)
        outs = output_sizes(list(spatial), taps, strides, list(pads), dilation)
        qs = [int(q) for q in windows.phase_sizes(outs)]
        analyzer = tvm.sym.Analyzer()
        for var, size in zip(sizes, spatial):
            analyzer.bind(var, size)
        length = int(analyzer.simplify(symbolic_length))
        padded = np.zeros((2, channels, *[s + pads[a] + pads[nd + a] + strides[a] * q
                                          for a, (s, q) in enumerate(zip(spatial, qs))]), np.float32)
        padded[(slice(None), slice(None), *[slice(pads[a], pads[a] + s) for a, s in enumerate(spatial)])] = x
        expected = np.zeros((2, channels, length), np.float32)
        plane = int(np.prod(qs))
        for p, phase in enumerate(windows.phases):
            picked = padded[(slice(None), slice(None), *[slice(phase[a], phase[a] + strides[a] * qs[a], strides[a])
                                                         for a in range(nd)])]
            expected[:, :, p * plane:(p + 1) * plane] = picked.reshape(2, channels, plane)
        got = tvm.runtime.empty((2, channels, length), "float32")
        lib["main"](tvm.runtime.tensor(x), got)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"width {width}")


# Depthwise convolutions (memotvm.targets.host_conv.build_depthwise): a
# 3 x 3 over a symbolic image down to 1 x 1 (every vector then holds columns that are
# not stored) with its bias, batch normalization and hard-swish fused into its stores;
# a dilated 5 x 5 with asymmetric padding over a static image; a 1-d one padded on one
# side only; one of stride 2 over images of odd and even sizes.  Against the definition
# in float64 (a sum of at most taps + 1 float32 terms, hence the bound), and against
# onnxruntime where an epilogue follows.
@pytest.mark.parametrize("case", [
    dict(w=(24, 1, 3, 3), pads=[1, 1, 1, 1], dilations=[1, 1], dims=["N", 24, "H", "W"],
         sizes=[(1, 1), (2, 3), (9, 16), (21, 70)], epilogue=True),
    dict(w=(16, 1, 5, 5), pads=[2, 1, 3, 4], dilations=[2, 1], dims=["N", 16, 17, 23], sizes=[(17, 23)]),
    dict(w=(8, 1, 5), pads=[4, 0], dilations=[1], dims=["N", 8, 300], sizes=[(300,)]),
    dict(w=(8, 1, 3, 3), pads=[1, 1, 1, 1], dilations=[1, 1], strides=[2, 2], dims=["N", 8, "H", "W"],
         sizes=[(1, 1), (2, 3), (9, 16), (20, 33)]),
], ids=["3x3_image_epilogue", "5x5_dilated", "1d", "stride2"])
def test_depthwise_convolutions(case):
    from memotvm.targets.cpu import host_target
    from memotvm.targets.host_conv import ConvolutionsAsMatmuls
    from memotvm.targets.host_conv_epilogue import FuseConvEpilogues

    rng = np.random.default_rng(len(case["dims"]))
    w = rng.standard_normal(case["w"]).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    strides = case.get("strides", [1] * (w.ndim - 2))
    attrs = dict(pads=case["pads"], dilations=case["dilations"], strides=strides, group=w.shape[0])
    node = helper.make_node
    nodes, inits = [node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"w": w, "b": b}
    if case.get("epilogue"):
        nodes = [node("Conv", ["x", "w", "b"], ["c"], **attrs),
                 node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"]),
                 node("HardSwish", ["n"], ["y"])]
        inits |= {"gamma": rng.standard_normal(w.shape[0]).astype(np.float32),
                  "beta": rng.standard_normal(w.shape[0]).astype(np.float32),
                  "mean": rng.standard_normal(w.shape[0]).astype(np.float32),
                  "var": rng.uniform(0.1, 2, w.shape[0]).astype(np.float32)}
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, case["dims"])], inits, None)
    with host_target():
        names = [str(gv.name_hint) for gv, _ in FuseConvEpilogues()(ConvolutionsAsMatmuls()(
            from_onnx(model).mod)).functions_items()]
    assert any(n.startswith("depthwise") for n in names), names
    if case.get("epilogue"):  # the bias, normalization and hard-swish in the stores
        assert [n for n in names if n.startswith("depthwise")][0].count("epilogue") == 1, names
        assert not any("hard" in n or "clip" in n or "batch_norm" in n for n in names), names
    compiled = memotvm.compile(model)
    for size in case["sizes"]:
        x = rng.standard_normal((2, w.shape[0], *size)).astype(np.float32)
        got = compiled.run({"x": x})[0]
        if case.get("epilogue"):
            np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
            continue
        def conv(x, w):  # channel by channel
            return np.concatenate([_conv64(x[:, c:c + 1], w[c:c + 1], case["pads"], strides, case["dilations"])
                                   for c in range(w.shape[0])], axis=1)
        bias = b.reshape(-1, *[1] * len(size))
        expected = conv(x, w) + bias
        bound = (w[0].size + 1) * 2.0 ** -24 * (conv(np.abs(x), np.abs(w)) + np.abs(bias)) + 1e-30
        assert got.shape == expected.shape
        assert (np.abs(got - expected) <= bound).all(), (size, np.abs(got - expected).max())


# Clip by constant bounds imports as Relax's clip (so that it can join a convolution's
# epilogue): both bounds, one left out, a NaN bound (no bound, as onnxruntime), the
# attributes of opset 6; a lower bound above the upper one keeps TVM's converter (ONNX
# then gives the upper bound everywhere).  Each against onnxruntime, exactly.
@pytest.mark.parametrize("opset,bounds", [(13, (0.0, 6.0)), (13, (None, 2.0)), (13, (np.nan, 1.0)),
                                          (7, (-1.0, 1.5)), (13, (3.0, 1.0))])
def test_clip_by_constant_bounds(opset, bounds):
    inits, names = {}, ["x"]
    for name, bound in zip(["lo", "hi"], bounds):
        if opset >= 11:
            if bound is not None:
                inits[name] = np.array(bound, np.float32)
            names.append(name if bound is not None else "")
    attrs = {} if opset >= 11 else {"min": bounds[0], "max": bounds[1]}
    model = _model([helper.make_node("Clip", names, ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])], inits, ["N", 5],
                   opset=opset)
    clips = [b.value for b in from_onnx(model).mod["main"].body.blocks[0].bindings
             if isinstance(b.value, tvm.relax.Call) and b.value.op == tvm.ir.Op.get("relax.clip")]
    assert len(clips) == (bounds[0] is None or not bounds[0] > bounds[1]), clips
    x = (np.random.default_rng(0).standard_normal((3, 5)) * 4).astype(np.float32)
    np.testing.assert_array_equal(memotvm.compile(model).run({"x": x})[0], run_onnxruntime(model, {"x": x})[0])


def _epilogue_model(case):
    """A 3 x 3 convolution over a symbolic image (8 -> 8 channels) followed by the
    elementwise work of ``case``; the model's outputs and its extra initializers."""
    rng = np.random.default_rng(7)
    node = helper.make_node
    inits = {"w": (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32),
             "b": rng.standard_normal(8).astype(np.float32),
             "scale": rng.standard_normal((8, 1, 1)).astype(np.float32),
             "shift": rng.standard_normal((1, 8, 1, 1)).astype(np.float32),
             "sqrt2": np.array(1.4142135, np.float32), "one": np.array(1.0, np.float32),
             "half": np.array(0.5, np.float32)}
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    outputs = ["y"]
    if case == "gelu":  # as PaddleOCR exports it: the output used twice
        nodes += [node("Div", ["c", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
                  node("Add", ["e", "one"], ["f"]), node("Mul", ["c", "f"], ["g"]),
                  node("Mul", ["g", "half"], ["y"])]
    elif case == "hardswish":
        nodes += [node("HardSigmoid", ["c"], ["s"], alpha=1 / 6, beta=0.5), node("Mul", ["c", "s"], ["y"])]
    elif case == "affine_relu":  # a batch normalization folded into a rescale
        nodes += [node("Mul", ["c", "scale"], ["m"]), node("Add", ["m", "shift"], ["a"]),
                  node("Relu", ["a"], ["y"])]
    elif case == "batch_norm":  # a convolution without bias, normalized (PP-OCRv3's form)
        nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                 node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-3),
                 node("Relu", ["n"], ["y"])]
        inits |= {"gamma": rng.standard_normal(8).astype(np.float32), "beta": rng.standard_normal(8).astype(np.float32),
                  "mean": rng.standard_normal(8).astype(np.float32),
                  "var": rng.uniform(0.1, 2, 8).astype(np.float32)}
    elif case == "residual":  # the input added back, then ReLU
        nodes += [node("Add", ["x", "c"], ["r"]), node("Relu", ["r"], ["y"])]
    elif case == "silu_leaky":
        nodes += [node("Sigmoid", ["c"], ["s"]), node("Mul", ["s", "c"], ["m"]),
                  node("LeakyRelu", ["m"], ["l"], alpha=0.1), node("Tanh", ["l"], ["y"])]
    elif case == "used_elsewhere":  # c + 1 is an output too: the group ends with it
        nodes += [node("Add", ["c", "one"], ["p"]), node("Relu", ["p"], ["y"])]
        outputs = ["y", "p"]
    elif case == "computed_operand":  # times a tensor of another shape: the bias alone
        nodes += [node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1), node("Mul", ["c", "m"], ["y"])]
    dims = ["N", 8, "H", "W"]
    graph = helper.make_graph(nodes, "epilogue", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# Each convolution's bias and the elementwise work after it computed where it stores
# its output (memotvm.targets.host_conv_epilogue): the same operations in the same
# order as TVM's legalization of the unfused graph, so the results are the unfused
# compile's up to the rounding of a multiply and an add contracted into one fused
# multiply-add in one and not the other, and agree with onnxruntime to float32
# rounding.
# (Four of the epilogues run with the slow tests: each case compiles a network.)
@pytest.mark.parametrize("case,fused", [("gelu", 7), pytest.param("hardswish", 6, marks=pytest.mark.slow),
                                        pytest.param("affine_relu", 5, marks=pytest.mark.slow),
                                        pytest.param("batch_norm", 4, marks=pytest.mark.slow), ("residual", 4),
                                        pytest.param("silu_leaky", 6, marks=pytest.mark.slow),
                                        ("used_elsewhere", 3), ("computed_operand", 2)])
def test_conv_epilogues(case, fused, monkeypatch):
    from memotvm.targets import host_conv_epilogue
    from memotvm.targets.cpu import host_target
    from memotvm.targets.host_conv import ConvolutionsAsMatmuls

    model = _epilogue_model(case)
    with host_target():
        mod = host_conv_epilogue.FuseConvEpilogues()(ConvolutionsAsMatmuls()(from_onnx(model).mod))
    calls = [b.value for block in mod["main"].body.blocks for b in block.bindings]
    products = [c for c in calls if isinstance(c, tvm.relax.Call) and c.op == tvm.ir.Op.get("relax.call_tir")
                and str(c.args[0].name_hint).startswith("conv_matmul")]
    assert len(products) == 1
    # the convolution, its bias and the fused operations (``fused`` bindings in the
    # imported graph) are one call after the im2col
    assert len(calls) == len(from_onnx(model).mod["main"].body.blocks[0].bindings) + 2 - fused, case
    assert "epilogue" in str(products[0].args[0].name_hint)
    fused_model = memotvm.compile(model)
    monkeypatch.setattr(host_conv_epilogue, "FuseConvEpilogues", lambda: tvm.transform.Sequential([]))
    unfused_model = memotvm.compile(model)
    rng = np.random.default_rng(1)
    for size in [(1, 1), (5, 9), (17, 40)]:
        x = rng.standard_normal((2, 8, *size)).astype(np.float32)
        got, unfused = fused_model.run({"x": x}), unfused_model.run({"x": x})
        for a, b, ref in zip(got, unfused, run_onnxruntime(model, {"x": x})):
            # (a contracted x * s + t rounds once where the other rounds x * s too: an
            # ulp of the product, up to about 16 here, where the sum cancels)
            np.testing.assert_allclose(a, b, rtol=2.5e-7, atol=2e-6)
            np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5)


# An expensive formula is not inlined into a consumer that reads its input more than
# once (leaky ReLU's Select(x > 0, x, alpha * x)): the sigmoid of x * sigmoid(x) would
# be computed three times in the leaky ReLU and LLVM took two minutes to compile the
# copies.  Each formula is computed once per element, and the result is onnxruntime's.
def test_formula_not_copied_into_a_consumer_that_reads_it_twice():
    from memotvm.targets.cpu import cpu_pipeline, host_target

    node = helper.make_node
    # (32 columns: two vectors, no scalar rest whose loop would copy each formula again)
    model = _model([node("Sigmoid", ["x"], ["s"]), node("Mul", ["s", "x"], ["m"]),
                    node("LeakyRelu", ["m"], ["l"], alpha=0.1), node("Tanh", ["l"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])], {}, ["N", 32])
    with host_target() as target, tvm.transform.PassContext(opt_level=3):
        lowered = cpu_pipeline(target)(from_onnx(model).mod)
    # (the Cephes exp polynomial's first coefficient: once in the sigmoid, once in the
    # tanh; and the function scheduled, not left as TVM's loops)
    scripts = "".join(f.script() for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert scripts.count("0.000198756915") == 2 and "T.vectorized" in scripts
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32) * 4
    got = memotvm.compile(model).run({"x": x})[0]
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})[0], rtol=2e-6, atol=2e-7)

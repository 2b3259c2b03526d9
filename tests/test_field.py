"""Models shaped like the ones packages ship (tests/fixtures/field, made by
scripts/make_field_fixtures.py), each against onnxruntime; and the preparation steps
that make them compile: constant folding, fixed inputs, If with recurrent branches,
quantized recurrent layers, Cast of shapes to bool, a scripted decoder's loop.

Tolerances: 1e-5 absolute where memotvm and onnxruntime compute the same float32 graph
(outputs are O(1); the two sum products in different orders, measured differences are
below 3e-7); the quantized model's is onnxruntime's own quantization error (see
test_quantized_lstm_within_onnxruntimes_quantization_error).
"""

import os
import warnings
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto as T
from onnx import helper as h
from onnx.reference import ReferenceEvaluator
from tvm import relax

import memotvm
from memotvm.cli import main as cli_main
from memotvm.errors import ConfigError, NothingToMemoizeWarning, UnsupportedModelError
from memotvm.frontend import from_onnx
from memotvm.frontend.folding import ConstantFolding, bind_inputs

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")
FLOAT_TOL = 1e-5


def path(name):
    return os.path.join(FIELD, f"{name}.onnx")


def feeds(name):
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    return {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}


def onnxruntime(model, inputs):
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, inputs)


def max_diff(got, want):
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - w))) for g, w in zip(got, want))


@pytest.mark.parametrize("name", ["crnn_recognizer", "gru_denoiser"])
def test_field_model_matches_onnxruntime(name):
    inputs = feeds(name)
    model = memotvm.compile(path(name))
    assert max_diff(model.run(inputs), onnxruntime(path(name), inputs)) < FLOAT_TOL
    memoized = memotvm.compile(path(name), memo=0.2)
    memoized.run(inputs)
    assert memoized.last_stats.reuse > 0


def test_a_scripted_greedy_decoder_matches_onnxruntime():
    """torch.jit.script's export of a decoder that steps an LSTM per token and collects
    its logits and outputs in lists: a Loop whose body runs the LSTM node, and ONNX
    sequences stacked and concatenated after it (rewritten as scan outputs)."""
    inputs = feeds("greedy_decoder")
    model = memotvm.compile(path("greedy_decoder"))
    rng = np.random.default_rng(3)
    for steps, batch in [(12, 2), (1, 1), (25, 3)]:
        if batch != 2:
            inputs = {"h": rng.normal(0, 0.5, (1, batch, 32)).astype(np.float32),
                      "c": rng.normal(0, 0.5, (1, batch, 32)).astype(np.float32)}
        inputs["steps"] = np.array(steps, np.int64)
        got, want = model.run(inputs), onnxruntime(path("greedy_decoder"), inputs)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert max_diff(got, want) < FLOAT_TOL


def test_a_scripted_translator_with_attention_matches_onnxruntime():
    """A bidirectional GRU encoder (memoizable) and a GRU decoder stepped per token in a
    Loop with attention over the encoder's outputs, tokens appended to a growing tensor,
    stopping early where every sequence has ended: the same tokens as onnxruntime."""
    name = "seq2seq_attention"
    model = memotvm.compile(path(name))
    rng = np.random.default_rng(4)
    cases = [feeds(name)] + [{"source": rng.integers(2, 30, (batch, length)).astype(np.int64),
                              "max_length": np.array(steps, np.int64)}
                             for batch, length, steps in [(1, 12, 20), (3, 5, 0), (4, 30, 40)]]
    for inputs in cases:
        got, want = model.run(inputs), onnxruntime(path(name), inputs)
        np.testing.assert_array_equal(got[0], want[0])
    with pytest.warns(NothingToMemoizeWarning, match=r"node\(s\) '/GRU_1' run in the body of a Loop"):
        memoized = memotvm.compile(path(name), memo=0.2)
    memoized.run(cases[0])
    assert [loop.name for loop in memoized.loops] == ["/GRU"] and memoized.last_stats.reuse > 0


@pytest.mark.slow
def test_on_the_accelerator_a_translators_stepped_decoder_stays_on_the_host():
    inputs = feeds("seq2seq_attention")
    model = memotvm.compile(path("seq2seq_attention"), target="accel")
    np.testing.assert_array_equal(model.run(inputs)[0], onnxruntime(path("seq2seq_attention"), inputs)[0])
    assert [program.loop.name for program in model.programs] == ["/GRU"]
    assert [layer.name for layer in model.last_cost.layers] == ["/GRU"]


@pytest.mark.parametrize("name", ["vad_stream", "crnn_recognizer", "gru_denoiser", "quantized_lstm"])
def test_folding_keeps_the_models_meaning(name):
    """The folded model, run by onnxruntime, gives what the original gives: folding
    replaces computations by their values and nothing else."""
    inputs = feeds(name)
    original = onnx.load(path(name))
    folded = ConstantFolding()(original)
    assert max_diff(onnxruntime(folded, inputs), onnxruntime(path(name), inputs)) == 0
    assert len(folded.graph.node) <= len(original.graph.node)


def test_vad_with_the_sample_rate_fixed_folds_its_pads_and_branch():
    inputs = feeds("vad_stream")
    folded = ConstantFolding()(bind_inputs(onnx.load(path("vad_stream")), {"sr": 16000}))
    ops = [n.op_type for n in folded.graph.node]
    assert "If" not in ops and "LSTM" in ops
    assert not {"ConstantOfShape", "Equal"} & set(ops)  # the pads' computation is gone
    pad = next(n for n in folded.graph.node if n.op_type == "Pad")
    assert pad.input[1] in {t.name for t in folded.graph.initializer}
    for sr in (16000,):  # 8000: test_cli_fix_binds_an_input
        model = memotvm.compile(path("vad_stream"), fixed_inputs={"sr": sr})
        assert model.input_names == ["input", "state"]
        want = onnxruntime(path("vad_stream"), {**inputs, "sr": np.array(sr, np.int64)})
        assert max_diff(model.run({k: v for k, v in inputs.items() if k != "sr"}), want) < FLOAT_TOL


@pytest.mark.slow
def test_recurrent_nodes_in_if_branches_run_with_a_run_time_condition():
    """Both branches of the VAD's If compile; each call counts the taken branch's LSTM
    only, under its own name, with the same decisions as the model specialized to
    that branch."""
    inputs = feeds("vad_stream")
    runtime_if = memotvm.compile(path("vad_stream"), memo=0.3)
    for sr, taken, other in ((16000, "/wide/LSTM", "/narrow/LSTM"), (8000, "/narrow/LSTM", "/wide/LSTM")):
        call = {**inputs, "sr": np.array(sr, np.int64)}
        got = runtime_if.run(call)
        stats = runtime_if.last_stats.per_gate
        assert sum(c.computed + c.reused for (node, *_), c in stats.items() if node == other) == 0
        assert sum(c.computed + c.reused for (node, *_), c in stats.items() if node == taken) > 0
        fixed = memotvm.compile(path("vad_stream"), memo=0.3, fixed_inputs={"sr": sr})
        want = fixed.run({k: v for k, v in inputs.items() if k != "sr"})
        assert max_diff(got, want) == 0
        assert {k: v for k, v in stats.items() if k[0] == taken} == dict(fixed.last_stats.per_gate)


def _recurrent_branch(rng, op, tag, hidden, inp):
    """An If branch (named ``tag``) whose value is ``op``(x).Y_h, with random weights;
    the node is named ``{op}_{tag}``."""
    gates = {"LSTM": 4, "GRU": 3}[op]
    w = h.make_tensor(f"W_{tag}", T.FLOAT, [1, gates * hidden, inp],
                      rng.normal(0, 0.5, gates * hidden * inp).astype(np.float32))
    r = h.make_tensor(f"R_{tag}", T.FLOAT, [1, gates * hidden, hidden],
                      rng.normal(0, 0.5, gates * hidden * hidden).astype(np.float32))
    outs = [f"Y_{tag}", f"Yh_{tag}"] + ([f"Yc_{tag}"] if op == "LSTM" else [])
    node = h.make_node(op, ["x", f"W_{tag}", f"R_{tag}"], outs, hidden_size=hidden, name=f"{op}_{tag}")
    return h.make_graph([node], tag, [], [h.make_tensor_value_info(f"Yh_{tag}", T.FLOAT, None)], [w, r])


def _if_model(op_then="LSTM", op_else="GRU", hidden=5, inp=3):
    """y = (flag ? LSTM(x) : GRU(x)).Y_h, the condition an input."""
    rng = np.random.default_rng(0)
    node = h.make_node("If", ["flag"], ["y"], then_branch=_recurrent_branch(rng, op_then, "then", hidden, inp),
                       else_branch=_recurrent_branch(rng, op_else, "else", hidden, inp))
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("flag", T.BOOL, []),
                                       h.make_tensor_value_info("x", T.FLOAT, ["T", 2, inp])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _matches_onnxruntime_counting_the_taken_branch(compiled, model):
    x = np.cumsum(np.random.default_rng(1).normal(0, 0.3, (6, 2, 3)), axis=0).astype(np.float32)
    for flag, counted in ((True, "LSTM_then"), (False, "GRU_else")):
        call = {"flag": np.array(flag), "x": x}
        assert max_diff(compiled.run(call), onnxruntime(model, call)) < FLOAT_TOL
        nodes = {node for (node, *_), c in compiled.last_stats.per_gate.items() if c.computed + c.reused}
        assert nodes == {counted}


def _recurrent_calls_by_function(mod) -> dict:
    """Relax function name -> how many recurrent kernels it calls itself."""
    from memotvm.passes.kernel_calls import recurrent_calls

    where = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            single = tvm.IRModule({gvar: func, **{g: f for g, f in mod.functions_items()
                                                 if not isinstance(f, relax.Function)}})
            where[gvar.name_hint] = len(recurrent_calls(single))
    return where


def test_if_with_recurrent_nodes_matches_onnxruntime_for_each_condition():
    model = _if_model()
    _matches_onnxruntime_counting_the_taken_branch(memotvm.compile(model, memo=0.0), model)


def test_only_the_taken_branch_runs_its_recurrent_node():
    """TVM's importer computes both branches before the If; SinkIntoBranches moves each
    branch's own computation, its recurrent kernel included, into a function the
    branch calls, and the results stay onnxruntime's for either condition."""
    from memotvm.frontend import from_onnx
    from memotvm.passes.branches import SinkIntoBranches

    model = _if_model()
    where = _recurrent_calls_by_function(SinkIntoBranches()(from_onnx(model).mod))
    assert where["main"] == 0 and sorted(v for k, v in where.items() if k.startswith("branch_")) == [1, 1]
    _matches_onnxruntime_counting_the_taken_branch(memotvm.compile(model), model)


def _nested_if_model(names_apart=True, hidden=5, inp=3):
    """y = flag ? (g ? LSTM_a(x) : LSTM_b(x)) : (g ? GRU_a(x) : GRU_b(x)), each Y_h: an
    outer If whose branches branch again (silero's sample rate, then a frame count).
    ``names_apart``: the inner branches named for their side, as exporters name them;
    else the two inner Ifs have branches of the same names, sizes and outputs (and
    initializers of the same names), which ONNX allows."""
    rng = np.random.default_rng(0)

    def inner(op, side):
        prefix = f"{side}_" if names_apart else ""
        node = h.make_node("If", ["g"], [f"y_{side}"],
                           then_branch=_recurrent_branch(rng, op, prefix + "a", hidden, inp),
                           else_branch=_recurrent_branch(rng, op, prefix + "b", hidden, inp))
        return h.make_graph([node], side, [], [h.make_tensor_value_info(f"y_{side}", T.FLOAT, None)])

    node = h.make_node("If", ["flag"], ["y"], then_branch=inner("LSTM", "lstm"),
                       else_branch=inner("GRU", "gru"))
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("flag", T.BOOL, []),
                                       h.make_tensor_value_info("g", T.BOOL, []),
                                       h.make_tensor_value_info("x", T.FLOAT, ["T", 2, inp])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("names_apart", [True, False])
def test_an_if_inside_a_branch_runs_only_when_its_branch_is_taken(names_apart):
    """TVM's importer computes both branches of the outer If before it, each with its own
    If; both inner Ifs ran on every call (the untaken side's kernels included).
    SinkIntoBranches moves each inner If into the outer branch that reads it: main holds
    the outer If alone, each side's function reaches only its own recurrent kernels, and
    every combination of conditions matches onnxruntime, counting only the node that ran
    (also where the two inner Ifs' branches have the same names: the import failed)."""
    from memotvm.passes.branches import SinkIntoBranches

    model = _nested_if_model(names_apart)
    mod = SinkIntoBranches()(from_onnx(model).mod)
    ifs = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: ifs.append(e) if isinstance(e, relax.If) else None)
    assert len(ifs) == 1

    def reached(expr) -> set:
        """The recurrent kernels that calling ``expr``'s functions may run."""
        names, seen, todo = set(), set(), [expr]
        while todo:
            called = []
            relax.analysis.post_order_visit(todo.pop(), lambda e: called.append(e)
                                            if isinstance(e, tvm.ir.GlobalVar) else None)
            for gvar in called:
                if gvar.name_hint not in seen:
                    seen.add(gvar.name_hint)
                    func = mod[gvar]
                    if isinstance(func, relax.Function):
                        todo.append(func.body)
                    elif func.attrs is not None and "memotvm.recurrent" in func.attrs:
                        names.add(gvar.name_hint)
        return names

    then_side, else_side = reached(ifs[0].true_branch), reached(ifs[0].false_branch)
    assert len(then_side) == len(else_side) == 2 and not then_side & else_side
    assert all("lstm" in name.lower() for name in then_side)
    assert all("gru" in name.lower() for name in else_side)
    compiled = memotvm.compile(model, memo=0.0)
    x = np.cumsum(np.random.default_rng(1).normal(0, 0.3, (6, 2, 3)), axis=0).astype(np.float32)
    for flag in (True, False):
        for g in (True, False):
            call = {"flag": np.array(flag), "g": np.array(g), "x": x}
            assert max_diff(compiled.run(call), onnxruntime(model, call)) < FLOAT_TOL
            ran = {node for (node, *_), c in compiled.last_stats.per_gate.items() if c.computed + c.reused}
            side = "lstm" if flag else "gru"
            assert ran == {f"{side.upper()}_" + (f"{side}_" if names_apart else "") + ("a" if g else "b")}


def test_vad_with_its_sample_rate_at_run_time_matches_onnxruntime_for_each_rate():
    inputs = feeds("vad_stream")
    plain = memotvm.compile(path("vad_stream"))
    for sr in (16000, 8000):
        call = {**inputs, "sr": np.array(sr, np.int64)}
        assert max_diff(plain.run(call), onnxruntime(path("vad_stream"), call)) < FLOAT_TOL


def _dequantized_by_hand(model):
    """``model`` with each DynamicQuantizeLSTM replaced by the float LSTM it quantizes,
    written here from the operator's definition (W, R stored transposed, per-direction
    scale and zero point), independently of memotvm's importer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        if node.op_type == "DynamicQuantizeLSTM":
            weights = []
            for q, scale, zero in ((1, 8, 9), (2, 10, 11)):
                values = consts[node.input[q]].astype(np.float32)
                s, z = consts[node.input[scale]], consts[node.input[zero]].astype(np.float32)
                w = ((values - z[:, None, None]) * s[:, None, None]).transpose(0, 2, 1)
                out.graph.initializer.append(onnx.numpy_helper.from_array(
                    np.ascontiguousarray(w, np.float32), node.input[q] + "_float"))
                weights.append(node.input[q] + "_float")
            node = h.make_node("LSTM", [node.input[0], *weights, *node.input[3:8]],
                               node.output, hidden_size=next(
                                   a.i for a in node.attribute if a.name == "hidden_size"))
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def test_quantized_lstm_computes_its_dequantized_weights_in_float():
    """onnxruntime's DynamicQuantizeLSTM quantizes the activations at every step; memotvm
    dequantizes the weights once and computes in float32.  It therefore equals the model
    with the LSTM's weights dequantized (to float32 rounding), and is closer to the float
    model that was quantized than onnxruntime's quantized kernels are (their distance
    depends on the CPU: 9.6e-4 with AVX-512 VNNI, 3.1e-2 on an AVX2-only CPU), hence
    within twice onnxruntime's own error of onnxruntime's quantized outputs."""
    inputs = feeds("quantized_lstm")
    model = memotvm.compile(path("quantized_lstm"))
    got = model.run(inputs)
    # onnx's reference: onnxruntime's integer kernels for ConvInteger and MatMulInteger
    # are not exact on CPUs without VNNI (they saturate pairs of products to int16).
    reference = ReferenceEvaluator(_dequantized_by_hand(onnx.load(path("quantized_lstm"))))
    assert max_diff(got, reference.run(None, inputs)) < FLOAT_TOL
    quantized = onnxruntime(path("quantized_lstm"), inputs)
    float_model = onnxruntime(path("tagger_float"), inputs)
    own_error = max_diff(quantized, float_model)
    assert max_diff(got, float_model) <= own_error
    assert max_diff(got, quantized) <= 2 * own_error
    memoized = memotvm.compile(path("quantized_lstm"), memo=0.2)
    memoized.run(inputs)
    assert {node for node, *_ in memoized.last_stats.per_gate} == {"/lstm/LSTM_quant"}
    assert memoized.last_stats.reuse > 0


def _quantize_static(model, path, **options):
    """``model`` (input x [1, 4, 20]) quantized by onnxruntime's quantize_static in the
    operator format, calibrated on 8 random inputs, written to ``path`` and loaded."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(13)
    onnx.save(model, path + ".float.onnx")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal((1, 4, 20)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(path + ".float.onnx", path, Batches(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)
    return onnx.load(path)


def _statically_quantized(path, per_channel, reduce_range):
    """A Conv -> LSTM -> MatMul model quantized by onnxruntime's quantize_static in the
    operator format (QLinearConv, QLinearMatMul), the convolution's quantized output
    made a graph output too."""
    rng = np.random.default_rng(11)
    tensors = {"cw": (8, 4, 3), "W": (1, 32, 8), "R": (1, 32, 8), "hw": (8, 5)}
    nodes = [h.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Transpose", ["r"], ["X"], perm=[2, 0, 1]),
             h.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=8),
             h.make_node("Squeeze", ["Y", "one"], ["Ys"]), h.make_node("MatMul", ["Ys", "hw"], ["out"])]
    graph = h.make_graph(
        nodes, "quantized", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 20])],
        [h.make_tensor_value_info("out", T.FLOAT, None)],
        [onnx.numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)
         for name, shape in tensors.items()] + [h.make_tensor("one", T.INT64, [1], [1])])
    model = _quantize_static(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path,
                             per_channel=per_channel, reduce_range=reduce_range)
    assert {"QLinearConv", "QLinearMatMul"} <= {n.op_type for n in model.graph.node}
    conv_out = next(n.output[0] for n in model.graph.node if n.op_type == "QLinearConv")
    model.graph.output.append(h.make_tensor_value_info(conv_out, T.UINT8, None))
    return model


@pytest.mark.parametrize("per_channel", [False, True])
def test_statically_quantized_conv_and_matmul_requantize_as_onnxruntime(tmp_path, per_channel):
    """QLinearConv and QLinearMatMul are int32 sums requantized in float32 as
    onnxruntime computes them.  With reduce_range (7-bit weights) onnxruntime's integer
    kernels are exact, and every quantized value is the same; with 8-bit weights its
    AVX2 kernels saturate pairs of products to int16 (``vpmaddubsw``), so there the
    convolution is checked against onnx's reference implementation (per tensor)."""
    x = np.random.default_rng(12).standard_normal((1, 4, 20)).astype(np.float32)
    model = _statically_quantized(str(tmp_path / "q7.onnx"), per_channel, reduce_range=True)
    got, want = memotvm.compile(model).run({"x": x}), onnxruntime(model, {"x": x})
    np.testing.assert_array_equal(got[1], want[1])  # the convolution's uint8 output
    np.testing.assert_array_equal(got[0], want[0])
    if per_channel:  # (onnx.reference's QLinearConv broadcasts per-channel scales wrongly)
        return
    model = _statically_quantized(str(tmp_path / "q8.onnx"), per_channel, reduce_range=False)
    for entry in model.opset_import:  # (onnx.reference implements DequantizeLinear from 19)
        if entry.domain in ("", "ai.onnx"):
            entry.version = 21
    conv = ReferenceEvaluator(model).run(None, {"x": x})[1]
    np.testing.assert_array_equal(memotvm.compile(model).run({"x": x})[1], conv)


def test_quantized_contrib_operators_are_their_float_operators_between_quantizations(tmp_path):
    """quantize_static's com.microsoft QLinearAdd, QLinearSigmoid, QLinearMul,
    QLinearLeakyRelu, QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat and
    QLinearSoftmax compile as DequantizeLinear -> operator -> QuantizeLinear: every
    quantized output within one level of onnxruntime's integer kernels (docs/field.md)."""
    rng = np.random.default_rng(14)
    node = h.make_node
    nodes = [node("Conv", ["x", "cw"], ["c"], pads=[1, 1]), node("Add", ["c", "x"], ["a"]),
             node("Sigmoid", ["a"], ["s"]), node("Mul", ["s", "a"], ["m"]), node("LeakyRelu", ["m"], ["l"]),
             node("MaxPool", ["l"], ["p"], kernel_shape=[2], strides=[2]),
             node("AveragePool", ["p"], ["ap"], kernel_shape=[2], strides=[2]),
             node("GlobalAveragePool", ["ap"], ["g"]), node("Concat", ["g", "g"], ["cc"], axis=1),
             node("Softmax", ["cc"], ["out"], axis=1)]
    graph = h.make_graph(nodes, "contrib", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 20])],
                         [h.make_tensor_value_info("out", T.FLOAT, None)],
                         [onnx.numpy_helper.from_array((rng.standard_normal((4, 4, 3)) * 0.4).astype(np.float32), "cw")])
    model = _quantize_static(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]),
                             str(tmp_path / "contrib.onnx"), reduce_range=True)
    contrib = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert contrib == {"QLinearAdd", "QLinearSigmoid", "QLinearMul", "QLinearLeakyRelu", "QLinearAveragePool",
                       "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax"}
    quantized = [n.output[0] for n in model.graph.node if n.domain == "com.microsoft"]
    model.graph.output.extend(h.make_tensor_value_info(name, T.UINT8, None) for name in quantized)
    compiled = memotvm.compile(model)
    for _ in range(5):
        x = rng.standard_normal((1, 4, 20)).astype(np.float32)
        got, want = compiled.run({"x": x}), onnxruntime(model, {"x": x})
        for name, g, w in zip(quantized, got[1:], want[1:]):  # (out dequantizes the last)
            assert np.max(np.abs(np.asarray(g, np.int32) - w.astype(np.int32))) <= 1, name


@pytest.mark.parametrize("per_channel, trans_b", [(False, 0), (True, 1)])
def test_quantized_gemm_head(tmp_path, per_channel, trans_b):
    """quantize_static's com.microsoft QGemm (a classifier head, its bias int32 in the
    scale a_scale * b_scale, per column where B's scale is): within one quantization
    level of onnxruntime."""
    rng = np.random.default_rng(15)
    weight = (rng.standard_normal((4, 3)) * 0.4).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1]),
             h.make_node("ReduceMean", ["c"], ["r"], keepdims=0, axes=[2]),
             h.make_node("Gemm", ["r", "gw", "gb"], ["out"], transB=trans_b)]
    graph = h.make_graph(nodes, "head", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 20])],
                         [h.make_tensor_value_info("out", T.FLOAT, None)],
                         [onnx.numpy_helper.from_array(v, k) for k, v in {
                             "cw": (rng.standard_normal((4, 4, 3)) * 0.4).astype(np.float32),
                             "gw": np.ascontiguousarray(weight.T) if trans_b else weight,
                             "gb": rng.standard_normal(3).astype(np.float32)}.items()])
    model = _quantize_static(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]),
                             str(tmp_path / "head.onnx"), reduce_range=True, per_channel=per_channel)
    assert "QGemm" in {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    compiled = memotvm.compile(model)
    for _ in range(5):
        x = rng.standard_normal((1, 4, 20)).astype(np.float32)
        got, want = compiled.run({"x": x}), onnxruntime(model, {"x": x})
        step = float(onnx.numpy_helper.to_array(next(
            t for t in model.graph.initializer if t.name == model.graph.node[-1].input[1])))
        assert np.max(np.abs(got[0] - want[0])) <= step * 1.001


def test_quantized_lstm_with_run_time_weights_is_refused_by_name():
    model = onnx.load(path("quantized_lstm"))
    node = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    scale = node.input[8]
    model.graph.input.append(h.make_tensor_value_info(scale, T.FLOAT, [1]))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == scale))
    with pytest.raises(UnsupportedModelError, match=r"DynamicQuantizeLSTM.*W_scale.*computed at run time"):
        memotvm.compile(model)


def test_cast_of_shape_values_to_bool_is_true_where_non_zero():
    """ONNX casts any non-zero to true; TVM's converter made a bool constant of each
    dimension ("2 exceeds range of bool").  Folding off, so TVM sees the shape values."""
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Cast", ["s"], ["b"], to=T.BOOL),
             h.make_node("Cast", ["b"], ["f"], to=T.FLOAT),
             h.make_node("Cast", ["x"], ["xb"], to=T.BOOL), h.make_node("Cast", ["xb"], ["xf"], to=T.FLOAT),
             h.make_node("Mul", ["xf", "f"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 2])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    x = np.array([[0, 2], [np.nan, -0.5]], np.float32)
    want = onnxruntime(model, {"x": x})
    with mock.patch.object(ConstantFolding, "__call__", lambda self, m: m):
        for shapes in (None, {"x": [2, 2]}):
            got = memotvm.compile(model, shapes=shapes).run({"x": x}, check_finite=False)
            np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("opset", [11, 17])
def test_squeeze_of_a_symbolic_axis_is_checked_at_run_time(opset):
    """A detector's decoder squeezes the frames its strided convolutions leave (1 for a
    chunk; silero-vad's /decoder/Squeeze): a symbolic axis is squeezed where it is 1
    at run time and refused, naming the node, where it is not (ONNX's rule)."""
    axes = [-1, 1] if opset >= 13 else None
    inputs, inits = ["x"], []
    if opset >= 13:
        inputs.append("axes")
        inits.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    node = h.make_node("Squeeze", inputs, ["y"], name="squeeze_frames",
                       **({} if opset >= 13 else {"axes": [-1, 1]}))
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 1, "frames"])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    compiled = memotvm.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 1, 1)).astype(np.float32)
    got = compiled.run({"x": x})
    np.testing.assert_array_equal(got[0], onnxruntime(model, {"x": x})[0])
    assert got[0].shape == (3,)
    with pytest.raises(memotvm.InputError, match=r"node 'squeeze_frames' \(Squeeze\): dimension 2 of its "
                       r"input \(shape \(3, 1, 4\)\) is not 1 at run time"):
        compiled.run({"x": np.zeros((3, 1, 4), np.float32)})


def _squeeze_if(x, tag):
    """torch's export of a scripted ``x.squeeze(-1)``: an If on whether x's last axis is
    1, whose branches give different ranks; nodes named with ``tag``."""
    squeeze = h.make_graph([h.make_node("Squeeze", [x, "last_axis"], [f"{tag}_s"])], f"{tag}_then", [],
                           [h.make_tensor_value_info(f"{tag}_s", T.FLOAT, None)])
    keep = h.make_graph([h.make_node("Identity", [x], [f"{tag}_k"])], f"{tag}_else", [],
                        [h.make_tensor_value_info(f"{tag}_k", T.FLOAT, None)])
    return [h.make_node("Shape", [x], [f"{tag}_shape"]),
            h.make_node("Gather", [f"{tag}_shape", "last_axis"], [f"{tag}_last"], axis=0),
            h.make_node("Equal", [f"{tag}_last", "one"], [f"{tag}_is_one"]),
            h.make_node("If", [f"{tag}_is_one"], [f"{tag}_v"], then_branch=squeeze, else_branch=keep,
                        name=f"{tag}_if")]


_RANK_CONSTANTS = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
                   onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
                   onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")]


def test_an_if_whose_branches_give_different_ranks_compiles_with_symbolic_shapes():
    """The nodes after a rank-changing If (which need its result's rank) are computed
    in each of its branches, so the model compiles with symbolic shapes and agrees
    with onnxruntime whichever branch the input's shape selects.  TVM compared the
    symbolic last axis with 1 by the form of its expression (never equal)."""
    nodes = _squeeze_if("x", "sq") + [h.make_node("Unsqueeze", ["sq_v", "zero"], ["u"], name="unsqueeze_after_if"),
                                      h.make_node("Relu", ["u"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", "frames"])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], _RANK_CONSTANTS)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    compiled = memotvm.compile(model)
    for frames in (1, 3):
        x = np.linspace(-1, 1, 4 * frames, dtype=np.float32).reshape(4, frames)
        got, want = compiled.run({"x": x})[0], onnxruntime(model, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def _detector_with_rank_if(rng):
    """silero-vad's shape: on a run-time flag (its sample rate) one of two paths, each
    taking the chunk's frames with its own stride, squeezing a single frame (a
    rank-changing If) and running an LSTM over it, which fails (in onnxruntime too)
    where a chunk makes several frames; an unbatched-input test after the LSTM is
    folded once the ranks are known."""
    def path(tag, stride):
        weights = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 3,
                                                f"{tag}_{name}")
                   for name, shape in (("W", (1, 12, 4)), ("R", (1, 12, 3)))]
        weights.append(onnx.numpy_helper.from_array(np.array([stride], np.int64), f"{tag}_stride"))
        frames = h.make_node("Slice", ["x", "zero", "end", "last_axis", f"{tag}_stride"], [f"{tag}_frames"])
        nodes = [frames] + _squeeze_if(f"{tag}_frames", tag) + [
            h.make_node("Unsqueeze", [f"{tag}_v", "zero"], [f"{tag}_x3"]),
            h.make_node("LSTM", [f"{tag}_x3", f"{tag}_W", f"{tag}_R", "", "", "h0"], ["", f"{tag}_h"],
                        hidden_size=3, name=f"{tag}_lstm"),
            h.make_node("Shape", [f"{tag}_h"], [f"{tag}_hs"]),
            h.make_node("Size", [f"{tag}_hs"], [f"{tag}_rank"]),
            h.make_node("Equal", [f"{tag}_rank", "three"], [f"{tag}_batched"]),
            h.make_node("If", [f"{tag}_batched"], [f"{tag}_out"], name=f"{tag}_batched_if",
                        then_branch=h.make_graph([h.make_node("Identity", [f"{tag}_h"], [f"{tag}_b"])],
                                                 f"{tag}_b", [], [h.make_tensor_value_info(f"{tag}_b", T.FLOAT, None)]),
                        else_branch=h.make_graph([h.make_node("Unsqueeze", [f"{tag}_h", "zero"], [f"{tag}_u"])],
                                                 f"{tag}_u", [], [h.make_tensor_value_info(f"{tag}_u", T.FLOAT, None)])),
            h.make_node("Tanh", [f"{tag}_out"], [f"{tag}_y"])]
        return nodes, weights, f"{tag}_y"

    fast, fast_weights, fast_y = path("fast", 1)
    slow, slow_weights, slow_y = path("slow", 2)
    branches = [h.make_graph(nodes, f"{tag}_path", [], [h.make_tensor_value_info(y, T.FLOAT, None)])
                for tag, nodes, y in (("fast", fast, fast_y), ("slow", slow, slow_y))]
    graph = h.make_graph(
        [h.make_node("If", ["flag"], ["y"], then_branch=branches[0], else_branch=branches[1], name="rate_if")],
        "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 4, "frames"]),
              h.make_tensor_value_info("h0", T.FLOAT, [1, "n", 3]),
              h.make_tensor_value_info("flag", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        _RANK_CONSTANTS + fast_weights + slow_weights
        + [onnx.numpy_helper.from_array(np.array(3, np.int64), "three"),
           onnx.numpy_helper.from_array(np.array([2**63 - 1], np.int64), "end")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_a_branch_that_cannot_be_built_stops_the_call_that_takes_it():
    """Each path's copy after its squeeze-If for several frames gives its LSTM a 4-d
    input and cannot be built: the model compiles with a warning naming the node, runs
    as onnxruntime does wherever the selected path makes one frame (counting only the
    LSTM that ran), and a call where it makes several stops with an InputError naming
    the If and the reason, where onnxruntime fails too."""
    from memotvm.errors import UnreachableBranchWarning

    rng = np.random.default_rng(0)
    model = _detector_with_rank_if(rng)
    with pytest.warns(UnreachableBranchWarning, match=r"fast_lstm.*X must be 3-d"):
        compiled = memotvm.compile(model, memo=0.0)
    names = [loop.name for loop in compiled.loops]
    assert len(names) == 2 and names[0].startswith("fast_lstm") and names[1].startswith("slow_lstm")
    h0 = rng.standard_normal((1, 2, 3)).astype(np.float32)
    # (Two frames make one on the slow path: the fast path's check that its squeezed
    # axis is 1 must not run when the flag selects the slow one.)
    for flag, frames in ((True, 1), (False, 1), (False, 2)):
        x = rng.standard_normal((2, 4, frames)).astype(np.float32)
        inputs = {"x": x, "h0": h0, "flag": np.array(flag)}
        got = compiled.run(inputs)
        assert max_diff(got, onnxruntime(model, inputs)) < FLOAT_TOL
        counted = {node for (node, *_), c in compiled.last_stats.per_gate.items() if c.computed + c.reused}
        assert counted == {names[0] if flag else names[1]}
    # Each kernel runs only in the innermost branch that holds it (its path's, then
    # its one-frame copy's).
    from memotvm.passes.branches import SinkIntoBranches

    where = _recurrent_calls_by_function(SinkIntoBranches()(from_onnx(model).mod))
    assert where["main"] == 0 and sum(where.values()) == 2
    several = {"x": rng.standard_normal((2, 4, 2)).astype(np.float32), "h0": h0, "flag": np.array(True)}
    with pytest.raises(Exception):
        onnxruntime(model, several)
    with pytest.raises(memotvm.InputError, match=r"the else branch of If 'fast_if' is taken for these "
                       r"inputs, but it could not be compiled: LSTM node 'fast_lstm.*X must be 3-d"):
        compiled.run(several)


def test_a_branch_that_cannot_be_built_names_the_fix():
    """A detector's 8 kHz branch, given the shapes of a 16 kHz chunk, cannot be built
    (its LSTM would get a 4-d input): the model compiles with a warning that says how to
    fold the If away, a call that takes the branch stops, and fixing the flag compiles
    the branch that is taken alone."""
    from memotvm.errors import UnreachableBranchWarning

    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 3, name)
               for name, shape in (("W", (1, 12, 4)), ("R", (1, 12, 3)))]

    def branch(name, x):
        nodes = [h.make_node("LSTM", [x, "W", "R"], ["", f"{name}_h"], hidden_size=3, name=f"{name}_lstm")]
        if x != "x":
            nodes.insert(0, h.make_node("Unsqueeze", ["x", "zero"], [x]))
        return h.make_graph(nodes, name, [], [h.make_tensor_value_info(f"{name}_h", T.FLOAT, None)])

    nodes = [h.make_node("If", ["flag"], ["y"], then_branch=branch("fits", "x"),
                         else_branch=branch("other", "x4"), name="rate")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [5, 1, 4]),
                                      h.make_tensor_value_info("flag", T.BOOL, [])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         weights + [onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    x = rng.standard_normal((5, 1, 4)).astype(np.float32)
    # (onnxruntime refuses the whole model: its shape inference reaches the 4-d LSTM
    # input too; the branch taken alone is the reference.)
    taken = h.make_graph(list(branch("fits", "x").node), "taken", [graph.input[0]],
                         [h.make_tensor_value_info("fits_h", T.FLOAT, None)], weights)
    want = onnxruntime(h.make_model(taken, opset_imports=[h.make_opsetid("", 17)]), {"x": x})
    with pytest.warns(UnreachableBranchWarning, match=r"other_lstm.*in a branch of an If.*--fix NAME=VALUE"):
        both = memotvm.compile(model)
    assert max_diff(both.run({"x": x, "flag": np.array(True)}), want) < FLOAT_TOL
    with pytest.raises(memotvm.InputError, match=r"the else branch of If 'rate' is taken"):
        both.run({"x": x, "flag": np.array(False)})
    got = memotvm.compile(model, fixed_inputs={"flag": True}).run({"x": x})
    assert max_diff(got, want) < FLOAT_TOL


def test_folding_keeps_scalars_scalar_and_leaves_big_growth_to_run_time():
    nodes = [h.make_node("Constant", [], ["k"], value=h.make_tensor("kv", T.INT64, [], [3])),
             h.make_node("Unsqueeze", ["k", "axes"], ["k1"]),
             h.make_node("ConstantOfShape", ["big"], ["zeros"], value=h.make_tensor("z", T.FLOAT, [1], [0.0])),
             h.make_node("Add", ["x", "zeros"], ["xz"]),
             h.make_node("Reshape", ["xz", "k1"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [3])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [h.make_tensor("axes", T.INT64, [1], [0]), h.make_tensor("big", T.INT64, [2], [1 << 20, 1])])
    folded = ConstantFolding()(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert values["k1"].shape == (1,) and "k" not in values  # k folded into k1, unused
    assert "zeros" not in values  # 4 MiB from 16 bytes: left to run
    assert [n.op_type for n in folded.graph.node] == ["ConstantOfShape", "Add", "Reshape"]


def test_quantized_weights_are_dequantized_when_folding_whatever_their_size():
    """A QDQ model's weights (int8, a scale per output channel) at opset 18, which
    onnx's reference implementation does not cover: each DequantizeLinear of a weight
    becomes the float weight, also where it is four times the int8 one and over the
    growth limit, so the matrix product after it is compiled for a constant weight."""
    rng = np.random.default_rng(2)
    q = rng.integers(-127, 128, (600, 500), dtype=np.int8)
    scale = (rng.random(500) * 0.01 + 1e-3).astype(np.float32)
    zero = rng.integers(-3, 4, 500, dtype=np.int8)
    nodes = [h.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
             h.make_node("MatMul", ["x", "w"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 600])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["n", 500])],
                         [onnx.numpy_helper.from_array(v, k) for k, v in
                          (("w_q", q), ("w_scale", scale), ("w_zero", zero))])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    folded = ConstantFolding()(model)
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]
    w = onnx.numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == "w"))
    np.testing.assert_array_equal(w, ((q.astype(np.int32) - zero) * scale).astype(np.float32))
    # (The graph as written: onnxruntime's optimized session quantizes x instead, 0.34
    # away here.)
    x = rng.standard_normal((3, 600)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})
    assert max_diff(memotvm.compile(model).run({"x": x}), want) < 1e-4


def test_reshape_with_allowzero_to_a_shape_computed_from_shapes():
    """torch's dynamo exporter writes attention's head split as a Reshape with
    allowzero=1 to Concat(Shape(x)[:1], [-1, heads, size]): no 0 in it, so it is the
    plain reshape (TVM refused a shape tensor there)."""
    nodes = [h.make_node("Shape", ["x"], ["batch"], start=0, end=1),
             h.make_node("Concat", ["batch", "rest"], ["shape"], axis=0),
             h.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 4, 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [onnx.numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "rest")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    x = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    got = memotvm.compile(model).run({"x": x})[0]
    assert got.shape == (2, 4, 2, 3)
    np.testing.assert_array_equal(got, onnxruntime(model, {"x": x})[0])


def _computed_shape_chain(stages: int):
    """x [1, 4, 3] through ``stages`` reshapes to [1, len(Range(Shape(x)[1])), -1] (GTCRN's
    export computes its GRUs' input shapes so): ONNX shape inference does not see
    through Range, so each reshape's shape is known only once folding has made the
    Range before it a constant, and each step needs a round of its own.  Then a GRU over
    the result (1 step, batch 4)."""
    nodes, x = [], "x"
    for k in range(stages):
        nodes += [h.make_node("Shape", [x], [f"s{k}"]), h.make_node("Gather", [f"s{k}", "one"], [f"n{k}"]),
                  h.make_node("Range", ["zero", f"n{k}", "one"], [f"r{k}"]),
                  h.make_node("Shape", [f"r{k}"], [f"l{k}"]),
                  h.make_node("Concat", ["one_1d", f"l{k}", "rest"], [f"shape{k}"], axis=0),
                  h.make_node("Reshape", [x, f"shape{k}"], [f"x{k}"])]
        x = f"x{k}"
    rng = np.random.default_rng(7)
    weights = [onnx.numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("W", (1, 15, 3)), ("R", (1, 15, 5)))]
    nodes.append(h.make_node("GRU", [x, "W", "R"], ["Y", "Y_h"], hidden_size=5))
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 3])],
                         [h.make_tensor_value_info("Y", T.FLOAT, None)],
                         weights + [h.make_tensor("zero", T.INT64, [], [0]), h.make_tensor("one", T.INT64, [], [1]),
                                    h.make_tensor("one_1d", T.INT64, [1], [1]), h.make_tensor("rest", T.INT64, [1], [-1])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_folding_follows_a_chain_of_computed_shapes_to_its_end():
    model = _computed_shape_chain(12)
    folded = ConstantFolding()(model)
    assert [n.op_type for n in folded.graph.node] == ["Reshape"] * 12 + ["GRU"]
    x = np.random.default_rng(0).standard_normal((1, 4, 3)).astype(np.float32)
    want = onnxruntime(model, {"x": x})
    for memo in (None, 0.0):
        assert max_diff(memotvm.compile(model, memo=memo).run({"x": x}), want) <= FLOAT_TOL


def _sliced_lstm_input():
    """An LSTM whose X and initial_h are Slices to lengths given at run time: TVM knows
    only their ranks."""
    rng = np.random.default_rng(3)
    weights = [onnx.numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
               for name, shape in (("W", (1, 32, 6)), ("R", (1, 32, 8)))]
    nodes = [h.make_node("Slice", ["x", "zero", "features", "two"], ["X"]),
             h.make_node("Slice", ["h0", "zero", "directions", "zero"], ["H0"]),
             h.make_node("LSTM", ["X", "W", "R", "", "", "H0"], ["Y", "Y_h"], hidden_size=8)]
    graph = h.make_graph(
        nodes, "sliced",
        [h.make_tensor_value_info("x", T.FLOAT, [12, 2, 8]), h.make_tensor_value_info("features", T.INT64, [1]),
         h.make_tensor_value_info("h0", T.FLOAT, [2, 2, 8]), h.make_tensor_value_info("directions", T.INT64, [1])],
        [h.make_tensor_value_info("Y", T.FLOAT, None), h.make_tensor_value_info("Y_h", T.FLOAT, None)],
        weights + [h.make_tensor("zero", T.INT64, [1], [0]), h.make_tensor("two", T.INT64, [1], [2])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("memo", [None, 0.0])
def test_recurrent_inputs_sliced_to_run_time_lengths_are_given_sizes_and_checked(memo):
    model = _sliced_lstm_input()
    rng = np.random.default_rng(4)
    inputs = {"x": rng.standard_normal((12, 2, 8)).astype(np.float32), "features": np.array([6]),
              "h0": rng.standard_normal((2, 2, 8)).astype(np.float32), "directions": np.array([1])}
    compiled = memotvm.compile(model, memo=memo)
    assert max_diff(compiled.run(inputs), onnxruntime(model, inputs)) <= FLOAT_TOL
    with pytest.raises(memotvm.InputError, match=r"shapes do not fit.*\(5 where 6 is needed\)"):
        compiled.run(dict(inputs, features=np.array([5])))
    with pytest.raises(memotvm.InputError, match=r"shapes do not fit.*\(2 where 1 is needed\)"):
        compiled.run(dict(inputs, directions=np.array([2])))


def _calls_over_constants(func) -> list:
    """The operators in func whose every argument is a constant (through bindings)."""
    bound = {b.var.name: b.value for block in func.body.blocks for b in block.bindings}

    def constant(arg):
        arg = bound.get(arg.name, arg) if isinstance(arg, relax.Var) else arg
        if isinstance(arg, relax.Tuple):
            return all(constant(f) for f in arg.fields)
        return isinstance(arg, (tvm.ir.GenericConst, relax.ShapeExpr, tvm.tirx.IntImm))

    return [v.op.name for v in bound.values() if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
            and v.args and all(constant(a) for a in v.args)]


def test_operators_over_constants_are_evaluated_when_importing():
    """TVM's converters apply operators to constants (a Gather's negative indices made
    positive, ScatterND's index arithmetic) that the ONNX-level folding never sees;
    left to TVM's FoldConstant, each is compiled with LLVM to run once (GTCRN: 12 s)."""
    nodes = [h.make_node("Gather", ["x", "picks"], ["picked"], axis=1),
             h.make_node("ScatterND", ["picked", "where", "updates"], ["scattered"]),
             h.make_node("Transpose", ["scattered"], ["X"], perm=[1, 0, 2]),
             h.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=4)]
    rng = np.random.default_rng(9)
    graph = h.make_graph(
        nodes, "constants", [h.make_tensor_value_info("x", T.FLOAT, [2, 6, 3])],
        [h.make_tensor_value_info("Y", T.FLOAT, None)],
        [h.make_tensor("picks", T.INT64, [4], [-1, 0, 2, -3]),
         h.make_tensor("where", T.INT64, [2, 2], [0, -1, 1, 2]),
         onnx.numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "updates"),
         onnx.numpy_helper.from_array((rng.standard_normal((1, 12, 3)) * 0.5).astype(np.float32), "W"),
         onnx.numpy_helper.from_array((rng.standard_normal((1, 12, 4)) * 0.5).astype(np.float32), "R")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert _calls_over_constants(from_onnx(model).mod["main"]) == []
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    assert max_diff(memotvm.compile(model).run({"x": x}), onnxruntime(model, {"x": x})) <= FLOAT_TOL


def test_whole_axis_slices_and_constant_gathers_on_symbolic_axes_leave_no_run_time_indexing():
    """torch writes ``x[0:INT64_MAX]`` for a batch and ``state[0]`` for a layer of a
    state whose batch is symbolic.  The slice of a whole axis is no slice, and the
    Gather's index is a constant even though ``where(i < 0, i + n, i)`` cannot fold: left
    as gathers by computed indices, each kept the operators after it from fusing and
    made every call compute and check indices (silero: 30 kernels before its branches,
    10 kernels in its STFT where 1 does with static shapes).  Negative indices, and
    slices that are not whole, keep their meaning."""
    big = 2 ** 63 - 1
    consts = {"zero": [0], "end": [big], "c129": [129], "one": [1], "two": [2], "minus": [-1]}
    nodes = [h.make_node("Constant", [], [k], value=h.make_tensor(k, T.INT64, [1], v)) for k, v in consts.items()]
    nodes += [h.make_node("Slice", ["spec", "zero", "end", "zero"], ["s0"]),  # whole batch
              h.make_node("Slice", ["s0", "zero", "c129", "one"], ["s1"]),  # 129 of 258 bins
              h.make_node("Slice", ["s1", "zero", "end", "two"], ["s2"]),  # whole time axis
              h.make_node("Mul", ["s2", "s2"], ["power"]),
              h.make_node("Gather", ["state", "zero"], ["first"], axis=0),
              h.make_node("Gather", ["state", "minus"], ["last"], axis=0),
              h.make_node("Sub", ["first", "last"], ["change"]),
              h.make_node("Slice", ["state", "zero", "minus", "zero"], ["but_last"])]
    graph = h.make_graph(nodes, "stft", [h.make_tensor_value_info("spec", T.FLOAT, ["n", 258, "t"]),
                                         h.make_tensor_value_info("state", T.FLOAT, ["layers", "n", 4])],
                         [h.make_tensor_value_info(o, T.FLOAT, None) for o in ("power", "change", "but_last")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    calls, main = [], from_onnx(model).mod["main"]
    model_spec = main.params[0]
    relax.analysis.post_order_visit(main.body,
                                    lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    ops = [c.op.name for c in calls]
    # One index checked (-1: computed from the size), one range gathered (the slice
    # that stops before the end); the whole axes and state[0] need neither.
    assert "relax.where" not in ops and ops.count("relax.call_tir_inplace") == 1
    assert ops.count("relax.arange") == 1
    assert not any(c.op.name == "relax.take" and c.args[0].same_as(model_spec) for c in calls)
    compiled = memotvm.compile(model)
    rng = np.random.default_rng(4)
    for n, t, layers in ((1, 5, 2), (3, 1, 3)):
        call = {"spec": rng.standard_normal((n, 258, t)).astype(np.float32),
                "state": rng.standard_normal((layers, n, 4)).astype(np.float32)}
        assert max_diff(compiled.run(call), onnxruntime(model, call)) <= FLOAT_TOL


def test_an_index_computed_from_a_size_known_when_compiling_is_a_constant():
    """torchscript writes ``y[:, -1]`` as a Gather at index -1, which TVM's converter
    makes ``-1 + shape(y)[1]``.  In a loop's body (where the ONNX-level folding has no
    shapes) that size, 1 for a decoder's one step, is known to TVM though the batch is
    symbolic: the index is then a constant, not a shape, arithmetic and an index check
    at every iteration."""
    nodes = [h.make_node("Unsqueeze", ["y_in", "axis1"], ["steps_y"]),
             h.make_node("Gather", ["steps_y", "minus_one"], ["last"], axis=1),
              h.make_node("Tanh", ["last"], ["y_out"]), h.make_node("Identity", ["cond_in"], ["cond_out"])]
    body = h.make_graph(nodes, "body", [h.make_tensor_value_info("i", T.INT64, []),
                                        h.make_tensor_value_info("cond_in", T.BOOL, []),
                                        h.make_tensor_value_info("y_in", T.FLOAT, ["n", 4])],
                        [h.make_tensor_value_info("cond_out", T.BOOL, []),
                         h.make_tensor_value_info("y_out", T.FLOAT, ["n", 4])])
    graph = h.make_graph([h.make_node("Loop", ["trips", "", "y"], ["y_last"], body=body)], "steps",
                         [h.make_tensor_value_info("y", T.FLOAT, ["n", 4])],
                         [h.make_tensor_value_info("y_last", T.FLOAT, None)],
                         [h.make_tensor("trips", T.INT64, [], [3]), h.make_tensor("axis1", T.INT64, [1], [1]),
                          h.make_tensor("minus_one", T.INT64, [], [-1])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    mod = from_onnx(model).mod
    body_function = next(f for gv, f in mod.functions_items() if gv.name_hint.endswith("_body"))
    calls = []
    relax.analysis.post_order_visit(body_function.body, lambda e: calls.append(e.op.name) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.shape_of" not in calls and "relax.call_tir_inplace" not in calls, calls
    compiled = memotvm.compile(model)
    for n in (1, 3):
        y = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        assert max_diff(compiled.run({"y": y}), onnxruntime(model, {"y": y})) <= FLOAT_TOL


def test_fixed_inputs_errors_name_the_input():
    with pytest.raises(ConfigError, match="'rate', which is not an input.*input, state, sr"):
        memotvm.compile(path("vad_stream"), fixed_inputs={"rate": 8000})
    with pytest.raises(ConfigError, match=r"fixed_inputs\['sr'\].*int64.*non-integer"):
        memotvm.compile(path("vad_stream"), fixed_inputs={"sr": 16000.5})
    with pytest.raises(ConfigError, match=r"fixed_inputs\['state'\] has size 3 on axis 0"):
        memotvm.compile(path("vad_stream"), fixed_inputs={"state": np.zeros((3, 1, 64))})
    with pytest.raises(ConfigError, match=r"fixed_inputs\['sr'\] has 1 axes; input 'sr' has 0"):
        memotvm.compile(path("vad_stream"), fixed_inputs={"sr": [16000]})
    with pytest.raises(ConfigError, match="fixed_inputs must map"):
        memotvm.compile(path("vad_stream"), fixed_inputs=[("sr", 16000)])


def test_cli_fix_binds_an_input(tmp_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **feeds("vad_stream"))  # sr is in the file too: --fix wins
    out = tmp_path / "out.npz"
    assert cli_main(["run", path("vad_stream"), "--inputs", str(inputs), "--out", str(out),
                     "--fix", "sr=8000"]) == 0
    want = onnxruntime(path("vad_stream"), {**feeds("vad_stream"), "sr": np.array(8000, np.int64)})
    with np.load(out) as got:
        assert max_diff([got["prob"], got["stateN"]], want) < FLOAT_TOL
    assert cli_main(["run", path("vad_stream"), "--inputs", str(inputs), "--out", str(out),
                     "--fix", "sr"]) == 2
    assert "--fix takes NAME=VALUE" in capsys.readouterr().err


def test_memoizing_a_model_without_recurrent_nodes_warns_with_what_it_found():
    w = h.make_tensor("W", T.FLOAT, [4, 16], np.ones(64, np.float32))
    nodes = [h.make_node("MatMul", ["x", "W"], ["a"]), h.make_node("Sigmoid", ["a"], ["s"]),
             h.make_node("Tanh", ["s"], ["y"])]
    graph = h.make_graph(nodes, "cell", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 16])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    with pytest.warns(NothingToMemoizeWarning, match=r"no LSTM, GRU or RNN node.*MatMul x1.*unrolled"):
        memotvm.compile(model, memo=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingToMemoizeWarning)
        memotvm.compile(model)  # nothing asked, nothing said


@pytest.mark.parametrize("name, operators_apart", [pytest.param("crnn_recognizer", False, marks=pytest.mark.slow),
                                                    ("gru_denoiser", True)])
def test_kernels_compiled_apart_give_one_modules_results_bit_for_bit(name, operators_apart):
    """The kernels are compiled as modules of their own on a pool of threads (parallel
    build), and TVM's operators in groups of their own where a model has many; built
    again as one module, as export does, the executable computes the same outputs,
    bit for bit."""
    from memotvm.runtime import flat_results, to_numpy
    from memotvm.targets import parallel_build

    inputs = feeds(name)
    with mock.patch.object(parallel_build, "_MANY_OPERATORS", 0 if operators_apart else 10 ** 6):
        model = memotvm.compile(path(name))
    library = model.executable.mod.imports[0]
    # the convolutions' and the recurrent layer's kernels, and the operators' groups
    # (two per CPU: the denoiser has 8 operators)
    groups = min(2 * len(memotvm.threads.available_cpus()), 8) if operators_apart else 0
    assert len(library.imports) >= 3 + groups
    one = parallel_build.linkable(model.executable)
    assert len(one.mod.imports[0].imports) == 0
    vm = relax.VirtualMachine(one, tvm.cpu())
    got = flat_results(vm["main"](*[tvm.runtime.tensor(inputs[n]) for n in model.input_names]))
    want = model.run(inputs)
    assert all(np.array_equal(to_numpy(g), w) for g, w in zip(got, want))


# paddle2onnx's exports (PaddleOCR's detector, classifier and recognizer as RapidOCR
# ships them) in miniature: each failed to compile before.

def test_input_sizes_minus_one_nameless_or_question_mark_are_each_their_own():
    """paddle2onnx declares "any size" as -1 or "?", other tools leave a dimension
    nameless: each is a size of its own (TVM took -1 for a size, and gave all nameless
    dimensions one variable and the "?"s ones that memotvm's checks took for one)."""
    x = h.make_tensor_value_info("x", T.FLOAT, [-1, 2, "?", "?"])
    y = h.make_tensor_value_info("y", T.FLOAT, [None, None])
    graph = h.make_graph([h.make_node("Relu", ["x"], ["rx"]), h.make_node("Neg", ["y"], ["ny"])], "g",
                         [x, y], [h.make_tensor_value_info("rx", T.FLOAT, None),
                                  h.make_tensor_value_info("ny", T.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    compiled = memotvm.compile(model)
    rng = np.random.default_rng(0)
    for xs, ys in (((2, 2, 3, 5), (4, 7)), ((1, 2, 6, 1), (1, 3))):
        inputs = {"x": rng.standard_normal(xs).astype(np.float32),
                  "y": rng.standard_normal(ys).astype(np.float32)}
        for got, want in zip(compiled.run(inputs), onnxruntime(model, inputs)):
            np.testing.assert_array_equal(got, want)
    assert compiled.input_types["x"][0][1] == 2 and len(set(map(str, compiled.input_types["x"][0]))) == 4


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_before_opset_13_works_on_the_input_coerced_to_2d(op, axis):
    """Before opset 13 Softmax, LogSoftmax and Hardmax take the input as a matrix, the
    dimensions from ``axis`` on as its columns (PaddleOCR's text-direction classifier
    is opset 11); a Hardmax over columns not known when compiling is refused with the
    way out (it failed inside TVM)."""
    node = h.make_node(op, ["x"], ["y"], axis=axis)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 11)])
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    want = onnxruntime(model, {"x": x})[0]
    for shapes in (None, {"x": [2, 3, 4]}):
        if op == "Hardmax" and axis == 0 and shapes is None:  # (one-hot rows of n * 12)
            with pytest.raises(UnsupportedModelError, match=r"\(Hardmax, opset 11\).*declare the input shapes"):
                memotvm.compile(model, shapes=shapes)
            continue
        got = memotvm.compile(model, shapes=shapes).run({"x": x})[0]
        # (float32 exp and sums in another order: a few units in the last place)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _conv(name, x, out, channels_in, channels_out, kernel, stride=1, pad=0, seed=0):
    rng = np.random.default_rng(seed)
    w = onnx.numpy_helper.from_array(
        (rng.standard_normal((channels_out, channels_in, kernel, kernel)) * 0.3).astype(np.float32), name + "_w")
    node = h.make_node("Conv", [x, name + "_w"], [out], kernel_shape=[kernel, kernel],
                       strides=[stride, stride], pads=[pad] * 4, name=name)
    return node, w


def test_concat_of_a_pooled_height_with_a_height_of_one_is_checked_not_lost():
    """A recognizer concatenates a pooled height of (h - 33) // 48 + 1 with a height of
    1: the two must be equal, which TVM cannot prove, so it lost the shape and the
    convolution after failed inside TVM.  Now checked at run time, named where broken."""
    conv, w = _conv("mix", "cat", "y", 3, 2, 1)
    nodes = [h.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[48, 2], strides=[48, 2]),
             h.make_node("ReduceMean", ["pooled"], ["one_row"], axes=[2], keepdims=1),
             h.make_node("Concat", ["pooled", "one_row"], ["both"], axis=1),
             h.make_node("Slice", ["both", "starts", "ends", "axes"], ["cat"]), conv]
    inits = [w] + [onnx.numpy_helper.from_array(np.array(v, np.int64), n)
                   for n, v in (("starts", [0]), ("ends", [3]), ("axes", [1]))]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    compiled = memotvm.compile(model)
    x = np.random.default_rng(2).standard_normal((1, 2, 48, 10)).astype(np.float32)
    assert max_diff(compiled.run({"x": x}), onnxruntime(model, {"x": x})) < FLOAT_TOL
    with pytest.raises(memotvm.InputError, match="concat: .*dimension 2 of the first and 2 of the second "
                       "must be equal"):
        compiled.run({"x": np.zeros((1, 2, 96, 10), np.float32)})


def test_sum_of_an_upsampled_map_and_a_lateral_one_keeps_its_shape_for_what_follows():
    """A text detector's feature pyramid adds an upsampled map, 2 * ((h - 1) // 2 + 1)
    high, to a lateral one, h high: TVM cannot prove them equal and left the sum
    without a shape, and the Resize after it failed to convert.  The sum is now made
    on operands checked at run time (as onnxruntime, which refuses odd sizes)."""
    conv, w = _conv("down", "x", "half", 2, 2, 3, stride=2, pad=1)
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [conv, h.make_node("Resize", ["half", "", "scales"], ["up"], mode="nearest"),
             h.make_node("Add", ["up", "x"], ["sum"]),
             h.make_node("Resize", ["sum", "", "scales"], ["y"], mode="nearest")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [w, scales])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    compiled = memotvm.compile(model)
    x = np.random.default_rng(3).standard_normal((1, 2, 8, 6)).astype(np.float32)
    assert max_diff(compiled.run({"x": x}), onnxruntime(model, {"x": x})) < FLOAT_TOL
    with pytest.raises(memotvm.InputError, match="add: .*must be equal"):
        compiled.run({"x": np.zeros((1, 2, 7, 6), np.float32)})


def test_pointwise_convolution_then_hard_swish_over_symbolic_sizes_compiles():
    """A pointwise convolution's output size over a symbolic axis, written as
    ((h - 1) // 2 + 1 - 1) // 1 + 1, is simplified as TVM's own shapes are: left as
    written, the scaled hard-swish fused after it (as paddle2onnx exports PaddleOCR's
    recognizer) met the same tensor in two forms and TVM refused to fuse."""
    down, w1 = _conv("down", "x", "a", 2, 4, 3, stride=2, pad=1, seed=1)
    point, w2 = _conv("point", "a", "b", 4, 4, 1, seed=2)
    consts = [onnx.numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("scale", [0.9]), ("shift", [0.1]), ("three", [3.0]), ("six", [6.0]),
                           ("zero_s", 0.0), ("six_s", 6.0))]
    nodes = [down, point, h.make_node("Mul", ["scale", "b"], ["bs"]), h.make_node("Add", ["bs", "shift"], ["c"]),
             h.make_node("Add", ["c", "three"], ["c3"]), h.make_node("Clip", ["c3", "zero_s", "six_s"], ["r6"]),
             h.make_node("Mul", ["c", "r6"], ["cr"]), h.make_node("Div", ["cr", "six"], ["hs"]),
             h.make_node("Mul", ["scale", "hs"], ["hss"]), h.make_node("Add", ["hss", "shift"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [w1, w2] + consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    x = np.random.default_rng(4).standard_normal((2, 2, 9, 12)).astype(np.float32)
    assert max_diff(memotvm.compile(model).run({"x": x}), onnxruntime(model, {"x": x})) < FLOAT_TOL


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_to_a_neighbours_size_known_at_run_time(mode):
    """Paddle2ONNX resizes a feature map to its neighbour's size (sizes from Shape and
    Concat over symbolic sizes) and passes empty roi and scales; TVM's converter took
    the empty scales for given, and wanted the sizes when compiling (sizes whose
    batch or channels differ from the input's are refused when the model runs)."""
    empty = h.make_tensor("empty", T.FLOAT, [0], [])
    nodes = [h.make_node("Shape", ["x"], ["x_shape"]), h.make_node("Shape", ["y"], ["y_shape"]),
             h.make_node("Slice", ["x_shape", "zero", "two"], ["batch_channels"]),
             h.make_node("Slice", ["y_shape", "two", "four"], ["spatial"]),
             h.make_node("Concat", ["batch_channels", "spatial"], ["sizes"], axis=0),
             h.make_node("Resize", ["x", "empty", "empty", "sizes"], ["up"], mode=mode,
                         **({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} if mode == "nearest" else {})),
             h.make_node("Add", ["up", "y"], ["out"])]
    graph = h.make_graph(nodes, "fpn", [h.make_tensor_value_info("x", T.FLOAT, [1, 2, "h", "w"]),
                                        h.make_tensor_value_info("y", T.FLOAT, [1, 2, "H", "W"])],
                         [h.make_tensor_value_info("out", T.FLOAT, [1, 2, "H", "W"])],
                         [empty] + [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
                                    for n, v in (("zero", 0), ("two", 2), ("four", 4))])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    compiled = memotvm.compile(model)
    session = ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    if mode == "linear":  # (where TVM's resize fails over symbolic sizes, said by name)
        nodes[5].attribute.append(h.make_attribute("coordinate_transformation_mode", "align_corners"))
        with pytest.raises(UnsupportedModelError, match=r"node '' \(Resize\): linear resizing with "
                           r"coordinate_transformation_mode align_corners to sizes known only when"):
            memotvm.compile(h.make_model(h.make_graph(nodes, "fpn", graph.input, graph.output, graph.initializer),
                                         opset_imports=[h.make_opsetid("", 13)]))
    for hw, HW in (((3, 5), (6, 10)), ((4, 4), (7, 9))):
        feeds = {"x": rng.standard_normal((1, 2, *hw)).astype(np.float32),
                 "y": rng.standard_normal((1, 2, *HW)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], session.run(None, feeds)[0], rtol=1e-6, atol=1e-6)

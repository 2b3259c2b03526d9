"""Bias, normalization and activation computed where a convolution stores its output.

A convolution in an exported model is followed by elementwise work: its bias (an add of
a per-channel constant), often a batch normalization or an affine rescale, an activation
(ReLU, clip, hard-sigmoid/hard-swish, GELU, SiLU) and sometimes a residual add.  Left to
TVM, each such chain is one fused loop that reads the convolution's whole output back
from memory and writes it again: on PP-OCRv6's tiny text detector (640 x 640, 2-core
AVX2 EPYC) those loops took 14 % of the call, as long as the convolutions' im2col.

``FuseConvEpilogues`` finds, after each channel-by-channel product of
:func:`.host_conv.build_conv_matmul`, the largest group of elementwise bindings that
depend only on the product, on constants that are scalars or one value per output
channel, and on other tensors of the product's shape, and whose intermediate values are
used nowhere else.  It replaces the product and the group by one kernel that applies
the group to each vector of accumulators before storing it (:class:`Epilogue`).  Each
operation is the one TVM's legalization computes, in the same order (a division stays
a division), with exp, sigmoid, tanh, erf and GELU as :mod:`.host_math` computes them:
results are the unfused graph's, within the ulp that a multiply and an add contracted
into one fused multiply-add in one of the two and not in the other makes.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir import GenericConst
from tvm.script.ir_builder import tirx as T

from ..passes._relax_util import add_kernel, with_blocks, without_uncalled_kernels
from .host_math import _LetMath

#: The attribute of a :func:`.host_conv.build_conv_matmul` kernel that records how to
#: build it again (:func:`.host_conv.rebuild_product`): [channels_out, k, output sizes
#: (-1 where symbolic), weights' dtype, the windows read in place as [taps, strides,
#: dilation] (empty where x is read as it is), "dense" or "depthwise"].
CONV_MATMUL_ATTR = "memotvm.conv_matmul"

_BINARY = {"relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply",
           "relax.divide": "divide", "relax.maximum": "maximum", "relax.minimum": "minimum"}
_UNARY = {"relax.nn.relu": "relu", "relax.sigmoid": "sigmoid", "relax.tanh": "tanh",
          "relax.erf": "erf", "relax.exp": "exp", "relax.nn.gelu": "gelu",
          "relax.nn.gelu_tanh": "gelu_tanh", "relax.nn.silu": "silu", "relax.negative": "negative",
          "relax.clip": "clip", "relax.nn.leakyrelu": "leakyrelu"}


class Epilogue:
    """An elementwise computation of a convolution's output value v at output channel
    o, as a list of steps, each producing one value: ``("input",)`` (v itself), or an
    operation over earlier values and operands.  An operand is ``("value", i)`` (the
    i-th step's value), ``("scalar", x)``, ``("channel", row)`` (row ``row`` of a
    [rows, channels] table of constants, at o) or ``("tensor", j)`` (the j-th extra
    input, of the output's shape, at the same element).  The last step is the result.
    ``key`` identifies the computation (the kernels of equal keys are one)."""

    def __init__(self, steps: list, channel_rows: int, tensors: int):
        self.steps = steps
        self.channel_rows = channel_rows
        self.tensors = tensors
        self.key = repr(steps)

    def emit(self, lanes, value, channel_value, tensor_value):
        """Emit the steps over a vector of ``lanes`` sums, ``value(lane)`` each, into
        buffers of their own, one vectorized loop per step; return the buffer of the
        result.  ``channel_value(row)`` and ``tensor_value(j, lane)`` give the operands.
        (Step by step: as one expression, each transcendental function nested in
        another multiplied its size, and LLVM took minutes over a sigmoid in a tanh.)"""
        buffers = []
        for op, *args in self.steps:
            out = T.alloc_buffer((lanes,), "float32")
            with T.vectorized(0, lanes) as lane:
                operands = []
                for arg in args:
                    kind, what = arg if isinstance(arg, tuple) else ("attr", arg)
                    operands.append(buffers[what][lane] if kind == "value" else
                                    tirx.const(what, "float32") if kind == "scalar" else
                                    channel_value(what) if kind == "channel" else
                                    tensor_value(what, lane) if kind == "tensor" else what)
                T.buffer_store(out, value(lane) if op == "input" else _step(op, operands, _LetMath), [lane])
            buffers.append(out)
        return buffers[-1]


def _step(op, operands, let_math):
    zero = tirx.const(0.0, "float32")
    if op == "same":
        return operands[0]
    if op in ("add", "subtract", "multiply", "divide"):
        a, b = operands
        return {"add": a + b, "subtract": a - b, "multiply": a * b, "divide": a / b}[op]
    if op == "maximum":
        return tirx.max(*operands)
    if op == "minimum":
        return tirx.min(*operands)
    x = operands[0]
    if op == "relu":
        return tirx.max(x, zero)
    if op == "negative":
        return -x
    if op == "clip":  # (as TVM's topi.clip: the upper bound first)
        return tirx.max(tirx.min(x, tirx.const(operands[2], "float32")), tirx.const(operands[1], "float32"))
    if op == "leakyrelu":
        return tirx.Select(x > zero, x, x * tirx.const(operands[1], "float32"))
    if op == "silu":
        return x * let_math().formula("sigmoid", x)
    return let_math().formula(op, x)


_VIEWS = ("relax.reshape", "relax.expand_dims", "relax.squeeze")


def _constant(expr, bound):
    """``expr``'s value where it is a constant, or a variable ``bound`` to a reshape of
    one (as TVM's importer gives a convolution's bias); else None."""
    if isinstance(expr, relax.Var) and expr in bound:
        value = bound[expr]
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
                and value.op.name in _VIEWS and isinstance(expr.ty, relax.TensorType) \
                and isinstance(expr.ty.shape, relax.ShapeExpr) \
                and all(isinstance(d, tirx.IntImm) for d in expr.ty.shape.values):
            inner = _constant(value.args[0], bound)
            if inner is not None:
                return inner.reshape([int(d) for d in expr.ty.shape.values])
        return None
    return expr.value.numpy() if isinstance(expr, GenericConst) else None


class _Group:
    """The elementwise bindings that follow one product, grown binding by binding."""

    def __init__(self, product_var, call, shape, channels, bound):
        self.product_var, self.call, self.bound = product_var, call, bound
        self.shape, self.channels = shape, channels
        self.index = {product_var: 0}
        self.steps = [("input",)]
        self.channel_rows, self.tensors = [], []
        self.vars = [product_var]
        self.normalized = set()  # (the tuples of batch normalizations in the group)

    def operand(self, arg):
        """``arg`` as an operand, or None where the group cannot take it."""
        if isinstance(arg, relax.Var) and arg in self.index:
            return ("value", self.index[arg])
        value = _constant(arg, self.bound)
        if value is not None:
            if value.dtype != np.float32:
                return None
            if value.size == 1:
                return ("scalar", float(value.reshape(())))
            rank = len(self.shape)
            if value.ndim > rank or value.ndim < rank - 1:
                return None
            padded = value.reshape((1,) * (rank - value.ndim) + value.shape)
            if padded.shape[1] != self.channels or any(d != 1 for i, d in enumerate(padded.shape) if i != 1):
                return None
            self.channel_rows.append(padded.reshape(-1))
            return ("channel", len(self.channel_rows) - 1)
        if isinstance(arg, relax.Var) and _same_tensor_type(arg.ty, self.shape):
            if arg not in self.tensors:
                self.tensors.append(arg)
            return ("tensor", self.tensors.index(arg))
        return None

    def try_add(self, var, value) -> bool:
        """Take the binding ``var = value`` into the group if it is an elementwise
        operation of the group's values whose result has the product's shape."""
        if not any(isinstance(a, relax.Var) and a in self.index for a in _operands(value)):
            return False
        if isinstance(value, relax.TupleGetItem):
            if value.index != 0 or value.tuple_value not in self.normalized:
                return False
            return self._add(var, ("same", ("value", self.index[value.tuple_value])))
        if not isinstance(value.op, tvm.ir.Op):
            return False
        if value.op.name == "relax.nn.batch_norm":
            return self._add_batch_norm(var, value)
        if not _same_tensor_type(var.ty, self.shape):
            return False
        name = value.op.name
        saved = (list(self.channel_rows), list(self.tensors))
        if name in _BINARY and len(value.args) == 2:
            operands = [self.operand(a) for a in value.args]
            step = (_BINARY[name], *operands)
        elif name in _UNARY and value.args:
            operands = [self.operand(value.args[0])]
            if name == "relax.clip":
                bounds = [_prim_float(a) for a in value.args[1:3]]
                if len(bounds) != 2 or None in bounds:
                    return False
                operands += bounds
            elif name == "relax.nn.leakyrelu":
                operands.append(float(value.attrs.alpha))
            step = (_UNARY[name], *operands)
        else:
            return False
        if any(o is None for o in operands):
            self.channel_rows, self.tensors = saved
            return False
        return self._add(var, step)

    def _add(self, var, *steps) -> bool:
        self.steps.extend(steps)
        self.index[var] = len(self.steps) - 1
        self.vars.append(var)
        return True

    def _add_batch_norm(self, var, call) -> bool:
        """Inference's batch normalization of a group value along the channels, as
        TVM's topi computes it: (v - mean) / sqrt(var + epsilon) * gamma + beta, the
        square root of constants taken here in float32 as it would be at run time.
        ``var`` is its tuple; its first element joins the group by ``same``."""
        attrs = call.attrs
        data = call.args[0]
        params = [_constant(a, self.bound) for a in call.args[1:5]]
        if not (isinstance(data, relax.Var) and data in self.index) or any(
                p is None or p.dtype != np.float32 or p.shape != (self.channels,) for p in params) \
                or int(attrs.axis) not in (1, 1 - len(self.shape)) or bool(attrs.training):
            return False
        gamma, beta, mean, variance = params
        root = np.sqrt(variance + np.float32(float(attrs.epsilon)))
        rows = len(self.channel_rows)
        self.channel_rows += [mean, root]
        steps = [("subtract", ("value", self.index[data]), ("channel", rows)),
                 ("divide", ("value", len(self.steps)), ("channel", rows + 1))]
        if bool(attrs.scale):
            self.channel_rows.append(gamma)
            steps.append(("multiply", ("value", len(self.steps) + len(steps) - 1),
                          ("channel", len(self.channel_rows) - 1)))
        if bool(attrs.center):
            self.channel_rows.append(beta)
            steps.append(("add", ("value", len(self.steps) + len(steps) - 1),
                          ("channel", len(self.channel_rows) - 1)))
        self.normalized.add(var)
        return self._add(var, *steps)


def _operands(value) -> list:
    """The operands of a binding's value: a call's arguments, a tuple item's tuple."""
    if isinstance(value, relax.TupleGetItem):
        return [value.tuple_value]
    return list(value.args) if isinstance(value, relax.Call) else []


def _prim_float(arg):
    """A clip bound's value (an immediate in this TVM), or None."""
    value = getattr(arg, "value", None)
    if isinstance(arg, (tirx.IntImm, tirx.FloatImm)) and isinstance(value, (int, float)):
        return float(value)
    return None


def _same_tensor_type(ty, shape) -> bool:
    return isinstance(ty, relax.TensorType) and ty.dtype == "float32" \
        and isinstance(ty.shape, relax.ShapeExpr) and len(ty.shape.values) == len(shape) \
        and all(tvm_ffi.structural_equal(a, b) for a, b in zip(ty.shape.values, shape))


def _uses(func: relax.Function) -> dict:
    """How many times each Var is referred to in ``func`` (its bindings and its result)."""
    counts = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func, visit)
    return counts


@tvm.transform.module_pass(opt_level=0, name="FuseConvEpilogues")
class FuseConvEpilogues:
    """Fuse each channel-by-channel convolution product with the elementwise group that
    follows it (see the module's documentation)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        products = {gv: func for gv, func in mod.functions_items()
                    if isinstance(func, tirx.PrimFunc) and func.attrs is not None
                    and CONV_MATMUL_ATTR in func.attrs}
        if not products:
            return mod
        # (a batch normalization's unused moving mean and variance would count as uses)
        mod = relax.transform.DeadCodeElimination()(mod)
        builder = relax.BlockBuilder(mod)
        kernels = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                uses = _uses(func)
                bound = {b.var: b.value for block in func.body.blocks for b in block.bindings
                         if isinstance(b, relax.VarBinding)}
                blocks = [_fuse_block(block, uses, bound, products, builder, kernels)
                          for block in func.body.blocks]
                builder.update_func(gv, with_blocks(func, blocks))
        return without_uncalled_kernels(relax.transform.Normalize()(builder.get()))


def _fuse_block(block, uses, bound, products, builder, kernels):
    if not isinstance(block, relax.DataflowBlock):
        return block
    bindings = list(block.bindings)
    replaced, dropped = {}, set()
    for at, binding in enumerate(bindings):
        value = binding.value
        if not isinstance(binding, relax.VarBinding) or not isinstance(value, relax.Call) \
                or value.op != tvm.ir.Op.get("relax.call_tir") or value.args[0] not in products \
                or binding.var in dropped:
            continue
        group = _grow(binding.var, value, bindings[at + 1:], uses, bound, dropped)
        if group is None:
            continue
        last, group = group
        replaced[last] = _fused_call(group, products[value.args[0]], builder, kernels)
        dropped.update(v for v in group.vars if not v.same_as(last))
    if not replaced:
        return block
    out = []
    for binding in bindings:
        if binding.var in dropped:
            continue
        if binding.var in replaced:
            binding = relax.VarBinding(binding.var, replaced[binding.var])
        out.append(binding)
    return relax.DataflowBlock(out, block.span)


def _grow(product_var, call, after, uses, bound, dropped):
    """The last variable and the group of the largest prefix of the elementwise
    bindings after the product whose inner values are used only inside it; None where
    no binding joins."""
    shape = call.ty.shape.values if isinstance(call.ty, relax.TensorType) else None
    if shape is None or len(shape) < 2 or not isinstance(shape[1], tirx.IntImm):
        return None
    group = _Group(product_var, call, list(shape), int(shape[1]), bound)
    inside = {product_var: 0}  # uses of each value from inside the group
    outside = {}  # and from the bindings that did not join
    best = None
    for binding in after:
        if all(inside.get(v, 0) + outside.get(v, 0) == uses.get(v, 0) for v in group.vars):
            break  # (no later binding refers to the group: none can join)
        if binding.var in dropped or not isinstance(binding, relax.VarBinding):
            continue
        if not group.try_add(binding.var, binding.value):
            # (where it uses the group's values, the use counts tell)
            for arg in _operands(binding.value):
                if isinstance(arg, relax.Var) and arg in group.index:
                    outside[arg] = outside.get(arg, 0) + 1
            continue
        for arg in _operands(binding.value):
            if isinstance(arg, relax.Var) and arg in group.index and not arg.same_as(binding.var):
                inside[arg] = inside.get(arg, 0) + 1
        inside[binding.var] = 0
        if binding.var not in group.normalized \
                and all(uses.get(v, 0) == inside.get(v, 0) for v in group.vars[:-1]):
            best = (binding.var, len(group.vars), len(group.steps),
                    len(group.channel_rows), len(group.tensors))

    if best is None:
        return None
    last, nvars, nsteps, nrows, ntensors = best
    group.vars, group.steps = group.vars[:nvars], group.steps[:nsteps]
    group.channel_rows, group.tensors = group.channel_rows[:nrows], group.tensors[:ntensors]
    return last, group


def _fused_call(group, product, builder, kernels):
    """The call of the product kernel built again with the group as its epilogue."""
    from .host_conv import rebuild_product

    recipe = product.attrs[CONV_MATMUL_ATTR]
    epilogue = Epilogue(group.steps, len(group.channel_rows), len(group.tensors))
    key = (str(recipe), epilogue.key)
    if key not in kernels:
        kernels[key] = add_kernel(builder, rebuild_product(recipe, epilogue))
    call = group.call
    args = list(call.args[1].fields)
    if group.channel_rows:
        args.append(relax.const(np.stack(group.channel_rows).astype(np.float32), "float32"))
    args += group.tensors
    return builder.normalize(relax.call_tir(kernels[key], args, out_ty=call.ty))

"""The precision passes: recurrent weights stored at reduced precision, and the weights
of the matrix products and convolutions around them rounded.

``ReduceWeightPrecision(config)`` is a module pass.  For each ``call_tir`` of a
recurrent-loop kernel whose node the :class:`~memotvm.precision.PrecisionConfig` puts
below fp32, it replaces the constant W and R by their stored form (bfloat16, or int8
followed by their per-row scales; :mod:`memotvm.precision`) and the kernel by one built
to read them.  It runs before the memoization pass, which keeps the weights' storage
and derives its predictors from the rounded weights (:func:`effective_weights`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..errors import ConfigError, UnsupportedModelError
from ..kernels import build_kernel, kernel_memo_plan, kernel_weights
from ..kernels.bf16_dot import r_words
from ..precision import (STORAGE, PrecisionConfig, bf16_pairs, node_storage,
                         rounded_directions, rounded_rows, store_weights, unpack_bf16_pairs)
from ._relax_util import add_kernel, rewrite_functions, without_uncalled_kernels
from .kernel_calls import in_loop_body, recurrent_calls, recurrent_kernel


def node_inputs(loop) -> int:
    """How many of a kernel's arguments are the node's own inputs (X, W, R and the
    optional ones it has); int8 scales and the scheme's data follow."""
    return 3 + sum(loop.has(label) for label in ("B", "sequence_lens", "initial_h", "initial_c", "P"))


def effective_weights(loop, kernel, args):
    """(W, R) as float32 arrays of the values a kernel computes with -- its constant
    weights dequantized -- or None where they are computed at run time."""
    W, R = args[1], args[2]
    if not (isinstance(W, GenericConst) and isinstance(R, GenericConst)):
        return None
    W, R = W.value.numpy(), R.value.numpy()
    if kernel_weights(kernel) == "bfloat16":
        return W.astype(np.float32), R.astype(np.float32)
    if kernel_weights(kernel) == "bfloat16_pairs":
        return W.astype(np.float32), unpack_bf16_pairs(R, loop.hidden_size)
    if kernel_weights(kernel) != "int8":
        return W, R
    at = node_inputs(loop)
    w_scale, r_scale = (a.value.numpy() for a in args[at:at + 2])
    return (W.astype(np.float32) * w_scale[..., None],
            R.astype(np.float32) * r_scale[..., None])


def check_precision(mod, config: PrecisionConfig) -> None:
    """Raise ConfigError where a node put below fp32 cannot be (called before the pass:
    errors raised inside a TVM pass lose their type)."""
    for loop, call in recurrent_calls(mod, loop_bodies=False):
        wanted = config.for_loop(loop)
        if all(p == "fp32" for p in wanted):
            continue
        if loop.dtype != "float32":
            raise ConfigError(f"precision {'/'.join(wanted)} applies to float32 layers; "
                              f"{loop.op} node '{loop.name}' is {loop.dtype}")
        if "bf16-act" in wanted and len(set(wanted)) > 1:
            raise ConfigError(f"precision bf16-act applies to every direction of a node or to "
                              f"none; {loop.op} node '{loop.name}' asks for {'/'.join(wanted)}")
        W, R = call.args[1].fields[1:3]
        if not (isinstance(W, GenericConst) and isinstance(R, GenericConst)):
            raise ConfigError(f"precision {'/'.join(wanted)} rounds the weights at compile time, "
                              f"but {loop.op} node '{loop.name}' computes W or R at run time")
        for label, value in (("W", W), ("R", R)):
            array = value.value.numpy()
            if not np.isfinite(array).all():
                raise UnsupportedModelError(
                    f"{loop.op} node '{loop.name}': its {label} holds NaN or infinite values, "
                    f"which precision {'/'.join(wanted)} cannot round")


@tvm.transform.module_pass(opt_level=0, name="ReduceWeightPrecision")
class ReduceWeightPrecision:
    """Store every recurrent node's weights at the precision ``config`` gives it."""

    def __init__(self, config: PrecisionConfig):
        self.config = PrecisionConfig.coerce(config)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return without_uncalled_kernels(rewrite_functions(_WeightRewriter(mod, self.config), mod))


@relax.expr_functor.mutator
class _WeightRewriter(relax.PyExprMutator):
    def __init__(self, mod, config):
        super().__init__(mod)
        self.mod_ = mod
        self.config = config

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        hit = recurrent_kernel(self.mod_, call)
        if hit is None or kernel_weights(hit[1]) != "float32" or in_loop_body(hit[1]):
            return call  # (float64, already reduced, or in a Loop's body: fp32 there)
        loop, kernel = hit
        wanted = self.config.for_loop(loop)
        if all(p == "fp32" for p in wanted):
            return call
        args = list(call.args[1].fields)
        storage = node_storage(wanted)
        W, R = args[1].value.numpy(), args[2].value.numpy()
        if storage == "fp32":
            # Directions at different precisions: float32 holding each one's values.
            for i, weights in ((1, W), (2, R)):
                args[i] = relax.const(rounded_directions(weights, wanted), "float32")
            return relax.call_tir(call.args[0], args, out_ty=list(call.ty_args[0].fields))
        stored = [store_weights(W, storage), store_weights(R, storage)]
        dtype = STORAGE[storage]
        args[1] = relax.const(stored[0].values, stored[0].values.dtype.name)
        args[2] = relax.const(stored[1].values, stored[1].values.dtype.name)
        if storage == "bf16-act":
            args[2] = relax.const(bf16_pairs(stored[1].values, r_words(loop.hidden_size)), "int32")
        if storage == "int8":
            at = node_inputs(loop)
            args[at:at] = [relax.const(s.scales, "float32") for s in stored]
        rebuilt = add_kernel(self.builder_, build_kernel(loop, kernel_memo_plan(kernel), weights=dtype))
        return relax.call_tir(rebuilt, args, out_ty=list(call.ty_args[0].fields))


# The module attribute that tells the CPU backend's packed matrix products
# (memotvm.targets.host_gemm) to store their weights at this precision.
PRODUCTS_ATTR = "memotvm.products_precision"


@tvm.transform.module_pass(opt_level=0, name="RoundProductWeights")
class RoundProductWeights:
    """Round the constant weights of the matrix products and convolutions (relax.matmul,
    including a transposed weight, and relax.nn.conv1d/conv2d) to ``precision``, one
    output's weights per row (:func:`memotvm.precision.rounded_rows`), and record the
    precision in the module's ``memotvm.products_precision`` attribute, from which the
    packed matrix products store those weights narrow."""

    def __init__(self, precision: str):
        self.precision = precision

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.precision == "fp32":
            return mod
        rewritten = rewrite_functions(_ProductRewriter(mod, self.precision), mod)
        return rewritten.with_attr(PRODUCTS_ATTR, self.precision)


@relax.expr_functor.mutator
class _ProductRewriter(relax.PyExprMutator):
    def __init__(self, mod, precision):
        super().__init__(mod)
        self.precision = precision
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.permute = tvm.ir.Op.get("relax.permute_dims")
        self.convs = {tvm.ir.Op.get("relax.nn.conv1d"), tvm.ir.Op.get("relax.nn.conv2d")}

    def _rounded(self, const, axis):
        value = const.value.numpy()
        if value.dtype != np.float32 or value.size == 0:
            return const
        return relax.const(rounded_rows(value, self.precision, axis), "float32")

    def _weight(self, expr, axis):
        """``expr`` (a weight operand) with its constant rounded, rows along ``axis``; a
        transposed constant's rows are the other axis of the constant."""
        if isinstance(expr, relax.Var) and (bound := self.lookup_binding(expr)) is not None \
                and isinstance(bound, (GenericConst, relax.Call)):
            rounded = self._weight(bound, axis)
            return expr if rounded is bound else rounded
        if isinstance(expr, GenericConst):
            return self._rounded(expr, axis) if len(expr.ty.shape) == 2 or axis == 0 else expr
        if isinstance(expr, relax.Call) and expr.op == self.permute \
                and isinstance(expr.args[0], GenericConst) and len(expr.args[0].ty.shape) == 2:
            axes = expr.attrs.axes
            if axes is None or [int(a) for a in axes] == [1, 0]:
                return relax.op.permute_dims(self._rounded(expr.args[0], 1 - axis), axes)
        return expr

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op == self.matmul:  # y = x @ W: a row is a column of W
            w = self._weight(call.args[1], 1)
            if w is not call.args[1]:
                return relax.Call(call.op, [call.args[0], w], call.attrs)
        elif call.op in self.convs:  # a row is an output channel
            w = self._weight(call.args[1], 0)
            if w is not call.args[1]:
                return relax.Call(call.op, [call.args[0], w], call.attrs)
        return call

"""Finding the recurrent-loop kernels and their calls in a Relax module."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..frontend.recurrent import RecurrentLoop


# A kernel of a recurrent node that an ONNX Loop body runs once per iteration: each call
# is a sequence of its own, whose memo table starts empty (docs/spec.md), so the
# memoization and precision passes leave it as it is.
LOOP_BODY_ATTR = "memotvm.loop_body"


def in_loop_body(kernel) -> bool:
    """Whether the kernel runs in an ONNX Loop's body (:data:`LOOP_BODY_ATTR`)."""
    return bool(kernel.attrs and LOOP_BODY_ATTR in kernel.attrs)


def weights_are_constant(call) -> bool:
    args = call.args[1].fields
    return isinstance(args[1], GenericConst) and isinstance(args[2], GenericConst)


def kernel_loop(func):
    """The RecurrentLoop a recurrent-loop kernel computes; None for other functions."""
    if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and "memotvm.recurrent" in func.attrs:
        return RecurrentLoop.from_json(str(func.attrs["memotvm.recurrent"]))
    return None


def recurrent_kernel(mod, call):
    """(loop, kernel) where ``call`` is a call_tir of one of mod's recurrent-loop
    kernels, else None."""
    if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.call_tir"):
        return None
    if call.args[0] not in mod.functions:  # (a shape function TVM's legalization calls)
        return None
    loop = kernel_loop(kernel := mod[call.args[0]])
    return None if loop is None else (loop, kernel)


def recurrent_calls(mod, loop_bodies=True):
    """(loop, call) for every call_tir of a recurrent-loop kernel in mod's functions
    (``loop_bodies=False``: but those of kernels in ONNX Loop bodies)."""
    found = []

    def visit(expr):
        if (hit := recurrent_kernel(mod, expr)) is not None and (loop_bodies or not in_loop_body(hit[1])):
            found.append((hit[0], expr))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found

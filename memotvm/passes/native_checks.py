"""Run-time checks compiled into the model: TIR assertions, not Python callbacks.

A check is a small PrimFunc called *in place* on a tensor the next operator reads (the
tensor passes through unchanged, which orders the check before that operator and keeps
it alive), with the values it checks -- dimensions computed at run time -- passed as an
int64 tensor.  A failed check stops the call with an error whose message starts with
:data:`ERROR_PREFIX`; :class:`memotvm.runtime.CompiledModel` raises it as an
:class:`~memotvm.errors.InputError`, and a program that runs an exported model with the
TVM runtime alone sees the same message.  Nothing of memotvm or Python is needed at run
time.
"""

from __future__ import annotations

import itertools
import re

from tvm import relax, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

ERROR_PREFIX = "memotvm.InputError: "
# TVM's message when a value fails a match_cast at run time.
_MATCH_CAST_ERROR = re.compile(r"\((\d+) vs\. (\d+)\)\s*:\s*ErrorContext\(match_cast, ty=R\.Tensor\((.*?), "
                               r"dtype=[^)]*\)\)\s*match_cast error,\s*([^\n]*?)\.?\s*$", re.MULTILINE)
_names = itertools.count()


def input_error_message(err: BaseException) -> str | None:
    """The message of a failed check (None for any other error)."""
    text = str(err)
    at = text.find(ERROR_PREFIX)
    if at >= 0:
        return text[at + len(ERROR_PREFIX):].splitlines()[0].strip()
    # A size the importer gave a value TVM knew only the rank of (the input of a
    # recurrent node after a Slice to a run-time length), which the input does not have.
    match = _MATCH_CAST_ERROR.search(text)
    if match is None:
        return None
    got, want, shape, detail = match.groups()
    return (f"a tensor computed inside the model has a size its next operator cannot take "
            f"(the model's shapes do not fit these inputs): it must have shape {shape}, "
            f"but {detail} ({got} where {want} is needed)")


def checked(builder: relax.BlockBuilder, x, values: list, emit_asserts, name: str):
    """``x`` after a check kernel ``name``: ``emit_asserts(x_buffer, values_buffer)``
    emits the TIR assertions over the tensor and ``values`` (PrimExprs, passed as int64)."""
    shown = values or [tirx.const(0, "int64")]
    tensor = builder.emit(relax.op.shape_to_tensor(relax.ShapeExpr(shown)))
    return _in_place_check(builder, x, tensor, (len(shown),), "int64", emit_asserts, name)


def _in_place_check(builder, x, operand, operand_shape, operand_dtype, emit_asserts, name):
    """``x`` after a kernel ``name`` that takes it and ``operand`` (a tensor of
    ``operand_shape``) and runs ``emit_asserts(x_buffer, operand_buffer)``."""
    x_ty = x.ty
    name = f"{name}_{next(_names)}"  # each check its own symbol
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            # Opaque: never fused with the operators around it (its tensor is an alias).
            T.func_attr({"tir.noalias": True, "op_pattern": 8})
            dims = [tirx.Var(f"d{i}", "int64") for i in range(x_ty.ndim)]
            x_buf = T.match_buffer(T.arg("x", T.handle()), dims, str(x_ty.dtype))
            operand_buf = T.match_buffer(T.arg("operand", T.handle()), operand_shape, operand_dtype)
            emit_asserts(x_buf, operand_buf)
    kernel = builder.add_func(ib.get(), name)
    return builder.emit(relax.call_tir_inplace(kernel, [x, operand], inplace_indices=[0], out_ty=x_ty))


def assert_that(condition, message: str) -> None:
    """One assertion (inside the check kernel being built)."""
    with T.Assert(condition, ERROR_PREFIX + message, error_kind="ValueError"):
        T.evaluate(0)


def each_element(buf, body) -> None:
    """body(value) for every element of ``buf`` (row-major), inside the kernel."""
    total = tirx.const(1, "int64")
    for dim in buf.shape:
        total = total * dim
    with T.serial(0, total) as i:
        index, rest = [], i
        for dim in reversed(list(buf.shape)):
            index.append(rest % dim)
            rest = rest // dim
        body(buf[tuple(reversed(index))] if buf.shape else buf[()])


def stop_if(builder: relax.BlockBuilder, x, condition, message: str):
    """``x`` after a check that stops the call with ``message`` where ``condition`` (a
    bool scalar tensor) is true: what an If branch that could not be compiled returns
    (:meth:`memotvm.frontend.importer.RecurrentGraphImporter._unreachable_branch`)."""
    return _in_place_check(builder, x, condition, (), "bool",
                           lambda _x, cond: assert_that(tirx.Not(cond[()]), message), "unreachable")

"""Shared plumbing of memotvm's Relax passes."""

from __future__ import annotations

import tvm
from tvm import relax, tirx


def rewrite_functions(mutator: relax.PyExprMutator, mod):
    """Run ``mutator`` over every Relax function of ``mod``; return the new module
    (with whatever functions the mutator added through its builder)."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def with_blocks(func: relax.Function, blocks: list) -> relax.Function:
    """``func`` with its body's binding blocks replaced by ``blocks`` (its value, type,
    purity and attributes kept)."""
    body = relax.SeqExpr(blocks, func.body.body, func.body.span)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)


def called_functions(mod) -> set:
    """The GlobalVars mod's Relax functions refer to."""
    called = set()

    def visit(expr):
        if isinstance(expr, tvm.ir.GlobalVar):
            called.add(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return called


def without_uncalled_kernels(mod):
    """``mod`` without the PrimFuncs no Relax function refers to any more (a kernel a
    pass replaced).  TVM's dead-code elimination keeps every function with a global
    symbol, so a replaced kernel would still be lowered and compiled."""
    called = called_functions(mod)
    kept = {gv: func for gv, func in mod.functions_items()
            if not isinstance(func, tirx.PrimFunc) or gv in called}
    if len(kept) == len(mod.functions_items()):
        return mod
    return tvm.IRModule(kept, attrs=mod.attrs, global_infos=mod.global_infos)


def fold_constants(mod):
    """``mod`` after TVM's FoldConstant, or ``mod`` itself where folding would leave it
    calling a function it does not define.

    FoldConstant legalizes an operator to see whether it can evaluate it.  The
    legalization of ``dynamic_strided_slice`` (a Slice to a length known only at run
    time) binds a call of a shape function, which stays in the folded function while
    the shape function is dropped, and the module no longer builds.  Unfolded, the
    module still builds: the CPU pipeline folds again after legalizing every operator.
    """
    folded = relax.transform.FoldConstant()(mod)
    return folded if called_functions(folded) <= set(folded.get_global_vars()) else mod


def elements(dims):
    """The product of dimensions (PrimExprs or ints) as an int64 PrimExpr."""
    out = tirx.const(1, "int64")
    for dim in dims:
        out = out * dim
    return out


def add_kernel(builder: relax.BlockBuilder, kernel):
    """Add a PrimFunc to the builder's module under its own symbol; return its GlobalVar."""
    return builder.add_func(kernel, str(kernel.attrs["global_symbol"]))


def float32_rows(x):
    """x's shape as a list where x is a float32 tensor of known rank whose last
    dimension is static (what :func:`call_on_rows` needs), else None."""
    info = x.ty
    if not isinstance(info, relax.TensorType) or info.dtype != "float32" \
            or not isinstance(info.shape, relax.ShapeExpr):
        return None
    shape = list(info.shape.values)
    return shape if shape and isinstance(shape[-1], tirx.IntImm) else None


def call_on_rows(builder: relax.BlockBuilder, kernel, x, args, columns: int):
    """Call a row kernel, ``kernel(rows_of_x, *args) -> float32 [rows, columns]``, on x
    [..., n] viewed as [rows, n] (rows the product of the leading dimensions); return
    the result as [..., columns].  The views are reshapes, which TVM makes free."""
    shape = list(x.ty.shape.values)
    lead = shape[:-1]
    rows = elements(lead)
    flat = len(shape) == 2
    x2 = x if flat else builder.emit(relax.op.reshape(x, relax.ShapeExpr([rows, shape[-1]])))
    out = relax.call_tir(kernel, [x2, *args], out_ty=relax.TensorType([rows, columns], "float32"))
    return out if flat else relax.op.reshape(builder.emit(out), relax.ShapeExpr(lead + [columns]))

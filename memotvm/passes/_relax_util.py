"""Shared plumbing of memotvm's Relax passes."""

from __future__ import annotations

from tvm import relax


def rewrite_functions(mutator: relax.PyExprMutator, mod):
    """Run ``mutator`` over every Relax function of ``mod``; return the new module
    (with whatever functions the mutator added through its builder)."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()

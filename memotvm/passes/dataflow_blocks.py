"""BindingsIntoDataflow: put the pure bindings that lie outside dataflow blocks into them.

TVM's operator fusion (FuseOps) works inside dataflow blocks only, and TVM's ONNX
importer emits none around an ``If``: a model with one (a detector that selects a branch
by its sample rate) ran every elementwise operator as a call of its own.  This pass
splits each plain binding block into runs of bindings that may live in a dataflow block
(not an ``If``, no impure call) and makes each run one.  TVM's own ConvertToDataflow
does this too, but its clean-up (CanonicalizeBindings) drops ``match_cast`` bindings
whose shapes it cannot tell apart, among them the checks :mod:`.shape_checks` inserts.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ._relax_util import with_blocks


@tvm.transform.module_pass(opt_level=0, name="BindingsIntoDataflow")
class BindingsIntoDataflow:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
                continue
            blocks = _regrouped(func.body.blocks, func.body.body)
            if blocks is not None:
                updates[gvar] = with_blocks(func, blocks)
        if not updates:
            return mod
        functions = {gvar: updates.get(gvar, func) for gvar, func in mod.functions_items()}
        return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def _flows(binding) -> bool:
    """Whether ``binding`` may stand in a dataflow block."""
    value = binding.value
    return not isinstance(value, relax.If) and not relax.analysis.contains_impure_call(value)


def _regrouped(blocks, result) -> list | None:
    """``blocks`` (then ``result``, the function's value) with each plain block split
    into dataflow runs and the rest; None where nothing changes."""
    runs = []  # (bindings, whether a dataflow run), in order
    for block in blocks:
        if isinstance(block, relax.DataflowBlock):
            runs.append((list(block.bindings), None))  # kept as it is
            continue
        for binding in block.bindings:
            here = _flows(binding)
            if runs and runs[-1][1] is here:
                runs[-1][0].append(binding)
            else:
                runs.append(([binding], here))
    if not any(flowing for _, flowing in runs):
        return None
    # A variable that nothing after its run reads becomes a DataflowVar: FuseOps fuses
    # only through those (a plain Var is an output of the block it is bound in).
    used_later: set = set(relax.analysis.free_vars(result))
    private: list = [None] * len(runs)
    for i in range(len(runs) - 1, -1, -1):
        bindings, flowing = runs[i]
        if flowing:
            private[i] = {b.var for b in bindings
                          if b.var not in used_later and not isinstance(b.var, relax.DataflowVar)}
        for binding in bindings:
            used_later.update(relax.analysis.free_vars(binding.value))
    out = []
    for (bindings, flowing), hidden in zip(runs, private):
        if flowing is None:
            out.append(relax.DataflowBlock(bindings))
        elif flowing:
            out.append(relax.DataflowBlock(_renamed(bindings, hidden)))
        else:
            out.append(relax.BindingBlock(bindings))
    return out


def _renamed(bindings, hidden: set) -> list:
    """``bindings`` with the variables in ``hidden`` made DataflowVars."""
    renamed = {var: relax.DataflowVar(var.name, var.ty) for var in hidden}
    mutator = _Renamer(renamed)
    out = []
    for binding in bindings:
        var = renamed.get(binding.var, binding.var)
        value = mutator.visit_expr(binding.value)
        if isinstance(binding, relax.MatchCast):
            out.append(relax.MatchCast(var, value, binding.ty))
        else:
            out.append(relax.VarBinding(var, value))
    return out


@relax.expr_functor.mutator
class _Renamer(relax.PyExprMutator):
    def __init__(self, renamed: dict):
        super().__init__()
        self.renamed = renamed

    def visit_var_(self, var):
        return self.renamed.get(var, var)

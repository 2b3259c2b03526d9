"""SinkIntoBranches: compute what only one branch of an ``If`` needs inside that branch.

TVM's ONNX importer converts both branches of an ``If`` before it, so a model that
selects its 8 kHz or 16 kHz path by an input runs both paths on every call, and the
``If`` only picks the results.  This pass moves each binding before an ``If`` whose
value only one branch reads (directly or through other such bindings) into that branch.

The kernels' counts of a recurrent node in a branch reach the function's results
through a select on the branch's condition after the ``If``
(``where(taken, counts, zeros)``, see :mod:`memotvm.frontend.importer`): such a
select becomes an output of the ``If`` itself (its operands computed in the branches),
so that the counted kernel can move into its branch too.

An ``If`` before it moves like any other binding: a model that branches on its sample
rate and then, in each path, on a frame count, runs only the taken path's inner ``If``.

What stays before the ``If``: what both branches or anything after the ``If`` read,
``match_cast`` bindings that bind symbolic sizes (later types may name them) and
impure calls.  A memoized kernel's table reaches the results through the same kind of
select (:func:`memotvm.passes.memoize._tables_of_branches`), so it moves too.  Moving a pure computation into the branch
that uses it changes no result; a check compiled into the other branch no longer runs,
as onnxruntime does not run that branch either.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ._relax_util import with_blocks

_THEN, _ELSE, _OUT, _DROPPED = "then", "else", "out", "dropped"


@tvm.transform.module_pass(opt_level=0, name="SinkIntoBranches")
class SinkIntoBranches:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)
        outline = _Outliner(builder)
        updates = {}
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
                continue
            blocks, changed = list(func.body.blocks), False
            for i, block in enumerate(blocks):
                if isinstance(block, relax.DataflowBlock):
                    continue
                bindings = list(block.bindings)
                position = 0
                while position < len(bindings):
                    sunk = None
                    if isinstance(bindings[position].value, relax.If):
                        sunk = _sink(bindings, position, blocks[i + 1:], func.body.body, outline,
                                     _sizes_defined(func.params, blocks[:i]))
                    if sunk is None:
                        position += 1
                    else:
                        (bindings, position), changed = sunk, True
                blocks[i] = relax.BindingBlock(bindings)
            if changed:
                updates[gvar] = with_blocks(func, blocks)
        if not updates:
            return mod
        for gvar, func in updates.items():
            builder.update_func(gvar, func)
        return relax.transform.Normalize()(builder.get())


def _condition_aliases(bindings, cond) -> dict:
    """Variables that hold the If's condition (True) or its negation (False): casts to
    bool, reshapes (to a scalar) and logical_not of it."""
    aliases = {cond: True}
    ops = {name: tvm.ir.Op.get(name) for name in ("relax.astype", "relax.reshape", "relax.logical_not")}
    for binding in bindings:
        value = binding.value
        if not isinstance(value, relax.Call) or not value.args or value.args[0] not in aliases:
            continue
        polarity = aliases[value.args[0]]
        if value.op == ops["relax.logical_not"]:
            aliases[binding.var] = not polarity
        elif value.op == ops["relax.reshape"] or (
                value.op == ops["relax.astype"] and str(value.attrs.dtype) == "bool"):
            aliases[binding.var] = polarity
    return aliases


def _selects(bindings, position, aliases) -> dict:
    """The bindings after the If at ``position`` that select by its condition between
    values computed before it: their position -> (the value when the then branch is
    taken, the value when the else branch is)."""
    where = tvm.ir.Op.get("relax.where")
    bound_after = {b.var for b in bindings[position:]}
    out = {}
    for p in range(position + 1, len(bindings)):
        binding = bindings[p]
        value = binding.value
        if isinstance(binding, relax.VarBinding) and isinstance(value, relax.Call) \
                and value.op == where and value.args[0] in aliases \
                and all(isinstance(a, relax.Var) and a not in bound_after for a in value.args[1:]):
            chosen, other = value.args[1], value.args[2]
            out[p] = (chosen, other) if aliases[value.args[0]] else (other, chosen)
    return out


def _sink(bindings, position, later_blocks, result, outline, defined):
    """``bindings`` with what only one branch of the If at ``position`` reads moved
    into it, and the position of the first binding after the rewritten If; None where
    nothing moves.  ``defined``: the sizes the parameters and earlier blocks define."""
    if_binding = bindings[position]
    branch = if_binding.value
    if not isinstance(branch.cond, relax.Var):
        return None
    selects = _selects(bindings, position, _condition_aliases(bindings[:position], branch.cond))
    readers: dict = {}  # variable -> the sides that read it

    def read(expr, side):
        for var in relax.analysis.free_vars(expr):
            readers.setdefault(var, set()).add(side)

    read(result, _OUT)
    for block in later_blocks:
        for binding in block.bindings:
            read(binding.value, _OUT)
    for p in range(position + 1, len(bindings)):
        if p in selects:
            read(selects[p][0], _THEN)
            read(selects[p][1], _ELSE)
            read(bindings[p].value.args[0], _OUT)
        else:
            read(bindings[p].value, _OUT)
    read(branch.true_branch, _THEN)
    read(branch.false_branch, _ELSE)
    read(branch.cond, _OUT)
    sink = {}  # position -> the branch it moves into
    unread = []  # positions of pure bindings that nothing reads
    known = [set(defined)]  # known[p]: the sizes defined before bindings[p]
    for binding in bindings[:position]:
        known.append(known[-1] | set(relax.analysis.tir_vars_in_type(binding.var.ty)))
    for p in range(position - 1, -1, -1):
        binding = bindings[p]
        sides = readers.get(binding.var, set())
        movable = (isinstance(binding, relax.VarBinding) or _checks_only(binding, known[p])) \
            and not relax.analysis.contains_impure_call(binding.value)
        if movable and not sides:
            unread.append(p)
        elif movable and len(sides) == 1 and _OUT not in sides:
            (sink[p],) = sides
            read(binding.value, sink[p])
        else:
            read(binding.value, _OUT)
    if not sink:
        return None
    # What nothing reads (a kernel's output no one uses) goes with what it reads (what
    # stays before the If is visible in both branches), or is dropped where that went
    # into both branches.
    moved = {bindings[p].var: side for p, side in sink.items()}
    dropped = set()
    for p in sorted(unread):
        sides = {moved.get(var, _OUT) for var in relax.analysis.free_vars(bindings[p].value)} - {_OUT}
        if len(sides) == 1 and _DROPPED not in sides:
            (sink[p],) = sides
            moved[bindings[p].var] = sink[p]
        elif sides:
            dropped.add(p)
            moved[bindings[p].var] = _DROPPED
    order = sorted(selects)
    then_branch = outline(_branch(branch.true_branch, [bindings[p] for p in sorted(sink)
                                                       if sink[p] == _THEN],
                                  [selects[p][0] for p in order]), "then")
    else_branch = outline(_branch(branch.false_branch, [bindings[p] for p in sorted(sink)
                                                        if sink[p] == _ELSE],
                                  [selects[p][1] for p in order]), "else")
    rewritten = [b for p, b in enumerate(bindings[:position]) if p not in sink and p not in dropped]
    if order:
        fields = [if_binding.var.ty] + [bindings[p].var.ty for p in order]
        joined = relax.Var(if_binding.var.name + "_selects", relax.TupleType(fields))
        rewritten.append(relax.VarBinding(joined, relax.If(branch.cond, then_branch, else_branch)))
        rewritten.append(relax.VarBinding(if_binding.var, relax.TupleGetItem(joined, 0)))
        rewritten += [relax.VarBinding(bindings[p].var, relax.TupleGetItem(joined, i + 1))
                      for i, p in enumerate(order)]
    else:
        rewritten.append(relax.VarBinding(if_binding.var,
                                          relax.If(branch.cond, then_branch, else_branch)))
    after = len(rewritten)
    rewritten += [b for p, b in enumerate(bindings) if p > position and p not in selects]
    return rewritten, after


def _checks_only(binding, defined: set) -> bool:
    """Whether ``binding`` is a match_cast that defines no size (it only checks, as the
    run-time check that a squeezed axis is 1 does, or a state's batch that must be the
    input's): it can move with what reads it.  ``defined``: the sizes defined before it."""
    if not isinstance(binding, relax.MatchCast):
        return False
    known = set(defined) | set(relax.analysis.tir_vars_in_type(binding.value.ty))
    return all(v in known for v in relax.analysis.tir_vars_in_type(binding.ty))


def _sizes_defined(params, blocks) -> set:
    """The sizes that ``params`` and the bindings of ``blocks`` define (every binding's
    type names only sizes defined by then; a match_cast may define new ones)."""
    sizes = set()
    for param in params:
        sizes.update(relax.analysis.tir_vars_in_type(param.ty))
    for block in blocks:
        for binding in block.bindings:
            sizes.update(relax.analysis.tir_vars_in_type(binding.var.ty))
    return sizes


def _branch(seq: relax.SeqExpr, sunk: list, extra: list) -> relax.SeqExpr:
    """The branch ``seq`` with the ``sunk`` bindings before its own and, where
    ``extra`` is not empty, a tuple of its value and ``extra`` as its value."""
    blocks = ([relax.BindingBlock(sunk)] if sunk else []) + list(seq.blocks)
    body = relax.Tuple([seq.body] + list(extra)) if extra else seq.body
    return relax.SeqExpr(blocks, body)


class _Outliner:
    """Makes a branch a call of a function of its own.  TVM's memory planner
    (StaticPlanBlockMemory) lets the tensors of an ``else`` branch reuse storage that
    it allocates in the ``then`` branch, which does not exist when the ``else`` branch
    runs (a crash); it plans each function on its own."""

    def __init__(self, builder: relax.BlockBuilder):
        self.builder = builder
        self.count = 0

    def __call__(self, seq: relax.SeqExpr, side: str) -> relax.SeqExpr:
        seq = self.builder.normalize(seq)
        params = list(relax.analysis.free_vars(seq))
        args = list(params)
        func = relax.Function(params, seq, seq.body.ty, is_pure=True)
        sizes = list(relax.analysis.free_symbolic_vars(func))
        if sizes:
            # Sizes the branch names that no parameter's shape defines.
            shape = relax.Var("sizes", relax.ShapeType(sizes))
            func = relax.Function(params + [shape], seq, seq.body.ty, is_pure=True)
            args.append(relax.ShapeExpr(sizes))
        self.count += 1
        gvar = self.builder.add_func(relax.utils.copy_with_new_vars(func),
                                     f"branch_{side}_{self.count}")
        return relax.SeqExpr([], relax.Call(gvar, args))

"""A Relax VM executable whose kernels are compiled on every CPU at once.

``relax.build`` lowers all of a module's PrimFuncs into one LLVM module and generates
its machine code on one thread.  On a model of the size recognizers ship, that one
thread is most of the compile: ddddocr's ``common.onnx`` (21 convolutions, a
bidirectional LSTM 512 and a 8210-way head) spent 18 of its 27-30 s in LLVM, its 11
convolution kernels about 1.2 s each.  TVM releases the GIL while it compiles, so
:func:`build_executable` compiles each of memotvm's own kernels (recurrent loops and the
host kernels of :mod:`.host_gemm`, :mod:`.host_conv` and :mod:`.host_math`) as an LLVM
module of its own, the rest with the executable's ``main``, on a pool of threads, one
per CPU, and generates the machine code in the same threads.  TVM's own operators
compile with ``main`` too, but in groups of their own where a model has many
(:func:`_operator_groups`).

``main`` calls a kernel of its own module by its C symbol; a kernel of another module
it calls by name (an extern function), which the runtime looks up in the modules
imported into ``main``'s once and keeps.  The kernels' code is the same as in one
module, and so are the results (bit for bit).  A shared library cannot hold the parts
(see :func:`linkable`): an export builds the executable again as one module.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import tvm
from tvm import relax, tirx
from tvm.relax import vm_build

from ..threads import available_cpus
from .host_schedule import HOST_KERNEL

# The attributes of the kernels compiled on their own: memotvm's, large loops of
# vector code (a convolution's register-blocked product took 1.2 s in LLVM; TVM's
# legalized elementwise operators 0.03-0.1 s each, less than a module's own cost).
_OWN_MODULE_ATTRS = ("memotvm.recurrent", HOST_KERNEL)


def build_executable(mod: tvm.IRModule, target: tvm.target.Target, relax_pipeline,
                     tir_pipeline: str, jit: bool) -> relax.VMExecutable:
    """``relax.build(mod, target, relax_pipeline, tir_pipeline, exec_mode="compiled")``,
    with the kernels compiled in parallel (see the module's documentation).  ``jit``:
    also generate their machine code now (only where the target runs here)."""
    with target:
        lowered = relax_pipeline(mod)
    separate = {gv.name_hint for gv, func in lowered.functions_items() if _own_module(func)}
    groups = _operator_groups(lowered, separate)
    grouped = {name for group in groups for name in group}
    mod = _calls_by_name(lowered, separate | grouped)
    if mod is None:  # a kernel referred to otherwise than called: one module, as TVM builds
        return _one_module(lowered, target, tir_pipeline)
    attrs = dict(mod.attrs) if mod.attrs else {}
    builder = relax.ExecBuilder()
    rest = vm_build._vmcodegen(builder, tvm.IRModule(
        {gv: func for gv, func in mod.functions_items()
         if gv.name_hint not in separate and gv.name_hint not in grouped},
        attrs=mod.attrs), "compiled")
    kernels = {gv: func for gv, func in mod.functions_items() if gv.name_hint in separate}
    by_name = {gv.name_hint: (gv, func) for gv, func in mod.functions_items()}
    main = {gv: func for gv, func in rest.functions_items() if isinstance(func, tirx.PrimFunc)}
    # (the operator groups first: each takes longer than any one kernel)
    jobs = [main] + [dict(by_name[name] for name in group) for group in groups] \
        + [{gv: func} for gv, func in kernels.items()]
    context = tvm.transform.PassContext.current()

    def compile_job(funcs: dict):
        # (the pass context is the calling thread's: each worker enters its own copy)
        with tvm.transform.PassContext(opt_level=context.opt_level, config=context.config,
                                       disabled_pass=context.disabled_pass):
            lib = tvm.tirx.build(tvm.IRModule(funcs, attrs=mod.attrs), target=target,
                                 pipeline=tir_pipeline)
        if jit:
            lib.get_function(next(iter(funcs)).name_hint)  # generates the module's code
        return lib

    with ThreadPoolExecutor(max(1, min(len(available_cpus()), len(jobs)))) as pool:
        libs = list(pool.map(compile_job, jobs))
    for lib in libs[1:]:
        libs[0].import_module(lib)
    linked = vm_build._ffi_api.VMLink(builder, target, libs[0], list(attrs.get("external_mods", [])),
                                      dict(attrs.get("const_name_to_constant", {})))
    executable = vm_build.VMExecutable(linked)
    # (kept for linkable; its constants are the executable's: dropping it freed no
    # memory, 434 MB either way for ddddocr's recognizer)
    executable.memotvm_lowered = (lowered, target, tir_pipeline)
    return executable


def linkable(executable: relax.VMExecutable) -> relax.VMExecutable:
    """``executable`` as one module, as a library must be exported: in a shared library
    all modules' code is one module, where ``main``'s calls by name, which look in the
    imported modules, would not find the kernels.  An executable built in parts is
    built again, on one thread, from its lowered module (the kernels' code is the same)."""
    lowered = getattr(executable, "memotvm_lowered", None)
    if lowered is None:
        return executable
    mod, target, tir_pipeline = lowered
    with tvm.transform.PassContext(opt_level=3):
        return _one_module(mod, target, tir_pipeline)


def _one_module(lowered: tvm.IRModule, target, tir_pipeline: str) -> relax.VMExecutable:
    """The executable of the lowered module as ``relax.build`` makes it: one LLVM module."""
    return vm_build.build(lowered, target, relax_pipeline=None, tir_pipeline=tir_pipeline,
                          exec_mode="compiled")


# TVM's own operators are compiled with main, unless a model has more of them than
# this: then in groups, on the pool (a text detector with 142 of them, most over a
# symbolic height and width, spent 54 s compiling main on one thread).  Below it, each
# call of one stays a direct call within main's module (the VAD fixture's 41 compiled
# in 5.9-6.3 s with main, 6.0-6.5 s in groups).
_MANY_OPERATORS = 64


def _operator_groups(mod: tvm.IRModule, separate: set) -> list:
    """The names of the PrimFuncs not in ``separate`` (TVM's legalized operators), in
    groups of about equal size, two per CPU, where there are more than
    :data:`_MANY_OPERATORS` of them; else none (they compile with main)."""
    names = sorted(gv.name_hint for gv, func in mod.functions_items()
                   if isinstance(func, tirx.PrimFunc) and gv.name_hint not in separate)
    if len(names) <= _MANY_OPERATORS:
        return []
    count = 2 * len(available_cpus())
    return [group for group in (names[k::count] for k in range(count)) if group]


def _own_module(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None \
        and any(attr in func.attrs for attr in _OWN_MODULE_ATTRS)


def _calls_by_name(mod: tvm.IRModule, names: set) -> tvm.IRModule | None:
    """``mod`` with every Relax call of a PrimFunc in ``names`` made a call of the
    extern function of that name; None where one is referred to otherwise."""
    mutator = _CallsByName(mod, names)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    out = mutator.builder_.get()
    left = []
    for _, func in out.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: left.append(e) if isinstance(
                e, tvm.ir.GlobalVar) and e.name_hint in names else None)
    return None if left else out


@relax.expr_functor.mutator
class _CallsByName(relax.PyExprMutator):
    def __init__(self, mod, names):
        super().__init__(mod)
        self.names = names

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, tvm.ir.GlobalVar) and call.op.name_hint in self.names:
            return relax.Call(relax.ExternFunc(call.op.name_hint), call.args, call.attrs,
                              call.ty_args, call.span)
        return call

"""The ``epur`` backend: recurrent layers on the modelled accelerator, the rest on the host.

Partitioning follows TVM's bring-your-own-codegen flow: every recurrent-loop kernel call
(plain or memoized) is matched by a pattern registered as ``epur.<kernel>``, and
``FuseOpsByPattern(annotate_codegen=True)`` wraps each in a function marked
``Codegen="epur"``.  Our "codegen" (:class:`OffloadToEpur`) lowers each such function to
an :class:`EpurProgram` and replaces its calls with a ``call_dps_packed`` of a function
that runs the program in the simulator; everything else is compiled for the host CPU by
the ``cpu`` backend.  (TVM's ``RunCodegen`` expects C++ runtime modules; a simulator
written in Python is reached through a registered packed function instead.)
"""

from __future__ import annotations

import itertools
import threading
import weakref

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_call_tir
from tvm.relax.transform import FusionPattern

from ...kernels import kernel_weights
from ...passes.kernel_calls import kernel_loop, recurrent_calls
from ...runtime import CompiledModel
from ..base import Backend
from ..cpu import CpuBackend
from .hardware import HardwareConfig
from .program import EpurProgram, LayerCost, lower
from .simulator import simulate

CODEGEN = "epur"
_ids = itertools.count()
_trace = threading.local()  # the layer costs of the call running on this thread


def partition(mod: tvm.IRModule) -> tvm.IRModule:
    """Wrap every recurrent-kernel call in a function annotated ``Codegen="epur"`` (but
    those in ONNX Loop bodies, which run on the host)."""
    kernels = sorted({str(call.args[0].name_hint) for _, call in recurrent_calls(mod, loop_bodies=False)})
    patterns = [FusionPattern(f"{CODEGEN}.{k}", is_call_tir(k)) for k in kernels]
    if not patterns:
        return mod
    return relax.transform.FuseOpsByPattern(patterns, bind_constants=False,
                                            annotate_codegen=True)(mod)


class OffloadToEpur:
    """Lower the ``Codegen="epur"`` functions of a partitioned module to simulator calls.

    ``programs`` lists the lowered layers, in the order of the module's functions.
    """

    def __init__(self, hw: HardwareConfig, memo=None):
        self.hw, self.memo = hw, memo
        self.programs: list[EpurProgram] = []

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        externs = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and func.attrs and func.attrs.get("Codegen") == CODEGEN:
                kernel, positions = _kernel_call(mod, func)
                loop = kernel_loop(kernel)
                plan = self.memo.plan_for(loop) if self.memo is not None else None
                prog = lower(loop, plan, self.hw, weights=kernel_weights(kernel))
                self.programs.append(prog)
                externs[gv] = (_register(prog), positions)
        mutator = _CallReplacer(mod, externs)
        main = mutator.visit_expr(mod["main"])
        mod = tvm.IRModule({"main": main, **{gv: f for gv, f in mod.functions_items()
                                             if gv not in externs and gv.name_hint != "main"}},
                           attrs=mod.attrs)
        return relax.transform.DeadCodeElimination()(mod)


def _kernel_call(mod, func):
    """The kernel a ``Codegen`` function wraps, and for each of the kernel's arguments the
    position of the function parameter it comes from (partitioning merges repeated
    arguments, e.g. one tensor given as both initial_h and initial_c)."""
    local = {b.var: b.value for block in func.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Function)}
    calls = []
    relax.analysis.post_order_visit(func, lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    position = {p: i for i, p in enumerate(func.params)}
    for call in calls:  # follow the parameters into the composite function
        callee = call.op if isinstance(call.op, relax.Function) else local.get(call.op)
        if callee is not None:
            for param, arg in zip(callee.params, call.args):
                if arg in position:
                    position[param] = position[arg]
    kernel_call = next(c for c in calls if isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.call_tir")
    return mod[kernel_call.args[0]], [position[a] for a in kernel_call.args[1].fields]


@relax.expr_functor.mutator
class _CallReplacer(relax.PyExprMutator):
    def __init__(self, mod, externs):
        super().__init__(mod)
        self.externs = externs

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, relax.GlobalVar) and call.op in self.externs:
            layer, positions = self.externs[call.op]
            return relax.call_dps_packed(
                RUN_LAYER, [relax.prim_value(tvm.tirx.IntImm("int64", layer))]
                + [call.args[i] for i in positions], out_ty=list(call.ty.fields))
        return call


# The programs of the live models, by id.  One global function runs them all, so that
# compiling a model adds nothing to TVM's function registry, and a dropped model's
# programs go with it.
_programs: "weakref.WeakValueDictionary[int, EpurProgram]" = weakref.WeakValueDictionary()
RUN_LAYER = "memotvm.epur.run_layer"


@tvm_ffi.register_global_func(RUN_LAYER)
def _run_layer(layer, *tensors):
    """Simulate program ``layer`` on its input tensors, writing its output tensors."""
    prog = _programs[int(layer)]
    # Y, Y_h, [Y_c], stats, status and, memoized, the memo table
    n_out = (5 if prog.loop.op == "LSTM" else 4) + (prog.plan is not None)
    ins, outs = tensors[:-n_out], tensors[-n_out:]
    result = simulate(prog, [t.numpy() for t in ins])
    for out, value in zip(outs, result.outputs):
        out.copyfrom(np.ascontiguousarray(np.asarray(value).astype(out.dtype)))
    getattr(_trace, "layers", []).append(result.cost)


def _register(prog: EpurProgram) -> int:
    layer = next(_ids)
    _programs[layer] = prog
    return layer


class AcceleratorModel(CompiledModel):
    """A compiled model whose recurrent layers run on the simulated accelerator.

    After each call ``last_cost`` holds a :class:`CostReport` of the calling thread's
    last call.
    """

    programs: list
    hardware: HardwareConfig

    def _invoke(self, arguments: list, arrays: list, work: int | None = None) -> list:
        # (Every call, a session's too, reports its cost.)
        _trace.layers = []
        try:
            raw = super()._invoke(arguments, arrays, work)
        finally:
            layers, _trace.layers = _trace.layers, []
        self._local.last_cost = CostReport(layers, self.hardware)
        return raw

    @property
    def last_cost(self):
        """The CostReport of the calling thread's last call (None before its first)."""
        return getattr(self._local, "last_cost", None)


class CostReport:
    """Cycles, time, energy and bytes of one call, per recurrent layer and in total."""

    def __init__(self, layers: list[LayerCost], hw: HardwareConfig):
        self.layers, self.hw = layers, hw

    @property
    def cycles(self) -> float:
        return sum(layer.cycles for layer in self.layers)

    @property
    def seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers)

    @property
    def energy_pj(self) -> dict:
        total: dict = {}
        for layer in self.layers:
            for k, v in layer.energy_pj.items():
                total[k] = total.get(k, 0.0) + v
        return total

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "seconds": self.seconds, "energy_pj": self.energy_pj,
                "energy_total_pj": self.energy_total_pj,
                "dram_bytes": sum(l.dram_bytes for l in self.layers),
                "onchip_bytes": sum(l.onchip_bytes for l in self.layers),
                "layers": [l.to_dict() for l in self.layers]}

    def format(self, baseline: "CostReport | None" = None) -> str:
        mhz = self.hw["clock.frequency"]
        lines = [f"accelerator cost ({mhz:g} MHz, hardware: {self.hw.origin}):"]
        for layer in self.layers:
            lines.append(f"  {layer.name}: {layer.cycles:,.0f} cycles, {layer.seconds * 1e6:,.1f} us, "
                         f"{layer.energy_total_pj / 1e6:,.3f} uJ, DRAM {layer.dram_bytes / 1024:,.1f} KiB")
        lines.append(f"  total: {self.cycles:,.0f} cycles, {self.seconds * 1e6:,.1f} us, "
                     f"{self.energy_total_pj / 1e6:,.3f} uJ")
        parts = ", ".join(f"{k} {v / max(self.energy_total_pj, 1e-30):.1%}" for k, v in self.energy_pj.items())
        lines.append(f"  energy by component: {parts}")
        if baseline is not None:
            lines.append(f"  vs unmodified: speedup {baseline.cycles / self.cycles:.3f}x, energy saved "
                         f"{1 - self.energy_total_pj / baseline.energy_total_pj:.1%}")
        return "\n".join(lines)


class EpurBackend(Backend):
    name = "epur"
    aliases = ("accel",)
    description = ("E-PUR-like RNN accelerator (compute units, BNN unit, memo buffer): "
                   "functional simulator and cost model; other layers on the host CPU")

    def build(self, imported, mod, memo=None, hardware=None):
        """``hardware``: a TOML file, a dict of ``{"section.name": value}`` or a
        :class:`HardwareConfig` (default: the documented ``epur.toml``)."""
        hw = HardwareConfig.load(hardware)
        offload = OffloadToEpur(hw, memo)
        mod = offload(partition(mod))
        model = CpuBackend().build(imported, mod, memo=memo, model_class=AcceleratorModel)
        model.programs, model.hardware, model.target = offload.programs, hw, self.name
        return model

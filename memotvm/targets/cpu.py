"""The CPU backend: LLVM for the host processor, run by Relax's virtual machine."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax

from ..errors import ConfigError
from ..log import captured_tvm_output
from ..runtime import CompiledModel, flat_results
from . import parallel_build
from .base import Backend


@functools.cache
def host_target() -> tvm.target.Target:
    """LLVM for this machine's CPU (its vector features come with ``mcpu``)."""
    from tvm.target import codegen

    cpu = str(codegen.llvm_get_system_cpu())
    spec = {"kind": "llvm"}
    triple = str(tvm.target.Target(spec).attrs.get("mtriple", ""))
    if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, triple):
        spec["mcpu"] = cpu
    return tvm.target.Target(spec)


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with the recurrent kernels built for the target's vector
    width and their weights in the layouts they read them in
    (:mod:`.recurrent_layout`), convolutions by constant weights as matrix products
    (:mod:`.host_conv`) with the elementwise work after them in their stores
    (:mod:`.host_conv_epilogue`), matrix products by constant weights packed
    (:mod:`.host_gemm`), exp-based operators in vectorizable form (:mod:`.host_math`)
    and the other host operators scheduled (:mod:`.host_schedule`).  Bindings outside
    dataflow blocks (TVM's importer emits none around an ``If``) are put into them
    first, so that FuseOps fuses them too (VAD-shaped stream with its ``If`` on the
    sample rate: 155 -> 130 us a call)."""
    from tvm.relax.backend.cpu_generic import pipeline as generic

    from ..passes.branches import SinkIntoBranches
    from ..passes.dataflow_blocks import BindingsIntoDataflow
    from .host_conv import ConvolutionsAsMatmuls
    from .host_conv_epilogue import FuseConvEpilogues
    from .host_gemm import PackConstantMatmuls
    from .host_math import VectorizableMath
    from .host_schedule import ScheduleHostOps
    from .recurrent_layout import PackRecurrentWeights, RetargetRecurrentKernels

    @tvm.transform.module_pass(opt_level=0, name="MemotvmCpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                [SinkIntoBranches(), BindingsIntoDataflow(), RetargetRecurrentKernels(), PackRecurrentWeights(),
                 ConvolutionsAsMatmuls(), FuseConvEpilogues(), PackConstantMatmuls()]
                + generic.library_dispatch_passes(target) + [VectorizableMath()]
                + generic.legalize_passes(target)
                + [ScheduleHostOps()] + generic.dataflow_lower_passes(target)
                + generic.finalize_passes(target))(mod)

    return _pipeline


# The recurrent kernels are plain loops whose buffers have their exact sizes; the
# compaction pass only re-derives that, and on their many small vector accumulators it
# took over half of the compile time.  They bind their shared values themselves, and
# LLVM eliminates what is left: TIR's common-subexpression pass took another 20-30 %
# (memoized GRU 70, bidirectional: 2.7 -> 1.9 s) with no measured change in speed.
# The kernels have no loop-invariant conditions to hoist nor no-ops to remove, and no
# GPU constructs (permuted layouts, virtual threads, split patterns): the five passes
# below leave their machine code as it was (the same assembly, up to the order of two
# stores) and took over half of the TIR lowering (0.9 of 1.65 s on a memoized
# bidirectional LSTM 19 -> 23, whose whole compile went 2.8 -> 2.3 s).
_KERNEL_SKIPPED_PASSES = [
    "s_tir.CompactBufferAllocation", "tirx.CommonSubexprElim",
    "s_tir.HoistIfThenElse", "tirx.RemoveNoOp", "s_tir.InjectPermutedLayout",
    "s_tir.InjectVirtualThread", "s_tir.RenormalizeSplitPattern",
]


def _tir_pipeline():
    """TVM's S-TIR pipeline, with :data:`_KERNEL_SKIPPED_PASSES` left out for the
    recurrent-loop kernels (functions with the ``memotvm.recurrent`` attribute).
    Registered as the TIR pipeline "memotvm"."""
    default, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir")

    def is_kernel(func):
        return isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None \
            and "memotvm.recurrent" in func.attrs

    @tvm.transform.module_pass(opt_level=0, name="MemotvmTirPipeline")
    def _pipeline(mod, _ctx):
        kernels = {gv: f for gv, f in mod.functions_items() if is_kernel(f)}
        if not kernels:
            return default(mod)
        others = {gv: f for gv, f in mod.functions_items() if gv not in kernels}
        outer = tvm.transform.PassContext.current()
        with tvm.transform.PassContext(opt_level=outer.opt_level, config=outer.config,
                                       disabled_pass=list(outer.disabled_pass) + _KERNEL_SKIPPED_PASSES):
            lowered = default(tvm.IRModule(kernels, attrs=mod.attrs))
        if others:
            lowered.update(default(tvm.IRModule(others, attrs=mod.attrs)))
        return lowered

    return _pipeline, finalize_host, finalize_device


tvm.tirx.register_tir_pipeline("memotvm", _tir_pipeline)


def _target_dict(spec: str) -> dict:
    """``"llvm -mcpu=haswell -mattr=+avx2,+fma"`` as the dict this TVM takes (it reads
    the command-line form no longer)."""
    kind, *options = spec.split()
    out = {"kind": kind}
    for option in options:
        key, sep, value = option.lstrip("-").partition("=")
        if not sep:
            raise ConfigError(f"target {spec!r}: option {option!r} is not -key=value")
        out[key] = value.split(",") if key == "mattr" else value
    return out


def llvm_target(spec) -> tvm.target.Target:
    """An LLVM target from a target string (``"llvm -mcpu=haswell"``), a dict or a
    ``tvm.target.Target``, checked."""
    try:
        if isinstance(spec, tvm.target.Target):
            target = spec
        else:
            target = tvm.target.Target(_target_dict(spec) if isinstance(spec, str) else spec)
    except ConfigError:
        raise
    except Exception as err:  # TVM raises its own types
        raise ConfigError(f"target {str(spec)!r} is not a valid TVM target: "
                          f"{str(err).strip().splitlines()[-1]}") from None
    if target.kind.name != "llvm":
        raise ConfigError(f"target {str(spec)!r}: memotvm's CPU backend builds for 'llvm' "
                          f"targets, not '{target.kind.name}'")
    return target


def runs_here(target: tvm.target.Target) -> bool:
    """Whether code for ``target`` runs on this machine (its triple is the host's; the
    instruction set of its -mcpu is the user's promise)."""
    import platform

    triple = str(target.attrs.get("mtriple", ""))
    if not triple:
        return True
    aliases = {"amd64": "x86_64", "arm64": "aarch64"}
    host = aliases.get(platform.machine().lower(), platform.machine().lower())
    return aliases.get(triple.split("-")[0], triple.split("-")[0]) == host


class CpuBackend(Backend):
    name = "cpu"
    description = "LLVM code for the host CPU, run by the Relax VM"

    def __init__(self, llvm_target=None):
        # None: the host CPU (host_target); else a TVM target string or Target.
        self.llvm_target = llvm_target

    def build(self, imported, mod, memo=None, model_class=CompiledModel, **options):
        if options:
            raise ConfigError(f"target 'cpu' takes no option(s) {', '.join(sorted(options))}")
        target = host_target() if self.llvm_target is None else llvm_target(self.llvm_target)
        with captured_tvm_output("compile"), tvm.transform.PassContext(opt_level=3):
            executable = build_executable(mod, target)
        device = tvm.cpu()

        def make_session():
            return vm_caller(relax.VirtualMachine(executable, device))

        def elsewhere():
            raise ConfigError(f"this model is compiled for {target}, not this machine: "
                              "export it (model.export) and run it there")

        model = model_class(imported, make_session if runs_here(target) else elsewhere,
                            target=self.name, memo=memo)
        model.executable = executable
        model.target_spec = target
        if runs_here(target):
            with captured_tvm_output("machine code"):
                model.prepare()
        return model


def build_executable(mod: tvm.IRModule, target: tvm.target.Target):
    """The VM executable of ``mod`` for ``target``, its ``main`` compiled to machine code
    (``exec_mode="compiled"``) rather than to bytecode the VM interprets: the shape
    arithmetic, allocations and calls between the operators cost about half as much
    per call (VAD-shaped stream, one chunk: 39 -> 31 us with a symbolic batch,
    22-29 -> 14-16 us with static shapes), which is most of a small model's call.
    The kernels are compiled on every CPU at once, their machine code generated now
    where it runs here (:mod:`.parallel_build`)."""
    return parallel_build.build_executable(mod, target, cpu_pipeline(target), "memotvm",
                                           jit=runs_here(target))


def vm_caller(vm) -> "VmCaller":
    """The call of ``vm``'s ``main`` that :class:`CompiledModel` makes (see :class:`VmCaller`)."""
    return VmCaller(vm["main"])


class VmCaller:
    """Calls a VM's ``main``: input arrays -> the flat list of its results, as the VM's
    tensors (:func:`memotvm.runtime.to_numpy` reads them).  One caller serves one
    thread (a model makes one per thread).

    A small input is copied into a buffer of the caller's own, made once per input and
    shape, rather than lent to TVM: a stream's calls pass new arrays of the same shapes
    every time, mostly not at the 64-byte alignment TVM borrows at, and copying a
    chunk (0.5 us) is cheaper than checking and lending it or making an aligned copy
    (1.5-5 us).  A model that returns an input as it is (or reshaped) would return the
    buffer, which the next call overwrites: the first call with new buffers looks for
    that, and such a model's inputs are lent instead (``staging`` turns False)."""

    __slots__ = ("main", "staged", "staging", "_verify")

    def __init__(self, main):
        self.main = main
        self.staged: dict = {}  # argument position -> (numpy view, TVM tensor) of its buffer
        self.staging = True
        self._verify = False

    def argument(self, position: int, array):
        """What ``main`` is passed at ``position`` for ``array``."""
        if not isinstance(array, np.ndarray):
            return array  # already the VM's tensor (a memo table, a carried state)
        if not self.staging or array.nbytes > _STAGED_BYTES or array.dtype.kind not in "fiu":
            return _host_tensor(array)
        buffer = self.staged.get(position)
        if buffer is None or buffer[0].shape != array.shape or buffer[0].dtype != array.dtype:
            tensor = tvm.runtime.empty(array.shape, array.dtype)
            buffer = self.staged[position] = (np.from_dlpack(tensor), tensor)
            self._verify = True
        np.copyto(buffer[0], array)
        return buffer[1]

    def buffer(self, position: int):
        """The buffer (numpy view, tensor) that an input at ``position`` is copied into,
        or None where it is lent (large, not numeric, or staging turned off)."""
        return self.staged.get(position) if self.staging else None

    def __call__(self, arrays: list) -> list:
        items = flat_results(self.main(*[self.argument(i, a) for i, a in enumerate(arrays)]))
        if self._verify:
            self._verify = False
            addresses = {buffer[1].data_ptr() for buffer in self.staged.values()}
            if any(isinstance(item, tvm.runtime.Tensor) and item.data_ptr() in addresses
                   for item in items):
                self.staging = False
                self.staged.clear()  # (the results that hold the buffers keep them alive)
        return items


# Inputs up to this size are copied into the caller's buffers (see VmCaller); larger
# ones are lent to TVM where aligned (no copy).
_STAGED_BYTES = 1 << 16

# TVM borrows host memory (DLPack) only at this alignment.
_ALIGNMENT = 64


def _host_tensor(array) -> tvm.runtime.Tensor:
    """A TVM tensor over ``array`` (C-contiguous; the kernels only read their inputs),
    or over an aligned copy where it is not 64-byte aligned or not writeable.
    Borrowing instead of ``tvm.runtime.tensor``'s allocation and copy: 15 -> 5 us per
    small input, and no copy of a large aligned one.  A TVM tensor (a memo table a
    previous call returned) is passed as it is."""
    if isinstance(array, tvm.runtime.Tensor):
        return array
    if array.dtype.kind not in "fiu":
        return tvm.runtime.tensor(array, tvm.cpu())
    # Read-only arrays (a view of a model's initializer, a broadcast) cannot be
    # exported: DLPack's version here cannot say read-only.
    if array.ctypes.data % _ALIGNMENT or not array.flags.writeable:
        raw = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % _ALIGNMENT
        aligned = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(aligned, array)
        array = aligned
    return tvm.runtime.from_dlpack(array)

"""The user-facing entry points: compile (and, with memoization, validate)."""

from __future__ import annotations

import ctypes
import functools
import warnings

from .frontend import BUILD_LOCK, from_onnx, hand_written_cell

from .errors import ConfigError, MemoTVMError, NothingToMemoizeWarning, UnsupportedModelError
from .passes import MemoConfig, MemoizeRecurrentLoops
from .passes._relax_util import fold_constants
from .passes.memoize import check_supported
from .passes.precision import ReduceWeightPrecision, RoundProductWeights, check_precision
from .precision import PrecisionConfig
from .targets import get_backend
from .threads import check_threads, use_threads


def compile(model, target: str = "cpu", memo=None, shapes: dict | None = None,  # noqa: A001
            tunable: bool = False, fixed_inputs: dict | None = None, threads: int | None = None,
            adaptive_threads: bool = True, precision=None, **options):
    """Compile an ONNX model (path, bytes or ModelProto) for ``target``.

    ``memo`` turns on neuron-level fuzzy memoization: a :class:`MemoConfig`, a number
    (one BNN threshold for every layer), a dict or the path of a JSON configuration.
    Returns a :class:`memotvm.runtime.CompiledModel` whose ``run(inputs)`` returns the
    ONNX outputs in graph order and whose ``last_stats`` reports the last call's reuse.

    ``shapes`` fixes input shapes (name -> list of ints).  ``fixed_inputs`` binds inputs
    to values (name -> number or array, for example ``{"sr": 16000}``): they are no longer
    inputs of the compiled model, and what follows from them is computed at compile time
    (an ``If`` on them keeps only the branch they select).

    ``precision`` stores the weights at reduced precision: "fp32" (the default), "bf16"
    or "int8" everywhere, a dict ``{"default": ..., "per_node": {node: p or {"forward":
    p, "reverse": p}}, "products": ...}`` (``products``: the matrix products and
    convolutions by constant weights around the recurrent layers), a
    :class:`~memotvm.precision.PrecisionConfig`, or the path of a JSON file with a
    ``precision`` section (what ``memotvm calibrate`` writes).  Where ``memo`` is such a
    file and ``precision`` is not given, the file's precision applies too.  See
    :mod:`memotvm.precision` for what each precision computes.

    ``threads`` is how many threads each call uses (default: ``TVM_NUM_THREADS`` if set,
    else every CPU the calling process may run on; see :mod:`memotvm.threads`).  With
    ``adaptive_threads`` (the default) each calling thread times its calls and runs on
    one thread while that is faster, as on a machine where another process keeps a core
    busy (:class:`memotvm.threads.AdaptiveThreads`).
    """
    with BUILD_LOCK:  # (one compile at a time, see memotvm.frontend.BUILD_LOCK)
        threads = check_threads(threads)
        backend = get_backend(target)
        # Before TVM may make this thread's pool (a compile can run code): sized for the CPUs.
        use_threads(threads)
        memo, precision = with_file_precision(memo, precision)
        reduced = PrecisionConfig.coerce(precision) if precision is not None else None
        config = MemoConfig.coerce(memo) if memo is not None else None
        imported = from_onnx(model, shapes, fixed_inputs)
        mod = imported.mod
        if (config is not None or reduced is not None) and imported.loop_body_nodes:
            _warn_loop_body_nodes(imported.loop_body_nodes, config is not None)
        if config is not None and not imported.loops and not imported.loop_body_nodes:
            _warn_nothing_to_memoize(imported.operators)
        if reduced is not None:
            reduced.check_nodes(imported.loops)
        if reduced is not None and reduced.reduced:
            # Before memoization: its predictors are derived from the rounded weights.
            mod = fold_constants(mod)
            check_precision(mod, reduced)
            mod = ReduceWeightPrecision(reduced)(mod)
            mod = RoundProductWeights(reduced.products_precision)(mod)
        if config is not None:
            # Checked here: errors raised inside a TVM pass lose their type.  Folding first
            # turns weights computed from initializers into constants.
            config.check_nodes(imported.loops)
            mod = fold_constants(mod)
            check_supported(mod, config)
            mod = MemoizeRecurrentLoops(config, tunable=tunable)(mod)
        elif tunable:
            raise ConfigError("tunable=True needs a memo configuration")
        model = _built(backend, imported, mod, config, options)
        model.tunable = tunable
        model.precision = reduced if reduced is not None else PrecisionConfig()
        model.threads = threads
        model.adaptive_threads = bool(adaptive_threads)
    _release_freed_memory()
    return model


def _built(backend, imported, mod, config, options):
    """``backend.build`` of the imported model, a failure inside TVM's lowering named as
    such (an ``UnsupportedModelError``, its cause chained) rather than TVM's own error
    from deep in a pass."""
    try:
        return backend.build(imported, mod, memo=config, **options)
    except MemoTVMError:
        raise
    except Exception as err:  # noqa: BLE001 - TVM's passes raise anything
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else type(err).__name__
        way_out = "memotvm does not handle something in it yet: please report it with the model"
        if "in-place mutation" in str(err) and imported.operators.get("Loop"):
            # TVM's CanonicalizeBindings (in FuseTIR) retypes the bindings after a run-time
            # size check that relates a Loop's state to an outer value, not those before.
            way_out = ("its Loop carries values whose sizes TVM's passes cannot relate to the inputs' "
                       "(a recurrent cell written out in a Loop, as tf2onnx exports Keras 3's GRU and "
                       "SimpleRNN); compiling with the inputs' shapes fixed (shapes=, CLI --shape "
                       "NAME=D1,D2,...) avoids it")
        raise UnsupportedModelError(
            f"TVM could not compile this model after importing it ({type(err).__name__}: {detail}); "
            f"{way_out}") from err


def with_file_precision(memo, precision):
    """(memo, precision) where ``memo`` may be the path of a calibrated configuration
    with a precision section: its precision applies unless one is given, and its
    ``"memo": null`` (memoization does not pay) means no memo configuration."""
    if isinstance(memo, str) and (in_file := PrecisionConfig.in_file(memo)) is not None:
        return MemoConfig.load(memo, optional=True), in_file if precision is None else precision
    return memo, precision


def _warn_nothing_to_memoize(operators: dict) -> None:
    """Memoization applies to LSTM, GRU and RNN nodes; a model without one (a cell
    unrolled into matrix products) compiles unmodified, which the user is told rather
    than shown a reuse of 0."""
    found = ", ".join(f"{op} x{n}" for op, n in sorted(operators.items(), key=lambda kv: -kv[1])[:8])
    hint = ""
    cell = hand_written_cell(operators)
    if cell and "Loop" in operators:
        hint = (f"; {', '.join(cell)} in a Loop look like a recurrent cell stepped by the loop, "
                "compiled as written (where the cell's inputs are known before the loop, export "
                "the layer as torch.nn.LSTM/GRU/RNN to memoize it)")
    elif cell:
        hint = (f"; {', '.join(cell)} look like a recurrent cell unrolled by the exporter "
                "(export the layer as torch.nn.LSTM/GRU/RNN to memoize it)")
    warnings.warn(f"memoization requested, but the model has no LSTM, GRU or RNN node, so "
                  f"nothing is memoized (it has {found or 'no nodes'}){hint}",
                  NothingToMemoizeWarning, stacklevel=3)


def _warn_loop_body_nodes(names: list, memo: bool) -> None:
    """A recurrent node that a Loop's body runs is called once per iteration, each call
    a sequence of its own whose memo table starts empty (docs/spec.md): memoization
    could reuse nothing there, so such nodes compile unmodified, at fp32."""
    listed = ", ".join(f"'{name}'" for name in names)
    what = "memoization" if memo else "reduced precision"
    category = NothingToMemoizeWarning if memo else UserWarning
    warnings.warn(f"{what} requested, but node(s) {listed} run in the body of a Loop, once per "
                  "iteration: each iteration's call is a sequence of its own whose memo table "
                  "starts empty, so they are compiled unmodified, at fp32 (where the layer's "
                  "inputs are known before the loop, export it over the whole sequence, one node "
                  "with the sequence as its first axis, to memoize it)", category, stacklevel=3)


def _release_freed_memory() -> None:
    """Give the memory compilation freed back to the system.

    A compile allocates and frees tens of MB (TVM's IR, LLVM's modules); glibc keeps
    freed blocks in its heap, so a process that compiles many models (calibration
    sweeps, services, tests) grew by 30-60 KiB per compile without leaking anything
    (measured: no growth when the heap is trimmed).  malloc_trim returns them; it takes
    about a millisecond.  Elsewhere than glibc, nothing is done."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


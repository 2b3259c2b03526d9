"""`CompiledModel`: a built model that is called with ONNX input names."""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tvm

from .errors import ConfigError, InputError
from .passes.native_checks import input_error_message
from .stats import KernelCounts, ReuseStats
from .threads import AdaptiveThreads, default_threads, use_threads


class CallResult(NamedTuple):
    """What one call of the compiled function gives: the outputs as numpy arrays and as
    the VM's tensors (a session feeds its state outputs back as they are), the
    kernels' counts, and the memo tables after the call (the VM's tensors)."""

    outputs: list
    raw_outputs: list
    counts: KernelCounts
    tables: list


@dataclass(frozen=True)
class NodeArg:
    """An input or output of a compiled model, as onnxruntime's ``NodeArg`` describes it:
    its ONNX name, its element type (a numpy dtype name such as ``"float32"``) and its
    shape, each dimension an int, the name of a symbolic dimension (``"batch"``) or None
    where it is unknown (the shape is None where even the rank is)."""

    name: str
    type: str
    shape: list | None


class CompiledModel:
    """A compiled ONNX model.

    ``run`` may be called any number of times and from several threads: each thread gets
    its own virtual machine over the shared executable, and every call starts from empty
    memo tables (they live inside the kernels' frames).  ``last_stats`` (and on the
    accelerator ``last_cost``) are the calling thread's own; ``run_with_stats`` returns a
    call's statistics with its outputs.
    """

    def __init__(self, imported, make_session, target: str, memo=None):
        self.input_names = list(imported.input_names)
        self.input_types = dict(imported.input_types)
        self.output_names = list(imported.output_names)
        self.output_types = dict(getattr(imported, "output_types", {}))
        self.loops = list(imported.loops)
        self.index_ranges = dict(imported.index_ranges)
        self.recurrent_state = dict(getattr(imported, "recurrent_state", None) or {"inputs": [], "outputs": []})
        self.implied_sizes = dict(getattr(imported, "implied_sizes", None) or {})
        self.target = target
        self.memo = memo
        # Compiled with tunable thresholds (``compile(..., tunable=True)``): each call
        # passes its thresholds to the kernels, and ``run(memo=...)`` may change them.
        self.tunable = False
        # Threads each call uses (compile(..., threads=N)); None: memotvm.threads'
        # default, decided at each call.
        self.threads = None
        # Fall back to one thread while that is faster (a busy machine; see _threads_chooser).
        self.adaptive_threads = True
        self._make_session = make_session
        self._local = threading.local()

    def get_inputs(self) -> list:
        """The model's inputs (not its initializers), in the order ``run`` checks them."""
        return [NodeArg(n, self.input_types[n][1], _dims(self.input_types[n][0]))
                for n in self.input_names]

    def get_outputs(self) -> list:
        """The model's outputs, in the order ``run`` returns them."""
        return [NodeArg(n, *_typed(self.output_types.get(n))) for n in self.output_names]

    def prepare(self) -> None:
        """Create the calling thread's session now.  TVM generates the kernels' machine
        code when the first virtual machine loads them (a third of a compile); a
        backend calls this so that compiling includes it and the first call is not
        slower than the others."""
        self._session()

    def _session(self):
        """The calling thread's callable (arrays -> results).  Its caller sets the
        thread's TVM pool first (``use_threads(self.threads)``); the callable does not
        refer to the model, so that a dropped model is freed at once, not by a later
        garbage collection (its executable is native memory Python does not count)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._make_session()
        return session

    def _threads_chooser(self) -> AdaptiveThreads:
        """The calling thread's choice between the model's threads and one (see
        :class:`memotvm.threads.AdaptiveThreads`; ``adaptive_threads = False`` keeps
        the model's count)."""
        chooser = getattr(self._local, "threads_chooser", None)
        threads = self.threads or default_threads()
        if chooser is None or (chooser.threads, chooser.adaptive) != (threads, self.adaptive_threads and threads > 1):
            chooser = self._local.threads_chooser = AdaptiveThreads(threads, self.adaptive_threads)
        return chooser

    def run(self, inputs: dict, check_finite: bool = True, memo=None) -> list:
        """Run on ``inputs`` (ONNX input name -> array); return the ONNX outputs in order.

        ``memo`` (a model compiled with ``tunable=True`` only) sets this call's thresholds:
        a MemoConfig, number or dict with the compiled predictor.
        """
        repeat = getattr(self._local, "repeat", None)
        if repeat is not None and memo is None:
            tables = repeat.empty_tables(self) if repeat.memoized else None
            raw = repeat.call(self, inputs, {}, tables, check_finite)
            if raw is not None:
                self._local.last_counts = KernelCounts(repeat.counts(raw), repeat.layout)
                return repeat.outputs(raw)
        given = inputs
        arrays = self.check_inputs(inputs, check_finite)
        result = self._call(arrays, memo)
        self._local.last_counts = result.counts
        self._local.repeat = RepeatedCall.after(self, given, arrays) if memo is None else None
        return result.outputs

    def _call(self, arrays: list, memo=None, tables: list | None = None) -> "CallResult":
        """One call on checked input arrays (or the VM's tensors a previous call
        returned), from the memo tables ``tables`` (None: empty ones)."""
        config = self._call_config(memo)
        raw = self._invoke(self.vm_arguments(arrays, config, tables), arrays)
        n, k = len(self.output_names), len(self.loops)
        # (the memo tables stay the VM's tensors: a session passes them back as they are)
        return CallResult(outputs=[to_numpy(r) for r in raw[:n]], raw_outputs=raw[:n],
                          counts=KernelCounts(raw[n:n + 2 * k:2], self._counts_layout(config)),
                          tables=raw[n + 2 * k:])

    def _invoke(self, arguments: list, arrays: list, work: int | None = None) -> list:
        """The compiled function's flat results for ``arguments`` (``vm_arguments`` of
        the input ``arrays``), on the threads the calling thread's chooser picks
        (``work``: the arrays' elements, where the caller knows them); a check
        compiled into the model that fails is raised as the input's InputError."""
        chooser = self._threads_chooser()
        threads = chooser.pick()
        use_threads(threads)
        try:
            start = time.perf_counter()
            raw = self._session()(arguments)
            chooser.record(threads, time.perf_counter() - start,
                           self._work(arrays) if work is None else work)
        except Exception as err:  # a check compiled into the model failed: the input's fault
            message = input_error_message(err)
            if message is None:
                raise
            raise InputError(self._with_sizes(message, [to_numpy(a) for a in arrays])) from None
        self._check_lengths(raw)
        return raw

    def _check_lengths(self, raw: list) -> None:
        """Raise the InputError of a kernel that found a sequence_lens out of range."""
        n = len(self.output_names)
        for i in self._checked_lengths:
            status = np.from_dlpack(raw[n + 2 * i + 1])
            bad = np.argwhere(status != 0)
            if bad.size:
                loop = self.loops[i]
                raise InputError(
                    f"{loop.op} node '{loop.name}': sequence_lens of batch element "
                    f"{int(bad[0][1])} is outside [0, seq_length]"
                )

    @functools.cached_property
    def _checked_lengths(self) -> list:
        """The loops whose kernels report bad sequence_lens (those given them)."""
        return [i for i, loop in enumerate(self.loops) if loop.has("sequence_lens")]

    @staticmethod
    def _work(arrays) -> int:
        """Input elements of a call (what AdaptiveThreads rates its time by)."""
        return sum(a.size if isinstance(a, np.ndarray) else math.prod(a.shape) for a in arrays)

    @functools.cached_property
    def _compiled_counts_layout(self) -> list:
        return ReuseStats.counts_layout(self.loops, self.memo)

    def _counts_layout(self, config) -> list:
        """ReuseStats.counts_layout of ``config``: made once for the compiled
        configuration (every plain call's), again for per-call thresholds."""
        if config is self.memo:
            return self._compiled_counts_layout
        return ReuseStats.counts_layout(self.loops, config)

    def _with_sizes(self, message: str, arrays: list) -> str:
        """A compiled check's message (which names symbolic dimensions, such as
        ``(seq, batch, 7)``) with the sizes this call's inputs give them."""
        sizes = {}
        for name, value in zip(self.input_names, arrays):
            dims = self.input_types[name][0] or []
            if len(dims) == np.ndim(value):
                for dim, size in zip(dims, np.shape(value)):
                    if isinstance(dim, str):
                        sizes.setdefault(dim, size)

        def sized(match):
            names = [p.strip() for p in match.group(2).split(",") if p.strip()]
            if not any(p in sizes for p in names):
                return match.group(0)  # (no symbol: words in parentheses, "(Squeeze)")
            parts = [str(sizes.get(p, p)) for p in names]
            trailing = "," if match.group(1) == "(" and len(parts) == 1 else ""
            return match.group(1) + ", ".join(parts) + trailing + match.group(3)

        # Shapes and bounds: (a, b, 4), (n,), [0, T]
        shape = r"([(\[])([\w?]+(?:, [\w?]+)*),?([)\]])"
        return re.sub(shape, sized, message) if sizes else message

    def vm_arguments(self, arrays: list, config=None, tables: list | None = None) -> list:
        """The compiled function's arguments for checked input arrays: then, compiled
        with tunable=True, the thresholds of ``config`` (default: the compiled ones),
        then, memoized, the memo tables (None: empty ones)."""
        config = config or self.memo
        if self.tunable:
            arrays = arrays + [np.array(config.plan_for(loop).thresholds, np.float64)
                               for loop in self.loops]
        if self.memo is not None:
            arrays = arrays + (self.empty_tables() if tables is None else list(tables))
        return arrays

    def empty_tables(self) -> list:
        """One empty memo table per memoized kernel (memotvm.kernels.memo_table): what a
        call that continues nothing passes."""
        from .kernels.memo_table import TABLE_DTYPE, table_size

        if getattr(self, "_empty_tables", None) is not None:
            return list(self._empty_tables)  # (the kernels only read them)
        self._empty_tables = [np.zeros((loop.num_directions, 1, table_size(loop, self.memo.plan_for(loop).predictor)),
                         TABLE_DTYPE) for loop in self.loops]
        return list(self._empty_tables)

    def export(self, path, cc: str | None = None) -> str:
        """Write the compiled model to ``path`` (a shared library the TVM runtime loads)
        and ``path + ".json"`` (how to call it); returns the JSON's path.  ``cc``: the
        (cross) compiler that links it.  See :mod:`memotvm.artifact` and docs/deploy.md."""
        from .artifact import export

        return export(self, path, cc)

    def session(self, state=None, memo=None):
        """A streaming session over this model: consecutive ``run`` calls are one
        sequence, the memo tables and the recurrent state carried from call to call
        (see :class:`memotvm.session.Session`)."""
        from .session import Session

        return Session(self, state, memo)

    def run_with_stats(self, inputs: dict, check_finite: bool = True, memo=None) -> tuple:
        """``run``, returning ``(outputs, stats)`` together: the statistics of exactly
        this call, whatever other threads do meanwhile."""
        outputs = self.run(inputs, check_finite, memo)
        return outputs, self.last_stats

    @property
    def last_stats(self) -> ReuseStats | None:
        """The reuse statistics of the calling thread's last call (None before its first):
        per thread, so that a thread never reads another's call."""
        counts = getattr(self._local, "last_counts", None)
        return None if counts is None else counts.stats()

    def _call_config(self, memo):
        if memo is None:
            return self.memo
        from .passes import MemoConfig

        if not self.tunable:
            raise ConfigError("this model was compiled with fixed thresholds; compile it with "
                              "tunable=True to choose thresholds per call")
        config = MemoConfig.coerce(memo)
        if config.predictor != self.memo.predictor:
            raise ConfigError(f"this model was compiled for predictor '{self.memo.predictor}', "
                              f"not '{config.predictor}'")
        config.check_nodes(self.loops)
        return config

    def __call__(self, inputs: dict) -> list:
        return self.run(inputs)

    @property
    def thread_last_stats(self) -> ReuseStats | None:
        """The statistics of this thread's last call (the same as ``last_stats``)."""
        return self.last_stats

    def check_inputs(self, inputs: dict, check_finite: bool = True, carried: dict | None = None) -> list:
        """Validate names, dtypes, shapes and values; return arrays in parameter order.

        ``carried``: inputs a session feeds from its previous call's outputs (the VM's
        tensors, checked when they were made), used where ``inputs`` has none."""
        if not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict of name -> array, got {type(inputs).__name__}")
        carried = carried or {}
        missing = [n for n in self.input_names if n not in inputs and n not in carried]
        if missing:
            raise InputError(f"missing input(s): {', '.join(missing)} (expected {self.input_names})")
        extra = [n for n in inputs if n not in self.input_types]
        if extra:
            raise InputError(f"unknown input(s): {', '.join(extra)} (expected {self.input_names})")
        arrays = []
        symbols: dict = {}
        for name in self.input_names:
            if name in inputs:
                arrays.append(self._checked(name, inputs[name], symbols, check_finite))
            else:
                arrays.append(carried[name])
        return arrays

    def _checked(self, name: str, value, symbols: dict, check_finite: bool) -> np.ndarray:
        """Input ``name``'s ``value`` checked (``symbols``: the sizes of symbolic
        dimensions that the inputs before it gave), as a C-contiguous array."""
        dims, want, static = self._input_specs[name]
        value = np.asarray(value)
        if value.dtype != want:
            # Only lossless conversions within floats or within integers.
            kinds = {value.dtype.kind, want.kind}
            same_family = kinds <= {"f"} or kinds <= {"i", "u"}
            if not (same_family and np.can_cast(value.dtype, want)):
                raise InputError(f"input '{name}': dtype {value.dtype}, expected {want}")
            value = value.astype(want)
        if static is None or value.shape != static:
            self._check_shape(name, value.shape, dims, symbols)
        if value.size == 0:
            # TVM's generated code divides by dynamic sizes; an empty input would
            # trap instead of raising.
            raise InputError(f"input '{name}' is empty (shape {value.shape})")
        if check_finite and want.kind == "f" and not np.isfinite(value).all():
            raise InputError(f"input '{name}' contains NaN or infinite values")
        size = self.index_ranges.get(name)
        if size is not None and (value.min() < -size or value.max() >= size):
            raise InputError(
                f"input '{name}' indexes a table of {size} rows; values must lie in "
                f"[{-size}, {size - 1}], got [{value.min()}, {value.max()}]"
            )
        # (np.ascontiguousarray would make a 0-d input 1-d.)
        return value if value.flags.c_contiguous else np.require(value, requirements="C")

    @functools.cached_property
    def _input_specs(self) -> dict:
        """Per input: its declared dimensions, its numpy dtype and, where every
        dimension is a number, its shape (checked with one comparison)."""
        specs = {}
        for name, (dims, dtype) in self.input_types.items():
            static = tuple(dims) if dims is not None and all(isinstance(d, int) for d in dims) else None
            specs[name] = (dims, np.dtype(dtype), static)
        return specs

    def _check_shape(self, name: str, shape: tuple, dims, symbols: dict) -> None:
        if dims is None:
            return
        if len(shape) != len(dims):
            raise InputError(
                f"input '{name}': {len(shape)}-d array of shape {shape}, "
                f"expected {len(dims)}-d {self._shape_text(name)}"
            )
        for want, got in zip(dims, shape):
            if isinstance(want, int):
                if want != got:
                    raise InputError(
                        f"input '{name}': shape {shape}, expected {self._shape_text(name)}"
                    )
            elif isinstance(want, str) and symbols.setdefault(want, (got, name))[0] != got:
                other = symbols[want][1]
                raise InputError(
                    f"input '{name}': dimension '{want}' is {got} here but "
                    f"{symbols[want][0]} in input '{other}'"
                )

    def _shape_text(self, name):
        dims, dtype = self.input_types[name]
        return "[" + ", ".join("?" if d is None else str(d) for d in dims) + f"] {dtype}"


class RepeatedCall:
    """Calls made like the last checked one, with only what may differ between two
    such calls checked.

    After a call whose inputs were checked in full, a call from the same thread with
    the same input names, each an array of the same dtype and shape (a view is copied
    to C order, as the checked call copies it), can differ from it only in the values:
    they are checked (finite, within an index table) and the compiled function is
    called on them (with a session's carried state and memo tables).  Any other call
    -- another shape, a state passed explicitly, something not an array -- is checked
    in full (and makes the next RepeatedCall), as is a repeat whose compiled function
    raises (the checked call then names the input's fault).

    A small model's call is mostly Python on a slow core (the denoiser-shaped
    stream's compiled function took 11-16 us of a 45-60 us session call on a 2-core
    EPYC), so :meth:`call` is one function that does only this: the inputs are
    copied into the buffers the checked call made, the thresholds and a plain call's
    empty memo tables are the VM's tensors made once, finiteness is one dot product
    (the exact test only where it is not finite), and the VM's function is called
    and its results read directly.  Denoiser-shaped stream, one frame per session
    call, per call, separate processes alternating with the code before: static
    shapes 41-43 -> 29-35 us, symbolic 56-58 -> 42-48 us."""

    __slots__ = ("owner", "names", "given", "carried_at", "carried_from", "tail",
                 "memoized", "n_outputs", "n_loops", "work", "layout", "direct", "checked_lengths",
                 "empty", "main", "lend", "arguments", "buffers", "flat")

    @classmethod
    def after(cls, model, given: dict, arrays: list, memo=None, owner=None, state_pairs=None):
        """The repeat of ``model``'s call just made with the caller's ``given`` inputs
        and the checked ``arrays`` (``memo``: its per-call thresholds; ``owner``: the
        calling thread; ``state_pairs``: a session's, whose other inputs it carries),
        or None where that call's inputs were not all arrays already (a list, another
        dtype: such calls are checked in full)."""
        position = {name: i for i, name in enumerate(model.input_names)}

        def as_checked(value, checked):
            # The checked array is the given one, or its C-contiguous copy (a view).
            return value is checked or (type(value) is np.ndarray and value.dtype == checked.dtype
                                        and value.shape == checked.shape)

        if not all(as_checked(given[name], arrays[position[name]]) for name in given):
            return None
        self = cls()
        self.owner = threading.get_ident() if owner is None else owner
        self.names = set(given)
        self.given = [(name, position[name], arrays[position[name]].dtype, arrays[position[name]].shape,
                       model.index_ranges.get(name)) for name in given]
        self.carried_at = [(position[name], name) for name in model.input_names if name not in given]
        outputs = {name: i for i, name in enumerate(model.output_names)}
        self.carried_from = [(inp, outputs[out]) for inp, out in (state_pairs or {}).items()]
        config = model._call_config(memo)
        self.layout = model._counts_layout(config)
        # (The kernels only read thresholds and empty tables: one tensor serves every call.)
        self.tail = [tvm.runtime.tensor(t) for t in model.vm_arguments([], config, [])] \
            if model.tunable else []
        self.memoized = model.memo is not None
        self.n_outputs, self.n_loops = len(model.output_names), len(model.loops)
        self.work = model._work(arrays)
        # A model whose calls go through its own _invoke (the accelerator's cost
        # report) is called through it.
        self.direct = type(model)._invoke is CompiledModel._invoke \
            and hasattr(model._session(), "buffer")
        self.checked_lengths = bool(model._checked_lengths)
        self.empty = self.main = None
        return self

    def empty_tables(self, model) -> list:
        """A plain call's memo tables: empty ones, as the VM's tensors (made once)."""
        if self.empty is None:
            self.empty = [tvm.runtime.tensor(t) for t in model.empty_tables()]
        return self.empty

    def call(self, model, inputs, carried: dict, tables: list | None, check_finite: bool):
        """``model``'s flat results for ``inputs`` (the ``carried`` values where the
        caller passes none) from the memo ``tables`` (None where the model is not
        memoized), or None where the call is not a repeat."""
        if type(inputs) is not dict or inputs.keys() != self.names:
            return None
        arrays = [None] * (len(self.given) + len(self.carried_at))
        for name, position, dtype, shape, index_range in self.given:
            value = inputs[name]
            if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
                return None
            if not value.flags.c_contiguous:
                # A view (a stream's chunk sliced from a recording) is copied, as the
                # checked call copies it, rather than sent through the checked call
                # (gru_denoiser, one frame a session call, one process: 133 us a call
                # with views that way, 40 with contiguous chunks).
                value = np.ascontiguousarray(value)
            # (A sum of squares is finite only where every value is; it may overflow
            # where they are, which the exact test settles.)
            if check_finite and dtype.kind == "f" and not math.isfinite(np.vdot(value, value)) \
                    and not np.isfinite(value).all():
                return None  # (the full check says which)
            if index_range is not None and (value.min() < -index_range or value.max() >= index_range):
                return None
            arrays[position] = value
        for position, name in self.carried_at:
            value = carried.get(name)
            if value is None:
                return None
            arrays[position] = value
        if not self.direct:
            tail = self.tail + tables if self.memoized else self.tail
            return model._invoke(arrays + tail, arrays, self.work)
        if self.main is None:
            self._prepare(model)
        # The arguments: the inputs copied into the caller's buffers (see
        # memotvm.targets.cpu.VmCaller) or lent, the carried values as they are.
        arguments = list(self.arguments)
        for position, buffer in self.buffers:
            if buffer is None:
                arguments[position] = self.lend(position, arrays[position])
            else:
                np.copyto(buffer, arrays[position])
        for position, _ in self.carried_at:
            arguments[position] = arrays[position]
        if self.memoized:
            arguments += tables
        chooser = model._threads_chooser()
        threads = chooser.pick()
        use_threads(threads)
        start = time.perf_counter()
        try:
            result = self.main(*arguments)
        except Exception:  # (a check compiled into the model: the checked call names it)
            return None
        chooser.record(threads, time.perf_counter() - start, self.work)
        if self.flat:
            raw = [_array_item(result, i) for i in range(_array_size(result))]
        else:
            raw = flat_results(result)
            self.flat = type(result) is not tvm.runtime.Tensor and len(raw) == _array_size(result)
        if self.checked_lengths:
            model._check_lengths(raw)
        return raw

    def _prepare(self, model) -> None:
        """Take the calling thread's VM function and the buffers its caller copies
        these inputs into (they exist: the checked call made them)."""
        caller = model._session()
        self.main, self.lend = caller.main, caller.argument
        self.arguments = [None] * (len(self.given) + len(self.carried_at)) + self.tail
        self.buffers = []
        for _, position, dtype, shape, _ in self.given:
            buffer = caller.buffer(position)
            if buffer is not None and buffer[0].dtype == dtype and buffer[0].shape == shape:
                self.arguments[position] = buffer[1]
                self.buffers.append((position, buffer[0]))
            else:
                self.buffers.append((position, None))
        self.flat = False  # (main's results are a flat tuple: found on the first call)

    def outputs(self, raw) -> list:
        """The model's outputs in ``raw`` (:meth:`call`'s), as numpy arrays."""
        try:
            return [np.from_dlpack(r).copy() for r in raw[:self.n_outputs]]
        except (TypeError, AttributeError):  # (an output computed from shapes alone)
            return [to_numpy(r) for r in raw[:self.n_outputs]]

    def counts(self, raw) -> list:
        """The kernels' counts in ``raw``."""
        return raw[self.n_outputs:self.n_outputs + 2 * self.n_loops:2]

    def tables(self, raw) -> list:
        """The memo tables after the call, in ``raw``."""
        return raw[self.n_outputs + 2 * self.n_loops:]


def _dims(dims):
    return None if dims is None else list(dims)


def _typed(entry):
    """(dtype, dims) of an output type entry; unknown where the importer had none."""
    if entry is None:
        return "unknown", None
    dims, dtype = entry
    return dtype, _dims(dims)


def flat_results(result) -> list:
    """The VM's (possibly nested) tuple of results, flat (a single tensor: in a list)."""
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    out = []
    # (TVM's getter, called directly: its Python indexing costs three times as much,
    # 1 us an item, iterating five times.)
    for i in range(_array_size(result)):
        item = _array_item(result, i)
        if isinstance(item, (tvm.runtime.Tensor, tvm.runtime.ShapeTuple)):
            out.append(item)
        else:
            out.extend(flat_results(item))
    return out


_array_size = tvm.get_global_func("ffi.ArraySize")
_array_item = tvm.get_global_func("ffi.ArrayGetItem")


def to_numpy(item) -> np.ndarray:
    """One of the VM's results as a numpy array of its own (a copy through DLPack:
    ``Tensor.numpy()`` takes 6 us; a view would let the caller write into a constant
    or an input that the model returns as it is).  A numpy array is returned as it is."""
    if type(item) is np.ndarray:
        return item
    try:
        return np.from_dlpack(item).copy()
    except (TypeError, AttributeError):  # a shape tuple: an output computed from shapes alone
        return np.array(list(item), dtype=np.int64)

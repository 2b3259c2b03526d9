"""Streaming sessions: one stream's consecutive calls as one sequence.

Deployed recurrent models run one chunk at a time and pass their recurrent state out and
back in.  A :class:`Session` does that for the caller and, for a memoized model, also
keeps every kernel's memo table from one call to the next (docs/spec.md, "Streaming
sessions"), so that a neuron may reuse what it computed in the previous chunk: chunk by
chunk gives the same decisions, counts and outputs as one call over the whole sequence
wherever the graph computes the two alike.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from .errors import ConfigError, InputError
from .runtime import RepeatedCall
from .stats import ReuseStats


class Session:
    """Consecutive calls of one stream over a compiled model.

    ``state`` maps each state input to the output that feeds it at the next call
    (``{"state": "stateN"}``, ``{"h": "hn", "c": "cn"}``); when omitted, the pairs are
    found from the names and types of the inputs and outputs (see
    :func:`find_state_pairs`); ``memo``: the thresholds of its calls, for a model
    compiled with ``tunable=True``.  The caller passes the other inputs; a state input it
    passes overrides the carried value for that call.  On the first call (and after
    :meth:`reset`) a state input the caller does not pass starts at zeros.

    ``stats`` holds the counts accumulated since the last reset.  Many sessions over one
    model may run at once, one per stream and thread; one session must not be shared
    between threads (a call from another thread than its first raises).
    """

    def __init__(self, model, state=None, memo=None):
        self.model = model
        self.memo = memo  # per-call thresholds of a model compiled with tunable=True
        self.state_pairs = find_state_pairs(model, state)
        self._position = {name: i for i, name in enumerate(model.output_names)}
        self._owner = None
        self.reset()

    @property
    def within_call_only(self) -> list:
        """(node, direction) pairs whose memo tables do not carry between calls: the
        reverse directions (a chunk's reverse pass does not continue the previous
        chunk's)."""
        from .kernels.memo_table import resumable

        if self.model.memo is None:
            return []
        return [(loop.name, loop.direction_name(d)) for loop in self.model.loops
                for d in range(loop.num_directions) if not resumable(loop, d)]

    def reset(self) -> None:
        """Start the stream again: empty memo tables, zero state, no counts."""
        self._tables = None
        self._carried: dict = {}
        self._counts = None  # KernelCounts of the calls so far
        self._repeat = None  # the last call, to be repeated (RepeatedCall)
        self.calls = 0

    @property
    def stats(self) -> ReuseStats:
        """The counts of the calls since the last reset."""
        return ReuseStats() if self._counts is None else self._counts.stats()

    def run(self, inputs: dict, check_finite: bool = True) -> list:
        """Run the next chunk; returns the model's outputs (as ``CompiledModel.run``)."""
        repeat = self._repeat
        if repeat is not None and repeat.owner == threading.get_ident():
            raw = repeat.call(self.model, inputs, self._carried, self._tables, check_finite)
            if raw is not None:
                self._tables = repeat.tables(raw)
                self._carried = {inp: raw[i] for inp, i in repeat.carried_from}
                self._counts.append(repeat.counts(raw))
                self.calls += 1
                return repeat.outputs(raw)
        return self._run_checked(inputs, check_finite)

    def _run_checked(self, inputs: dict, check_finite: bool) -> list:
        """A call with every input checked (:meth:`CompiledModel.check_inputs`)."""
        self._check_thread()
        if not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict of name -> array, got {type(inputs).__name__}")
        given = inputs
        if self.calls == 0:
            missing = [name for name in self.state_pairs if name not in inputs]
            if missing:
                inputs = {**inputs, **{name: self._zero_state(name, inputs) for name in missing}}
        # The carried state goes back as the VM's tensors it came out as: checked when
        # it was made, neither copied out nor in.
        arrays = self.model.check_inputs(inputs, check_finite, carried=self._carried)
        result = self.model._call(arrays, self.memo, tables=self._tables)
        self._check_batch(result.tables)
        self._tables = result.tables
        self._carried = {inp: result.raw_outputs[self._position[out]]
                         for inp, out in self.state_pairs.items()}
        if self._counts is None:
            self._counts = result.counts
        else:
            self._counts.add(result.counts)
        self.calls += 1
        self._repeat = RepeatedCall.after(self.model, given, arrays, self.memo, self._owner,
                                         self.state_pairs)
        return result.outputs

    __call__ = run

    def _check_thread(self):
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise InputError("this session is used by another thread; a session is one "
                             "stream: give each thread its own (model.session())")

    def _check_batch(self, tables):
        if self._tables is None or self.model.memo is None:
            return
        for loop, old, new in zip(self.model.loops, self._tables, tables):
            if old.shape[1] != new.shape[1]:
                raise InputError(
                    f"node '{loop.name}': the batch size changed within the session "
                    f"({old.shape[1]} -> {new.shape[1]}); its memo tables do not carry "
                    "over: call reset() first")

    def _zero_state(self, name, feeds):
        """Zeros of state input ``name``'s declared shape, its symbolic dimensions taken
        from the inputs given with the same symbol, else from what the recurrent node it
        feeds requires of them (the model's ``implied_sizes``)."""
        dims, dtype = self.model.input_types[name]
        if dims is None:
            raise InputError(f"state input '{name}' has no declared shape: pass its first value")
        sizes = {}
        for other, value in feeds.items():
            other_dims = self.model.input_types.get(other, (None,))[0]
            if other_dims is not None and np.ndim(value) == len(other_dims):
                for d, size in zip(other_dims, np.shape(value)):
                    if isinstance(d, str):
                        sizes.setdefault(d, size)
        implied = getattr(self.model, "implied_sizes", None) or {}
        shape = []
        for d in dims:
            d = implied.get(d, d) if isinstance(d, str) and d not in sizes else d
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in sizes:
                shape.append(sizes[d])
            else:
                raise InputError(f"state input '{name}': cannot tell the size of its dimension "
                                 f"{d!r} from the other inputs; pass its first value")
        return np.zeros(shape, dtype)


_SUFFIXES = re.compile(r"(_?(in|out|next|new|prev|init|initial|n|0|1))+$", re.IGNORECASE)
_PREFIXES = re.compile(r"^((input|output|in|out)_|(input|output)(?=\d))(?=.)", re.IGNORECASE)


def _stem(name: str) -> str:
    """A state's name without the affixes exporters put on it (h0/hn, state/stateN,
    c_in/c_out, in_h/out_h; input_2/output_2, as tf2onnx numbers Keras's inputs and
    outputs: TEN VAD)."""
    unprefixed = _PREFIXES.sub("", name)
    if unprefixed.isdigit():  # input_1/output_1: the number is the name
        return unprefixed
    stem = _SUFFIXES.sub("", unprefixed)
    return (stem or name).lower()


def _compatible(model, inp, out) -> bool:
    in_dims, in_type = model.input_types[inp]
    out_type = model.output_types.get(out)
    if out_type is None:
        return False
    out_dims, out_dtype = out_type
    if out_dtype != in_type or in_dims is None or out_dims is None or len(in_dims) != len(out_dims):
        return False
    return all(a == b or a is None or b is None or isinstance(a, str) or isinstance(b, str)
               for a, b in zip(in_dims, out_dims))


def find_state_pairs(model, state=None) -> dict:
    """Input name -> output name for the recurrent state the session carries.

    Given ``state``, each pair is checked (names, element types, ranks).  Otherwise an
    input is paired with the output of the same type and rank whose name has the same
    stem (``h0``/``hn``, ``state``/``stateN``, ``c_in``/``c_out``); an input with more
    than one such output is an error listing them.  Where no names pair, the inputs that
    reach a recurrent node's initial state are paired with the outputs its final state
    reaches (tf2onnx's DTLN: ``input_3`` -> ``tf_op_layer_stack_2``), where each has
    exactly one of the other's type.  Finding no pair at all is an error listing the
    candidates."""
    inputs, outputs = model.input_names, model.output_names
    if state is not None:
        if not isinstance(state, dict):
            raise ConfigError(f"state must map state inputs to outputs, got {type(state).__name__}")
        for inp, out in state.items():
            if inp not in inputs:
                raise ConfigError(f"state names input '{inp}', which the model does not have "
                                  f"(inputs: {', '.join(inputs)})")
            if out not in outputs:
                raise ConfigError(f"state names output '{out}', which the model does not have "
                                  f"(outputs: {', '.join(outputs)})")
            if not _compatible(model, inp, out):
                raise ConfigError(f"state '{inp}' -> '{out}': their types differ "
                                  f"({model.input_types[inp]} vs {model.output_types.get(out)})")
        return dict(state)
    candidates = {inp: [out for out in outputs if _compatible(model, inp, out)] for inp in inputs}
    recurrent = getattr(model, "recurrent_state", None) or {}
    pairs = {}
    for inp, outs in candidates.items():
        if _stem(inp).isdigit() and inp not in recurrent.get("inputs", ()):
            continue  # input_2/output_2 say nothing by themselves: only a recurrent state's
        named = [out for out in outs if _stem(out) == _stem(inp)]
        if len(named) > 1:
            raise ConfigError(f"state input '{inp}' could be fed by {', '.join(named)}; "
                              "pass state={input: output} to say which")
        if named:
            pairs[inp] = named[0]
    fed = [out for out in pairs.values()]
    twice = sorted({out for out in fed if fed.count(out) > 1})
    if twice:
        raise ConfigError(f"output(s) {', '.join(twice)} would feed several state inputs; "
                          "pass state={input: output} to say which")
    if not pairs:
        pairs = _pairs_by_structure(recurrent, candidates)
    if not pairs:
        listed = "; ".join(f"{inp}: {', '.join(outs)}" for inp, outs in candidates.items() if outs)
        raise ConfigError("found no state input/output pair by name or from the recurrent "
                          "nodes; pass state={input: output} (or state={} for none)"
                          + (f". Inputs and the outputs of their type: {listed}" if listed else ""))
    return pairs


def _pairs_by_structure(recurrent: dict, candidates: dict) -> dict:
    """Input -> output where the input reaches a recurrent node's initial state, the
    output comes from a recurrent node's final state (``recurrent``, the model's
    ``recurrent_state``), and the output is the only one of the input's type among such
    outputs, fed to no other input; {} unless every such input pairs so."""
    inputs, outputs = recurrent.get("inputs", []), set(recurrent.get("outputs", []))
    partners = {inp: [out for out in candidates.get(inp, []) if out in outputs] for inp in inputs}
    if not partners or any(len(outs) != 1 for outs in partners.values()):
        return {}
    fed = [outs[0] for outs in partners.values()]
    if len(set(fed)) != len(fed):
        return {}
    return {inp: outs[0] for inp, outs in partners.items()}


"""Running a recorded stream through a model the way it runs deployed: one chunk per call,
in a session (:class:`memotvm.session.Session`).  Used by ``validate``, ``bench`` and the
CLI's ``--stream``.

A recorded stream is the inputs of every call at once.  :func:`split_stream` cuts it
into calls: an input with a time axis (a symbolic dimension named like ``seq``,
``time``, ``steps``, ``frames`` or ``T``, or the axis given for it) is cut into chunks of
``chunk`` steps along it; an input with one more axis than the model declares holds one
call's value per entry of its first axis (a detector's fixed-size audio chunks); any
other input is given unchanged to every call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, InputError

_TIME_NAMES = re.compile(r"(seq|time|step|frame|len|^t$|^s$)", re.IGNORECASE)


@dataclass
class StreamSpec:
    """How to stream: ``chunk`` steps per call, ``state`` pairs (None: found by name),
    ``time_axes`` (input name -> axis) where the declared shapes do not say."""

    chunk: int = 1
    state: dict | None = None
    time_axes: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, (int, np.integer)) or self.chunk < 1:
            raise ConfigError(f"chunk must be a positive number of steps, got {self.chunk!r}")


def _time_axis(model, name, value, spec):
    dims = model.input_types[name][0]
    if name in spec.time_axes:
        axis = spec.time_axes[name]
        if not -value.ndim <= axis < value.ndim:
            raise ConfigError(f"time axis {axis} of input '{name}' is outside its {value.ndim} axes")
        return axis % value.ndim
    if dims is None:
        return None
    for axis, d in enumerate(dims):
        if isinstance(d, str) and _TIME_NAMES.search(d):
            return axis
    return None


def split_all(model, inputs, spec: StreamSpec | None):
    """split_stream of one set of inputs or of each sequence (None without a stream)."""
    if spec is None:
        return None
    if isinstance(inputs, list):
        return [split_stream(model, one, spec) for one in inputs]
    return split_stream(model, inputs, spec)


def split_stream(model, inputs: dict, spec: StreamSpec) -> list:
    """The calls (dicts of input arrays) of the recorded stream ``inputs``; state inputs
    are left to the session unless given (then only to the first call)."""
    from .session import find_state_pairs

    state = find_state_pairs(model, spec.state)
    pieces, counts, fixed = {}, {}, {}
    for name, value in inputs.items():
        value = np.asarray(value)
        if name in state:
            fixed[name] = value
            continue
        dims = model.input_types.get(name, (None,))[0]
        axis = _time_axis(model, name, value, spec)
        if dims is not None and value.ndim == len(dims) + 1:
            if spec.chunk != 1:
                raise ConfigError(f"input '{name}' holds one call per entry of its first axis; "
                                  "its calls cannot be merged into chunks (use chunk 1)")
            pieces[name] = [value[i] for i in range(value.shape[0])]
        elif axis is not None:
            steps = value.shape[axis]
            pieces[name] = [np.take(value, range(t, min(t + spec.chunk, steps)), axis=axis)
                            for t in range(0, steps, spec.chunk)]
        else:
            fixed[name] = value
            continue
        counts[name] = len(pieces[name])
    if not pieces:
        raise InputError("no input to stream: none has a time axis (a symbolic dimension named "
                         "like seq, time, steps or frames) or a leading axis of calls; give "
                         "the time axis (--time-axis NAME=AXIS)")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise InputError(f"the streamed inputs make different numbers of calls ({listed})")
    calls = []
    for i in range(next(iter(counts.values()))):
        call = {name: parts[i] for name, parts in pieces.items()}
        call.update({n: v for n, v in fixed.items() if n not in state or i == 0})
        calls.append(call)
    return calls


def run_stream(model, calls: list, spec: StreamSpec, memo=None):
    """(outputs of each call, the session's accumulated ReuseStats); ``memo``: the
    thresholds of a model compiled with tunable=True."""
    session = model.session(state=spec.state, memo=memo)
    outputs = [session.run(call) for call in calls]
    return outputs, session.stats


def run_inputs(model, inputs, stream: StreamSpec | None = None, memo=None, calls=None):
    """(outputs, ReuseStats) of ``inputs``: one call, or with ``stream`` the recorded
    stream's calls in a session (outputs joined); ``calls`` may pass its split.  A list
    of input dicts is a data set of sequences (:mod:`memotvm.sequences`): each is run
    from fresh state and their outputs joined, their counts summed."""
    if isinstance(inputs, list):
        from .sequences import join_outputs
        from .stats import ReuseStats

        outputs, total = [], ReuseStats()
        for i, one in enumerate(inputs):
            out, stats = run_inputs(model, one, stream, memo, calls[i] if calls else None)
            outputs.append(out)
            total.add(stats)
        return join_outputs(outputs), total
    if stream is None:
        outputs = model.run(inputs, memo=memo)
        return outputs, model.last_stats
    calls = split_stream(model, inputs, stream) if calls is None else calls
    per_call, stats = run_stream(model, calls, stream, memo)
    return joined(per_call), stats


def joined(per_call: list) -> list:
    """Each output over the calls: concatenated along the first axis where the calls'
    shapes allow, else stacked."""
    out = []
    for values in zip(*per_call):
        arrays = [np.asarray(v) for v in values]
        try:
            out.append(np.concatenate(arrays) if arrays[0].ndim else np.stack(arrays))
        except ValueError:
            out.append(np.concatenate([a.ravel() for a in arrays]))
    return out

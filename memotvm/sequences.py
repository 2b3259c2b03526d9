"""Data sets of many sequences: each run from fresh state, lengths free.

A real calibration or validation set is many recordings or sentences of different
lengths, not one batch.  Given as

* a directory of ``.npz`` files, one per sequence, each holding that sequence's inputs
  (and, for labels, one array or one named ``labels``); files in name order; or
* one ``.npz`` whose arrays are named ``<sequence>/<input>`` (``utt1/X``, ``utt2/X``;
  labels ``utt1/labels`` or ``utt1``), sequences in name order;

each sequence is its own call (or, streamed, its own session), and the outputs of all
of them are joined -- each output reshaped to ``[-1, last axis]`` and concatenated --
for the metric, so that sums are combined over every frame, not averaged per sequence.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .errors import InputError


def _natural(key):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def group_sequences(arrays: dict):
    """``{"a/X": .., "b/X": ..}`` as a list of per-sequence dicts; a flat dict unchanged."""
    if not arrays or not all("/" in k for k in arrays):
        if any("/" in k for k in arrays):
            raise InputError("an inputs file mixes per-sequence arrays (name/input) with others")
        return arrays
    groups: dict = {}
    for key, value in arrays.items():
        seq, _, name = key.partition("/")
        groups.setdefault(seq, {})[name] = value
    return [groups[k] for k in sorted(groups, key=_natural)]


def load_sequences(path: str, load_npz, what: str = "inputs"):
    """A dict (one set of inputs) or a list of dicts (sequences) from ``path``."""
    if os.path.isdir(path):
        files = sorted((f for f in os.listdir(path) if f.endswith(".npz")), key=_natural)
        if not files:
            raise InputError(f"{what} folder {path}: no .npz files")
        return [load_npz(os.path.join(path, f), what) for f in files]
    return group_sequences(load_npz(path, what))


def labels_of(arrays):
    """A labels file's array: one array, or the one named 'labels'."""
    if "labels" in arrays:
        return arrays["labels"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise InputError("a labels file holds one array or one named 'labels'")


def join_outputs(per_sequence: list) -> list:
    """Each output over the sequences: reshaped to [-1, last axis], concatenated."""
    joined = []
    for values in zip(*per_sequence):
        arrays = [np.asarray(v) for v in values]
        joined.append(np.concatenate([a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
                                      for a in arrays]))
    return joined


def join_labels(labels: list):
    """The sequences' labels, as join_outputs lays out the outputs: class ids flat,
    real-valued targets [-1, last axis]."""
    arrays = [np.asarray(a) for a in labels]
    if all(a.dtype.kind in "iub" for a in arrays):
        return np.concatenate([a.reshape(-1) for a in arrays])
    return np.concatenate([a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1) for a in arrays])

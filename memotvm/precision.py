"""Reduced precision of the recurrent weights: what ``compile(..., precision=...)`` means.

A recurrent node's W and R are stored at a *precision*, per node and direction:

* ``fp32`` -- as the model gives them;
* ``bf16`` -- each weight rounded to bfloat16 (round to nearest, ties to even): 8 bits of
  mantissa, the range of float32;
* ``bf16-act`` -- the weights as at ``bf16``, and the activations they multiply (the
  layer's input x and the previous state h) rounded to bfloat16 the same way before
  each product, which is what the bfloat16 dot-product instructions (AVX512-BF16's
  ``vdpbf16ps``) take; the recurrent products then sum in the order of
  :mod:`memotvm.kernels.bf16_dot`;
* ``int8`` -- each row r (one neuron's weights of W, and separately of R) quantized
  symmetrically: ``s_r = max_k |w_rk| / 127`` (1 for a row of zeros) and
  ``q_rk = round_half_even(w_rk / s_r)``, an integer in [-127, 127]; the weight stands
  for ``q_rk * s_r``.

Apart from ``bf16-act``'s rounded operands, only the weights change.  Biases, peepholes, activations and the cell state stay float32
and every dot product accumulates in float32, so a layer at reduced precision computes
exactly what the unmodified layer computes with the rounded weights
(:func:`rounded_weights`), up to float32 rounding -- which is how the tests check it.
The memoization predictors are derived from the rounded weights: they predict the
neuron that is computed.

A kernel holds one storage type for all its directions: where a node's directions ask
for different precisions, its weights are stored as float32 holding each direction's
rounded values (the loss is as configured, the speed that of float32).

The matrix products and convolutions around the recurrent layers (ONNX MatMul, Gemm and
Conv, wherever their weight is a constant once constants are folded) take the
``products`` precision (by default the configuration's ``default``, with ``bf16`` for
``bf16-act``): their weights are rounded the same way, a "row" being one output's
weights (a column of MatMul's B, an output channel of Conv's W), and the products
accumulate in float32.  They do not round their inputs: ``bf16-act`` applies to the
recurrent layers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from .errors import ConfigError
from .per_node import checked_per_node, per_direction

# Precision name -> how a kernel stores its weights: a dtype, or "bfloat16_pairs" (W
# bfloat16, R as bf16_pairs int32 words, and the activations rounded: bf16-act).
STORAGE = {"fp32": "float32", "bf16": "bfloat16", "bf16-act": "bfloat16_pairs", "int8": "int8"}
# The widest first: a node whose directions differ is stored at the first that any asks.
PRECISIONS = tuple(STORAGE)
# The precisions of the products around the recurrent layers (their inputs unrounded).
PRODUCT_PRECISIONS = ("fp32", "bf16", "int8")
# Bytes one weight takes in memory at each precision (int8's per-row scale aside).
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "bf16-act": 2, "int8": 1}
INT8_MAX = 127


@dataclass(frozen=True)
class StoredWeights:
    """Weights [directions, rows, n] as a kernel stores them: ``values`` in the storage
    dtype and, for int8, ``scales`` [directions, rows] (float32) that multiply each
    row's dot product."""

    values: np.ndarray
    scales: np.ndarray | None = None

    def dequantized(self) -> np.ndarray:
        """The float32 weights the stored ones stand for."""
        values = self.values.astype(np.float32)
        return values if self.scales is None else values * self.scales[..., None]


def store_weights(weights: np.ndarray, precision: str) -> StoredWeights:
    """``weights`` (float32, rows along the second-to-last axis) at ``precision``."""
    w = np.asarray(weights, np.float32)
    if precision == "fp32":
        return StoredWeights(w)
    if precision in ("bf16", "bf16-act"):
        return StoredWeights(w.astype(ml_dtypes.bfloat16))
    if precision == "int8":
        amax = np.abs(w).max(axis=-1).astype(np.float64)
        scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
        q = np.rint(w.astype(np.float64) / scales[..., None].astype(np.float64))
        return StoredWeights(np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scales)
    raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def rounded_activations(values: np.ndarray) -> np.ndarray:
    """The float32 values of ``values`` rounded to bfloat16 (nearest, ties to even): the
    operands a ``bf16-act`` layer multiplies."""
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def bf16_pairs(weights: np.ndarray, words: int | None = None) -> np.ndarray:
    """bfloat16 ``weights`` [..., n] as int32 words [..., ceil(n / 2)], or ``words`` words
    (zeros after the last value): element 2i in the low half of word i, 2i + 1 in its
    high half."""
    w = np.asarray(weights, ml_dtypes.bfloat16)
    words = -(-w.shape[-1] // 2) if words is None else words
    padded = np.zeros(w.shape[:-1] + (2 * words,), w.dtype)
    padded[..., :w.shape[-1]] = w
    return padded.view(np.uint16).view(np.int32)


def unpack_bf16_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """The float32 values of :func:`bf16_pairs`'s words, the first ``n`` of each row."""
    halves = np.ascontiguousarray(pairs, np.int32).view(np.uint16)
    return (halves.astype(np.uint32) << 16).view(np.float32)[..., :n]


def rounded_weights(weights: np.ndarray, precision: str) -> np.ndarray:
    """The float32 values ``weights`` stand for at ``precision``."""
    return store_weights(weights, precision).dequantized()


def rounded_directions(weights: np.ndarray, precisions) -> np.ndarray:
    """A recurrent node's W or R [directions, rows, n], direction d rounded at
    ``precisions[d]`` (float32)."""
    return np.stack([rounded_weights(weights[d], p) for d, p in enumerate(precisions)])


def rounded_rows(weights: np.ndarray, precision: str, axis: int = 0) -> np.ndarray:
    """``weights`` rounded at ``precision`` with ``axis`` indexing the rows (one output's
    weights: the rest of the array, flattened)."""
    w = np.moveaxis(np.asarray(weights, np.float32), axis, 0)
    flat = rounded_weights(w.reshape(w.shape[0], -1), precision)
    return np.ascontiguousarray(np.moveaxis(flat.reshape(w.shape), 0, axis))


def node_storage(precisions) -> str:
    """The precision a node with these per-direction precisions is stored at: theirs
    where they agree, else fp32 (each direction's values rounded to its own)."""
    unique = set(precisions)
    return unique.pop() if len(unique) == 1 else "fp32"


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read a precision configuration: {err.strerror}") from err
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ConfigError(f"{path}: not a JSON configuration") from None


def _check_precision(value, where) -> str:
    if not isinstance(value, str) or value not in STORAGE:
        raise ConfigError(f"precision{' ' + where if where else ''} must be one of "
                          f"{', '.join(PRECISIONS)}, got {value!r}"[:200])
    return value


@dataclass
class PrecisionConfig:
    """The precision of every recurrent node's weights.

    ``default`` applies to every node and direction; ``per_node`` overrides it by ONNX
    node name, with one precision or ``{"forward": p, "reverse": p}``.
    """

    default: str = "fp32"
    per_node: dict = field(default_factory=dict)
    # The matrix products and convolutions by constant weights (None: ``default``).
    products: str | None = None

    def __post_init__(self):
        self.default = _check_precision(self.default, "(default)")
        if self.products is not None:
            self.products = _check_precision(self.products, "of the products")
            if self.products not in PRODUCT_PRECISIONS:
                raise ConfigError(f"precision of the products must be one of "
                                  f"{', '.join(PRODUCT_PRECISIONS)}, got {self.products!r} "
                                  "(bf16-act applies to the recurrent layers)")
        self.per_node = checked_per_node(self.per_node, _check_precision, "precisions")

    @classmethod
    def coerce(cls, value) -> "PrecisionConfig":
        """Accept a PrecisionConfig, a precision name, a dict, or the path of a JSON file
        (its ``precision`` section: what ``memotvm calibrate`` writes)."""
        if isinstance(value, PrecisionConfig):
            return value
        if isinstance(value, str) and value in STORAGE:
            return cls(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            if not value.endswith(".json") and not os.path.exists(value):
                _check_precision(value, "")  # a mistyped name rather than a file
            return cls.load(value)
        raise ConfigError(f"cannot use {type(value).__name__} as a precision "
                          f"(one of {', '.join(PRECISIONS)}, a dict or a JSON file)")

    @classmethod
    def from_dict(cls, raw: dict) -> "PrecisionConfig":
        extra = set(raw) - {"default", "per_node", "products"}
        if extra:
            raise ConfigError(f"unknown precision configuration key(s): {sorted(extra)}")
        return cls(**raw)

    @classmethod
    def load(cls, path: str) -> "PrecisionConfig":
        """The ``precision`` section of a JSON file (fp32 everywhere where it has none)."""
        return cls._section(_read_json(path), path) or cls()

    @classmethod
    def in_file(cls, path: str) -> "PrecisionConfig | None":
        """The file's precision section, or None where it has none (or is not a readable
        JSON file: whoever reads it for its memo section says what is wrong)."""
        try:
            raw = _read_json(path)
        except ConfigError:
            return None
        return cls._section(raw, path)

    @classmethod
    def _section(cls, raw, path) -> "PrecisionConfig | None":
        section = raw.get("precision") if isinstance(raw, dict) else None
        if section is None:
            return None
        if isinstance(section, str):
            return cls(section)
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: 'precision' must be a name or an object with default, "
                              "per_node and products")
        return cls.from_dict(section)

    def to_dict(self) -> dict:
        return {"default": self.default, "per_node": self.per_node, "products": self.products}

    @property
    def products_precision(self) -> str:
        """The precision of the matrix products and convolutions by constant weights."""
        if self.products is not None:
            return self.products
        return "bf16" if self.default == "bf16-act" else self.default

    @property
    def reduced(self) -> bool:
        """Whether any weight is below fp32."""
        values = [self.default, self.products_precision] + [
            v for pn in self.per_node.values() for v in (pn.values() if isinstance(pn, dict) else [pn])]
        return any(v != "fp32" for v in values)

    def text(self) -> str:
        """"bf16 everywhere", or per node: "/lstm/LSTM int8; others fp32"."""
        def one(value):
            if isinstance(value, dict):
                return ", ".join(f"{d} {p}" for d, p in value.items())
            return value

        products = "" if self.products is None or self.products == self.default \
            else f"; products {self.products}"
        if not self.per_node:
            return f"{self.default} everywhere" + products
        return "; ".join(f"{node} {one(v)}" for node, v in self.per_node.items()) \
            + f"; others {self.default}" + products

    def check_nodes(self, loops) -> None:
        names = {loop.name for loop in loops}
        unknown = sorted(set(self.per_node) - names)
        if unknown:
            raise ConfigError(f"precision configuration names node(s) not in the model: "
                              f"{', '.join(unknown)} (recurrent nodes: "
                              f"{', '.join(sorted(names)) or 'none'})")
        for loop in loops:
            value = self.per_node.get(loop.name)
            if isinstance(value, dict):
                for d in value:
                    if d not in [loop.direction_name(i) for i in range(loop.num_directions)]:
                        raise ConfigError(f"node '{loop.name}' has no '{d}' direction")

    def label(self, loops) -> str:
        """A short name of what ``loops`` are stored at: "int8", "bf16/int8", "fp32"."""
        used = {p for loop in loops for p in self.for_loop(loop)}
        return "/".join(p for p in PRECISIONS if p in used) or self.default

    def for_loop(self, loop) -> tuple:
        """The precision of each of ``loop``'s directions."""
        return per_direction(self.per_node, self.default, loop)

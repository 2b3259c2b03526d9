"""`RecurrentLoop`: everything about one ONNX LSTM/GRU/RNN node that its kernel needs.

The description is parsed and checked once, here, from the node and the static shapes of
its inputs; the kernel builder, the memoization pass, the numpy reference and the
accelerator all read it instead of the raw ONNX attributes.  It serialises to JSON so that
it can ride along on the generated PrimFunc as an attribute (``memotvm.recurrent``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..cells import ACTIVATION_PARAMS, DEFAULT_ACTIVATIONS, GATES, Activation
from ..errors import UnsupportedModelError

# The optional inputs of the recurrent ops, by ONNX input position.
OPTIONAL_INPUTS = {3: "B", 4: "sequence_lens", 5: "initial_h", 6: "initial_c", 7: "P"}
OUTPUTS = ("Y", "Y_h", "Y_c")
DIRECTIONS = ("forward", "reverse", "bidirectional")
SUPPORTED_DTYPES = ("float32", "float64", "float16")

_ACT_BY_LOWER = {name.lower(): name for name in ACTIVATION_PARAMS}


@dataclass(frozen=True)
class RecurrentLoop:
    """One recurrent layer (all its directions) as the kernels see it."""

    op: str  # "LSTM", "GRU" or "RNN"
    name: str  # ONNX node name (made unique by the importer if empty)
    input_size: int  # D
    hidden_size: int  # H
    direction: str
    activations: tuple  # per direction: a tuple of Activation (f, g, h)
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    layout: int = 0
    dtype: str = "float32"
    present: tuple = field(default_factory=tuple)  # names of optional inputs given

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def gates(self) -> tuple:
        return GATES[self.op]

    @property
    def num_gates(self) -> int:
        return len(GATES[self.op])

    @property
    def rows(self) -> int:
        """Neurons (gate rows of W and R) per direction."""
        return self.num_gates * self.hidden_size

    def is_reverse(self, d: int) -> bool:
        return self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)

    def direction_name(self, d: int) -> str:
        return "reverse" if self.is_reverse(d) else "forward"

    def has(self, name: str) -> bool:
        return name in self.present

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "RecurrentLoop":
        raw = json.loads(text)
        raw["activations"] = tuple(
            tuple(Activation(**a) for a in acts) for acts in raw["activations"]
        )
        raw["present"] = tuple(raw["present"])
        return RecurrentLoop(**raw)


def parse_recurrent_node(op, name, attrs, present, w_shape, r_shape, dtype) -> RecurrentLoop:
    """Check one LSTM/GRU/RNN node and describe it.

    ``attrs`` are the node's attributes (already decoded), ``present`` the names of the
    optional inputs it was given, ``w_shape``/``r_shape`` the static shapes of W and R.
    """

    def fail(msg):
        raise UnsupportedModelError(f"{op} node '{name}': {msg}")

    if dtype not in SUPPORTED_DTYPES:
        fail(f"element type {dtype} is not supported (float16, float32, float64 are)")
    direction = _text(attrs.get("direction", "forward"))
    if direction not in DIRECTIONS:
        fail(f"direction '{direction}' is not one of {', '.join(DIRECTIONS)}")
    nd = 2 if direction == "bidirectional" else 1
    if len(w_shape) != 3 or any(not isinstance(s, int) for s in w_shape):
        fail(f"W must have a static 3-d shape, got {w_shape}")
    if len(r_shape) != 3 or any(not isinstance(s, int) for s in r_shape):
        fail(f"R must have a static 3-d shape, got {r_shape}")
    gates = len(GATES[op])
    hidden = attrs.get("hidden_size", r_shape[2])
    if hidden <= 0:
        fail(f"hidden_size must be positive, got {hidden}")
    if w_shape[0] != nd or r_shape[0] != nd:
        fail(f"W and R must have {nd} direction(s) for direction={direction}, got {w_shape[0]}")
    if w_shape[1] != gates * hidden or tuple(r_shape[1:]) != (gates * hidden, hidden):
        fail(
            f"W {list(w_shape)} / R {list(r_shape)} do not match hidden_size={hidden} "
            f"({gates} gates)"
        )
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        fail(f"layout must be 0 or 1, got {layout}")
    clip = attrs.get("clip")
    if clip is not None and not clip > 0:
        fail(f"clip must be positive, got {clip}")
    input_forget = bool(attrs.get("input_forget", 0))
    if input_forget and op != "LSTM":
        fail("input_forget applies to LSTM only")
    lbr = bool(attrs.get("linear_before_reset", 0))
    if "P" in present and op != "LSTM":
        fail("only LSTM takes peephole weights P")
    if "initial_c" in present and op != "LSTM":
        fail("only LSTM takes initial_c")
    return RecurrentLoop(
        op=op,
        name=name,
        input_size=w_shape[2],
        hidden_size=hidden,
        direction=direction,
        activations=_parse_activations(op, attrs, nd, fail),
        clip=float(clip) if clip is not None else None,
        input_forget=input_forget,
        linear_before_reset=lbr,
        layout=layout,
        dtype=dtype,
        present=tuple(sorted(present)),
    )


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _parse_activations(op, attrs, nd, fail):
    per_dir = len(DEFAULT_ACTIVATIONS[op])
    names = [_text(a) for a in attrs.get("activations", ())]
    if not names:
        names = list(DEFAULT_ACTIVATIONS[op]) * nd
    if len(names) != per_dir * nd:
        # (As onnxruntime: a bidirectional node lists each direction's, even if equal.)
        fail(f"expected {per_dir * nd} activations ({per_dir} per direction), got "
             f"{len(names)}: {names}")
    alphas = list(attrs.get("activation_alpha", ()))
    betas = list(attrs.get("activation_beta", ()))
    acts = []
    for raw in names:
        canon = _ACT_BY_LOWER.get(raw.lower())
        if canon is None:
            fail(f"unknown activation '{raw}' (known: {', '.join(ACTIVATION_PARAMS)})")
        uses_a, uses_b, def_a, def_b = ACTIVATION_PARAMS[canon]
        alpha = float(alphas.pop(0)) if uses_a and alphas else def_a
        beta = float(betas.pop(0)) if uses_b and betas else def_b
        acts.append(Activation(canon, alpha, beta))
    return tuple(tuple(acts[d * per_dir : (d + 1) * per_dir]) for d in range(nd))

"""Settings given per recurrent node and direction: a memo configuration's thresholds
and a precision configuration's precisions share this shape -- one value for every node,
overridden by ONNX node name with one value or ``{"forward": v, "reverse": v}``."""

from __future__ import annotations

from .errors import ConfigError

DIRECTIONS = ("forward", "reverse")


def short(value, limit=60) -> str:
    """repr of a user's value, cut to a readable length (a 5000-digit number)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr: Python's digit limit
        text = f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit] + "..."


def checked_per_node(per_node, check, what: str) -> dict:
    """``per_node`` with every value passed through ``check(value, where)``; ConfigError
    for a value that is not a mapping of node names to values or direction mappings.
    ``what`` names the values ("thresholds", "precisions")."""
    if not isinstance(per_node, dict):
        raise ConfigError(f"per_node must map node names to {what}, got {type(per_node).__name__}")
    checked = {}
    for node, value in per_node.items():
        if not isinstance(node, str):
            raise ConfigError(f"per_node keys are node names, got {short(node)}")
        if isinstance(value, dict):
            bad = set(value) - set(DIRECTIONS)
            if bad:
                raise ConfigError(
                    f"node '{node}': directions must be 'forward' or 'reverse', got {sorted(bad)}")
            checked[node] = {k: check(v, f"of node '{node}' ({k})") for k, v in value.items()}
        else:
            checked[node] = check(value, f"of node '{node}'")
    return checked


def per_direction(per_node: dict, default, loop) -> tuple:
    """The value of each of ``loop``'s directions: its node's, else ``default``."""
    value = per_node.get(loop.name, default)
    if isinstance(value, dict):
        return tuple(value.get(loop.direction_name(d), default) for d in range(loop.num_directions))
    return (value,) * loop.num_directions

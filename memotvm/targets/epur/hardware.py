"""The accelerator's hardware configuration: every number of the cost model, with its source.

The defaults live in ``epur.toml`` beside this module (each entry ``{value, unit,
source}``); a user file or dict overrides any subset of them.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass

from ...errors import ConfigError

DEFAULT_FILE = os.path.join(os.path.dirname(__file__), "epur.toml")


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read hardware configuration: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not a TOML hardware configuration: {err}") from err


@dataclass(frozen=True)
class Parameter:
    value: float
    unit: str
    source: str

    @property
    def assumed(self) -> bool:
        return self.source.startswith("ASSUMPTION")


class HardwareConfig:
    """Named parameters (``section.name``) of the modelled machine.

    ``HardwareConfig.load(None)`` gives the defaults; ``load(path)`` or
    ``load({"compute.dpu_width": 32, ...})`` overrides some of them.
    """

    def __init__(self, params: dict[str, Parameter], origin: str):
        self.params = params
        self.origin = origin

    @classmethod
    def load(cls, spec=None) -> "HardwareConfig":
        if isinstance(spec, HardwareConfig):
            return spec
        params = _flatten(_read(DEFAULT_FILE), DEFAULT_FILE)
        origin = "defaults"
        if spec is None:
            return cls(params, origin)
        if isinstance(spec, str):
            overrides = _flatten(_read(spec), spec, partial=True)
            origin = spec
        elif isinstance(spec, dict):
            overrides = {k: v if isinstance(v, dict) else {"value": v} for k, v in spec.items()}
            origin = "overrides"
        else:
            raise ConfigError(f"cannot use {type(spec).__name__} as a hardware configuration")
        params = copy.copy(params)
        for key, entry in overrides.items():
            if key not in params:
                raise ConfigError(f"unknown hardware parameter '{key}' (known: {', '.join(sorted(params))})")
            value = entry.get("value")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"hardware parameter '{key}' must be a positive number, got {value!r}")
            old = params[key]
            params[key] = Parameter(float(value), entry.get("unit", old.unit),
                                    entry.get("source", f"user setting ({origin})"))
        return cls(params, origin)

    def __getitem__(self, key: str) -> float:
        return self.params[key].value

    def energy_pj(self, key: str) -> float:
        """An energy of the table at the modelled node (DRAM is not scaled)."""
        scale = 1.0 if key == "energy.dram" else self["energy.node_scale"]
        return self[key] * scale

    def to_dict(self) -> dict:
        return {k: {"value": p.value, "unit": p.unit, "source": p.source} for k, p in self.params.items()}


def _flatten(raw: dict, path: str, partial: bool = False) -> dict:
    out = {}
    for section, entries in raw.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: '{section}' must be a table of parameters")
        for name, entry in entries.items():
            key = f"{section}.{name}"
            if not isinstance(entry, dict) or "value" not in entry:
                raise ConfigError(f"{path}: '{key}' must be a table with a 'value'")
            if partial:
                out[key] = entry
            else:
                out[key] = Parameter(float(entry["value"]), entry.get("unit", ""), entry.get("source", ""))
    return out

"""Registry of backends by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Backend

_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, override: bool = False) -> Backend:
    """Make ``backend`` available as ``target=backend.name``."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a memotvm.targets.Backend, got {type(backend).__name__}")
    if not backend.name:
        raise ConfigError("a backend needs a non-empty name")
    for name in (backend.name, *backend.aliases):
        if name in _BACKENDS and not override:
            raise ConfigError(f"a backend named '{name}' is already registered")
    for name in (backend.name, *backend.aliases):
        _BACKENDS[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown target '{name}' (registered: {', '.join(sorted(_BACKENDS))})"
        ) from None


def list_backends() -> list[str]:
    return sorted(_BACKENDS)

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


def get_backend(name) -> Backend:
    """The backend of ``target=``: a registered name, or an LLVM target (a TVM target
    string such as ``"llvm -mcpu=haswell"``, or a ``tvm.target.Target``), which the
    ``cpu`` backend builds for."""
    import tvm

    if isinstance(name, (tvm.target.Target, dict)) or (isinstance(name, str) and name.split(" ", 1)[0] == "llvm"):
        from .cpu import CpuBackend

        return CpuBackend(llvm_target=name)
    try:
        return _BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown target {name!r} (registered: {', '.join(sorted(_BACKENDS))}; or an LLVM "
            "target such as 'llvm -mcpu=haswell')"
        ) from None


def list_backends() -> list[str]:
    return sorted(_BACKENDS)

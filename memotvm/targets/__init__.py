"""Backends: where compiled models run.  ``cpu`` (LLVM) and ``epur`` (alias ``accel``,
the modelled RNN accelerator) are built in; others register themselves with
:func:`register_backend` (docs/backends.md)."""

from .base import Backend
from .cpu import CpuBackend, host_target
from .epur import EpurBackend, HardwareConfig
from .registry import get_backend, list_backends, register_backend

register_backend(CpuBackend())
register_backend(EpurBackend())

__all__ = ["Backend", "CpuBackend", "EpurBackend", "HardwareConfig", "get_backend", "host_target", "list_backends", "register_backend"]

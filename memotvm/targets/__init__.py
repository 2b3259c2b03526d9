"""Backends: where compiled models run.  ``cpu`` (LLVM) is built in; others register
themselves with :func:`register_backend`."""

from .base import Backend
from .cpu import CpuBackend, host_target
from .registry import get_backend, list_backends, register_backend

register_backend(CpuBackend())

__all__ = ["Backend", "CpuBackend", "get_backend", "host_target", "list_backends", "register_backend"]

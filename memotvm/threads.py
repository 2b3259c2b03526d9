"""How many threads a compiled model's calls use.

TVM's runtime keeps one thread pool per calling thread.  It sizes a pool when the pool
is first used, from ``TVM_NUM_THREADS`` or else from its own guess (half the hardware
threads on x86, taken for hyper-threading: one thread on a two-CPU machine), and
``runtime.config_threadpool`` cannot raise the count past that size afterwards -- except
through its list of CPUs, which also sets the calling thread's concurrency limit before
the pool is made.  :func:`use_threads` goes through that door: each model carries its own
thread count (``compile(..., threads=N)``), and each call sets the calling thread's pool
to it, without touching the process environment.
"""

from __future__ import annotations

import math
import os
import threading

from .errors import ConfigError

# runtime.config_threadpool's mode that lets every worker run on any of the listed CPUs
# (kSpecifyThreadShareAllCore): pinning one worker per core would chain the pool to a
# core another process is busy on.
_SHARE_ALL_CORES = -3

_local = threading.local()


def available_cpus() -> list:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def default_threads() -> int:
    """The thread count of a model compiled without ``threads=``: ``TVM_NUM_THREADS``
    where the user set it, else every CPU the process may run on."""
    value = os.environ.get("TVM_NUM_THREADS", "")
    if value.strip().isdigit() and int(value) >= 1:
        return int(value)
    return len(available_cpus())


def check_threads(threads) -> int | None:
    """``threads`` as given to compile (None: the default at each call), checked."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a whole number >= 1, not {threads!r}")
    return threads


def use_threads(threads: int | None) -> None:
    """Make the calling thread's TVM pool run ``threads`` workers (None: the default).

    Cheap when the count is already set (one attribute read).  The pool is made on the
    first call from a thread, as large as the CPUs available (or ``threads`` if more);
    a later, larger count is capped at that size.
    """
    threads = default_threads() if threads is None else threads
    if getattr(_local, "threads", None) == threads:
        return
    import tvm_ffi

    configure = tvm_ffi.get_global_func("runtime.config_threadpool")
    cpus = available_cpus()
    size = getattr(_local, "pool_size", None) or max(threads, len(cpus))
    # The list's length is the pool's size (repeating CPUs where there are more threads
    # than CPUs: each worker may run on every listed CPU).
    listed = (cpus * math.ceil(size / len(cpus)))[:size]
    configure(_SHARE_ALL_CORES, threads, [str(c) for c in listed])
    _local.pool_size, _local.threads = size, threads


def pool_threads() -> int:
    """The number of workers the calling thread's TVM pool runs now."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())

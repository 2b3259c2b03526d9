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
import time

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
    where the user set it, else every CPU the process may run on.  Looked up again
    after a second (a small model's call takes less time than the lookup's 1.5 us)."""
    global _default
    now = time.monotonic()
    if now - _default[0] < _RECHECK_S:
        return _default[1]
    value = os.environ.get("TVM_NUM_THREADS", "")
    threads = int(value) if value.strip().isdigit() and int(value) >= 1 else len(available_cpus())
    _default = (now, threads)
    return threads


_RECHECK_S = 1.0
_default = (-float("inf"), 1)  # (when looked up, the count)


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


class AdaptiveThreads:
    """Chooses, call by call, between a model's thread count and one thread, from how
    long its calls take.

    A step split across threads waits at a barrier for every worker; on a machine where
    another process is busy, a worker that the OS has descheduled holds up every step
    (GRU 512 at batch 8 went from 3 to 131 ms with one busy process on a 2-core
    machine).  One thread then runs faster.  So each (model, calling thread) keeps the
    time per input element of its last ``WINDOW`` calls with the current choice and of
    the last three tries of the other, runs the faster, and tries the other after
    ``FIRST_PROBE`` calls, then at doubling intervals up to ``MAX_INTERVAL`` while the
    choice holds (back to ``FIRST_PROBE`` when it changes), and at once when the
    median of the current choice's window has become slower than the other's: when
    the other process stops, a try finds the threads faster again.  Medians, so that
    one slow call (an interrupt, a page fault) does not switch.

    While one thread is the choice, the threads are tried no sooner than
    ``WAKE_GAP_S`` after the last try (``clock``: seconds): after a call that used
    them, TVM's idle workers spin for about 0.24 s (``sched_yield``; measured on a 2-core
    EPYC) before they sleep, and tries every 8-64 calls of a small model kept one
    spinning on the other core for good (the process used 2 CPUs for 1 CPU's work,
    and on a machine whose two CPUs share a core its calls took 25 us more).

    A try is two calls, the first not counted: the first call on threads that have
    slept wakes them and finds the other core's caches cold (the CRNN fixture on two
    threads after 1 s idle: 766 us, then 367 us, against 289 us a call in a row).
    Counted, it made every try after the 2-s gap look slower than one thread, so a
    chooser that had once fallen back to one thread stayed there on an idle machine.
    The median of the current choice's window is taken only where the newest rate is
    slower than the other choice's: only then can it have crossed it.
    """

    FIRST_PROBE = 8
    MAX_INTERVAL = 64
    WINDOW = 5
    WAKE_GAP_S = 2.0

    def __init__(self, threads: int, adaptive: bool = True, clock=time.monotonic):
        self.threads = threads
        self.adaptive = adaptive and threads > 1
        self.best = threads
        self.recent = []  # the current choice's last rates
        self.tries = []  # the other choice's rates, its last tries
        self.other = None  # their median (None before the first try)
        self.interval = self.FIRST_PROBE
        self.until_probe = self.FIRST_PROBE
        self.clock = clock
        self.wake_at = 0.0  # while one thread is the choice: when to try the threads
        self.trying = False  # a try's first call was made: its second is counted

    def pick(self) -> int:
        """The thread count of the next call."""
        if not self.adaptive:
            return self.threads
        if self.trying:  # the try's counted call
            return self._other()
        self.until_probe -= 1
        if self.until_probe <= 0 and (self.best != 1 or self.clock() >= self.wake_at):
            return self._other()
        return self.best

    def _other(self) -> int:
        """The choice not made: one thread, or the model's threads."""
        return 1 if self.best != 1 else self.threads

    def current(self) -> float:
        """The median rate of the current choice's recent calls."""
        return _median(self.recent) if self.recent else float("inf")

    def record(self, threads: int, seconds: float, work: int) -> None:
        """The call just made took ``seconds`` on ``threads`` for ``work`` input elements."""
        if not self.adaptive:
            return
        rate = seconds / max(work, 1)
        if threads == self.best:
            recent = self.recent
            recent.append(rate)
            if len(recent) > self.WINDOW:
                del recent[0]
            if self.other is not None and rate > self.other and len(recent) >= 3 \
                    and _median(recent) > self.other:
                self.until_probe = 0  # slower now than the other was: try it next
            return
        if not self.trying:  # a try's first call: it woke the threads; not counted
            self.trying = True
            return
        # A try of the other choice.
        self.trying = False
        if rate < self.current():
            self.best, self.tries, self.recent = threads, self.recent[-3:], [rate]
            self.interval = self.FIRST_PROBE
        else:
            self.tries = (self.tries + [rate])[-3:]
            self.interval = min(2 * self.interval, self.MAX_INTERVAL)
        self.other = _median(self.tries) if self.tries else None
        self.until_probe = self.interval
        if self.best == 1:
            self.wake_at = self.clock() + self.WAKE_GAP_S


def _median(values: list) -> float:
    """The median of a few numbers (statistics.median's checks cost more than a small
    model's call does in Python)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

"""Timing engines fairly: each contender in a process of its own, at its own defaults,
taking turns.

Two engines in one process share a core pool: onnxruntime's idle workers spin after each
run and steal the cores TVM's workers need (and the other way round), and turning the
spinning off to share the process slows onnxruntime down (LSTM 512, T = 100: 4.9 ms at its
defaults, 8.3 ms without spinning).  So every contender (onnxruntime at its defaults,
memotvm unmodified, each memoized variant) is built in its own spawned process, and the
processes take turns: in each round every contender times a few calls (enough to last
``TURN_S``) while the others wait on a pipe, in an order that rotates from round to
round, after a short pause that lets the previous engine's workers go idle and one
untimed call.  A busy
period of the machine therefore hits every contender, and the spread of the samples
shows it.

A contender whose backend cannot be rebuilt in a fresh process (a backend registered by
the user's own code) runs in this process, still taking turns.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from .errors import MemoTVMError

# A turn lasts at least this long: a short model is timed over many calls per turn.
TURN_S = 0.1
# Pause before each turn, so that the engine that ran before is idle: onnxruntime's
# workers spin for a while after a run, TVM's for about 0.24 s (memotvm.threads).  With
# 0.02 s, a turn after another memotvm process's shared the cores with its spinning
# workers: the memoized bidirectional LSTM 512 (T = 100) measured 32-33 ms a call,
# 20.5-21.3 ms with this pause (two runs of each, alternated).
SETTLE_S = 0.3
# Untimed calls at the start of each turn: the first call after another engine's turn
# finds cold caches and sleeping workers (onnxruntime's first call after a pause took
# twice its median), which is not the steady state a deployed model runs in.
TURN_WARMUP = 1
# At most this many calls per turn (each timed on its own).
MAX_CALLS_PER_TURN = 200
# Relative interquartile range above which the machine is reported busy.
BUSY_SPREAD = 0.15
# How long a worker may take to build its model.
BUILD_TIMEOUT_S = 1800


@dataclass
class Contender:
    """One engine and configuration to time.

    ``calls``: the inputs of each call, in order; one sample is all of them (one call
    for a whole-sequence model, every chunk of a stream).  ``state`` (streams): input ->
    output fed back between calls, and ``start`` the state inputs of the first call.
    ``memo`` and ``options`` are memotvm's compile arguments; ``threads`` onnxruntime's
    intra-op threads (None: its default)."""

    name: str
    engine: str
    model: bytes
    calls: list
    memo: object = None
    options: dict = field(default_factory=dict)
    state: dict | None = None
    start: dict = field(default_factory=dict)
    threads: int | None = None
    in_process: bool = False
    # A baseline that may fail to build (an engine that refuses the model): it is then
    # left out, with the reason in its build information, instead of failing the run.
    optional: bool = False


@dataclass
class Timing:
    """Seconds of each sample of one contender."""

    samples: list

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self):
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q1, q3 = self.quartiles()
        return (q3 - q1) / self.median

    def to_dict(self) -> dict:
        q1, q3 = self.quartiles()
        return {"runs": len(self.samples), "min_ms": min(self.samples) * 1e3, "q1_ms": q1 * 1e3,
                "median_ms": self.median * 1e3, "q3_ms": q3 * 1e3, "max_ms": max(self.samples) * 1e3}


# -- what runs in a worker ---------------------------------------------------------------


def _memotvm_runner(c: Contender):
    from .api import compile as compile_model
    from .threads import default_threads

    t0 = time.perf_counter()
    compiled = compile_model(c.model, memo=c.memo, **c.options)
    info = {"compile_s": time.perf_counter() - t0, "threads": compiled.threads or default_threads()}
    precision = getattr(compiled, "precision", None)
    if precision is not None and precision.reduced:
        info["precision"] = precision.label(compiled.loops)
    if c.state is None:
        # The call a user makes: input checks, conversions and the reuse counts included,
        # as onnxruntime's times include its own.
        feeds = c.calls[0]

        def run():
            return compiled.run(feeds)

        run()
        stats = compiled.last_stats if compiled.memo else None
    else:
        session = compiled.session(state=c.state)

        def run():
            session.reset()
            for call in c.calls:
                session.run(call)

        run()
        stats = session.stats if compiled.memo else None
    info["reuse"] = stats.reuse if stats is not None else 0.0
    info["computations_avoided"] = stats.computations_avoided if stats is not None else 0.0
    return run, info


def _onnxruntime_runner(c: Contender):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # its defaults: threads, spinning, graph optimizations
    if c.threads:
        opts.intra_op_num_threads = c.threads
    session = ort.InferenceSession(c.model, opts, providers=["CPUExecutionProvider"])
    info = {"threads": c.threads or "default", "version": ort.__version__}
    if c.state is None:
        feeds = c.calls[0]
        return (lambda: session.run(None, feeds)), info
    names = [{o.name} for o in session.get_outputs()]
    return _fed_back(lambda feeds: session.run(None, feeds), names, c), info


def _fed_back(infer, names: list, c: Contender, own=lambda a: a):
    """One pass over a stream's calls, each call's state inputs taken from the outputs
    of the one before (``c.state``: input -> output name); ``infer(feeds)`` returns the
    outputs by position, ``names`` the names of each position, ``own`` makes a state
    output the caller's (where the engine reuses its output buffers)."""
    pairs = {inp: next(i for i, n in enumerate(names) if out in n) for inp, out in c.state.items()}

    def run():
        state = dict(c.start)
        for call in c.calls:
            out = infer({**call, **state})
            state = {inp: own(out[i]) for inp, i in pairs.items()}

    return run


def _openvino_runner(c: Contender):
    """OpenVINO's CPU plugin at its defaults (on a CPU with bf16 support it computes in
    bf16), or with ``options={"precision": "f32"}`` at float32."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"} if c.options.get("precision") == "f32" else {}
    compiled = core.compile_model(core.read_model(c.model, b""), "CPU", config)
    request = compiled.create_infer_request()
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    info = {"threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "precision": precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision),
            "version": ov.__version__}
    if c.state is None:
        feeds = c.calls[0]
        return (lambda: request.infer(feeds)), info
    outputs = compiled.outputs
    names = [o.get_names() for o in outputs]  # an output may have several

    def infer(feeds):
        result = request.infer(feeds)
        return [result[o] for o in outputs]

    # (the request's output tensors are overwritten by its next call: state is copied)
    return _fed_back(infer, names, c, own=np.array), info


ENGINES = {"memotvm": _memotvm_runner, "onnxruntime": _onnxruntime_runner,
           "openvino": _openvino_runner}


class _Runner:
    """A built contender: times calls on request."""

    def __init__(self, contender: Contender):
        if contender.engine not in ENGINES:
            raise MemoTVMError(f"unknown engine {contender.engine!r} (known: {', '.join(ENGINES)})")
        self.run, self.info = ENGINES[contender.engine](contender)
        self.info["pid"] = os.getpid()
        self.info["first_s"] = self.warm()

    def warm(self, calls: int = 2) -> float:
        for _ in range(calls):
            t0 = time.perf_counter()
            self.run()
            last = time.perf_counter() - t0
        return last

    def time(self, calls: int) -> list:
        for _ in range(TURN_WARMUP):
            self.run()
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.run()
            out.append(time.perf_counter() - t0)
        return out


def _serve(requests, replies):
    """A worker process: build what it is sent, then time calls until told to stop."""
    runner = None
    while True:
        try:
            msg, arg = requests.recv()
        except EOFError:
            return
        try:
            if msg == "build":
                runner = _Runner(arg)
                replies.send(("ok", runner.info))
            elif msg == "time":
                replies.send(("ok", runner.time(arg)))
            else:
                return
        except BaseException as e:  # noqa: BLE001 - reported to the parent, with its traceback
            replies.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _ProcessWorker:
    """A fresh interpreter running this module (not multiprocessing's spawn, which would
    import the caller's main script again in the worker)."""

    def __init__(self, name):
        self.name = name
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        # The worker imports this memotvm even where the caller found it by sys.path
        # rather than by installation.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(down_r), str(up_w)],
                                        pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL, env=env)
        os.close(down_r)
        os.close(up_w)
        self.requests = Connection(down_w, readable=False)
        self.replies = Connection(up_r, writable=False)

    def request(self, msg, arg, timeout):
        try:
            self.requests.send((msg, arg))
        except (BrokenPipeError, OSError):
            pass  # it died: said below
        deadline = time.monotonic() + timeout
        while not self.replies.poll(1.0):
            if self.process.poll() is not None:
                raise MemoTVMError(f"timing '{self.name}': its worker process died "
                                   f"(exit code {self.process.returncode})")
            if time.monotonic() > deadline:
                raise MemoTVMError(f"timing '{self.name}': no answer to '{msg}' in {timeout:.0f} s")
        try:
            status, value = self.replies.recv()
        except EOFError:
            raise MemoTVMError(f"timing '{self.name}': its worker process died "
                               f"(exit code {self.process.wait()})") from None
        if status == "error":
            raise MemoTVMError(f"timing '{self.name}' failed in its worker process: {value}")
        return value

    def close(self):
        try:
            self.requests.send(("stop", None))
        except (BrokenPipeError, OSError):
            pass
        self.requests.close()
        self.replies.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _LocalWorker:
    def __init__(self, name):
        self.name, self.runner = name, None

    def request(self, msg, arg, timeout):
        if msg == "build":
            self.runner = _Runner(arg)
            return self.runner.info
        return self.runner.time(arg)

    def close(self):
        self.runner = None


def measure(contenders: list, rounds: int = 20, progress=None) -> tuple[dict, dict]:
    """Time ``contenders`` (each in its own process unless ``in_process``), taking turns
    for ``rounds`` rounds.  Returns (name -> :class:`Timing`, name -> build information:
    compile seconds, reuse, threads ...).  ``progress(done, total)`` is called after each
    turn."""
    workers = {}
    try:
        # Start every process first (they import in parallel), then build one at a
        # time, so that compile times are not inflated by one another.
        for c in contenders:
            workers[c.name] = _LocalWorker(c.name) if c.in_process else _ProcessWorker(c.name)
        info, failed = {}, {}
        for c in contenders:
            try:
                info[c.name] = workers[c.name].request("build", c, BUILD_TIMEOUT_S)
            except MemoTVMError as err:
                if not c.optional:
                    raise
                failed[c.name] = {"error": str(err).splitlines()[0][:500]}
                workers.pop(c.name).close()
        contenders = [c for c in contenders if c.name not in failed]
        calls = {name: max(1, min(MAX_CALLS_PER_TURN, int(TURN_S / max(i["first_s"], 1e-6))))
                 for name, i in info.items()}
        samples = {c.name: [] for c in contenders}
        names = [c.name for c in contenders]
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                time.sleep(SETTLE_S)
                samples[name] += workers[name].request("time", calls[name], 600)
                if progress is not None:
                    progress(r * len(names) + k + 1, rounds * len(names))
        return {name: Timing(s) for name, s in samples.items()}, {**info, **failed}
    finally:
        for w in workers.values():
            w.close()


def busy_warning(timings: dict) -> str | None:
    """A warning when the samples' spread says the machine was busy, else None."""
    noisy = {n: t.spread for n, t in timings.items() if t.spread > BUSY_SPREAD}
    if not noisy:
        return None
    worst = ", ".join(f"{n} {s:.0%}" for n, s in sorted(noisy.items(), key=lambda kv: -kv[1]))
    return (f"the machine looks busy: interquartile range above {BUSY_SPREAD:.0%} of the median "
            f"({worst}); repeat the run before trusting differences of this size")


def machine() -> dict:
    """What the numbers were measured on: CPU, CPUs usable, load and versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("memotvm", "apache-tvm", "onnxruntime", "openvino", "onnx", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cpus": cpus, "os_cpus": os.cpu_count(), "load_1min": load and load[0],
            "python": platform.python_version(), "versions": versions}


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))

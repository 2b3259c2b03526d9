"""Calibration, sweeps and validation on a Ray cluster.

``calibrate``, ``sweep`` and ``validate`` take ``cluster=`` (a Ray address such as
``"ray://head:10001"`` or ``"10.0.0.5:6379"``, ``"auto"``, ``"local"`` to start Ray in
this process's machine, or a :class:`Cluster`) and ``workers=``.  Their jobs -- a
compiled variant of the model run on a split of the data -- then run on
:class:`ClusterWorker` actors (one CPU each unless ``Cluster(cpus_per_worker=N)``):

* the model's bytes and each shard of the inputs are put in Ray's object store once;
  tasks pass references, so a node fetches a shard once however many configurations
  it evaluates on it;
* each worker compiles the model once per variant (the unmodified model, and one
  model per predictor with thresholds as run-time data) and keeps it;
* a split is cut into shards of whole batch elements (or whole sequences of a data
  set), one per worker; a job is one task per shard; the driver joins the shards'
  outputs in order and adds their integer reuse counts, then computes the metric on
  the joined outputs exactly as one machine does.  The kernels compute each batch
  element on its own, so the joined outputs equal the whole-batch run bit for bit,
  and the results (the configuration chosen, the metrics, the JSON) do not depend on
  the number of workers or on the order tasks finish in;
* a worker that dies is restarted by Ray (elsewhere if its node is gone) and its task
  retried, up to ``RESTARTS`` times; a worker that cannot import memotvm, runs other
  versions of memotvm, TVM or ONNX than this process, or cannot compile the model
  fails the run with a :class:`memotvm.errors.ClusterError` naming it.

Ray is an optional dependency: ``pip install 'memotvm[cluster]'``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from importlib import metadata
from types import SimpleNamespace

import numpy as np

from .errors import ClusterError, ConfigError, MemoTVMError
from .evaluation import UNMODIFIED, Outcome

INSTALL_HINT = "pip install 'memotvm[cluster]'"
# Packages whose versions must agree between this process and every worker: they decide
# what the compiled code computes.
PINNED = ("memotvm", "apache-tvm", "apache-tvm-ffi", "onnx")
# Times Ray restarts a dead worker (and retries its task) before the run fails.
RESTARTS = 3
# Tasks queued on a worker at once: the next shard is on its way while one runs.
IN_FLIGHT = 2
# How long workers may take to start and compile every variant.
PREPARE_TIMEOUT_S = 900.0


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"running on a cluster needs Ray, an optional dependency: {INSTALL_HINT}") \
            from None
    return ray


def versions() -> dict:
    """The installed versions of the packages in ``PINNED`` ("missing" where absent)."""
    out = {}
    for name in PINNED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


class Cluster:
    """A connection to a Ray cluster and the workers to run on it.

    ``address``: "local" starts a Ray instance on this machine (with at least as many
    CPUs as the workers take, oversubscribing the cores if asked to); any other value is
    given to ``ray.init(address=...)``.  Each worker takes ``cpus_per_worker`` CPUs and
    runs its calls on as many threads (one worker per machine: its core count, and the
    model is compiled once per machine); ``workers`` defaults to as many as the
    cluster's CPUs allow.  If Ray is already initialised in this process, that
    connection is used."""

    def __init__(self, address: str = "local", workers: int | None = None,
                 cpus_per_worker: int = 1):
        for name, value in (("workers", workers), ("cpus_per_worker", cpus_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        self.cpus_per_worker = cpus_per_worker
        if not isinstance(address, str) or not address.strip():
            raise ConfigError(f"cluster address must be a Ray address or 'local', got {address!r}")
        self.address, self.requested = address.strip(), workers
        self.workers = None  # how many, once connected
        self.cpus = 0
        self._owned = False

    def connect(self) -> "Cluster":
        if self.workers is not None:
            return self
        ray = _ray()
        if not ray.is_initialized():
            common = dict(logging_level=logging.ERROR, log_to_driver=False)
            try:
                if self.address == "local":
                    cpus = max((self.requested or 1) * self.cpus_per_worker, os.cpu_count() or 1)
                    ray.init(num_cpus=cpus, include_dashboard=False, **common)
                else:
                    _check_reachable(self.address)
                    ray.init(address=self.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ClusterError(f"cannot connect to the Ray cluster at '{self.address}': "
                                   f"{err}") from None
            self._owned = True
        self.cpus = int(ray.cluster_resources().get("CPU", 0))
        try:
            self.workers = self.check_workers(self.requested)
        except ConfigError:
            self.close()
            raise
        return self

    def check_workers(self, workers: int | None) -> int:
        """How many workers to run: ``workers`` (default: as many as the cluster's CPUs
        allow), refused where the cluster has too few CPUs."""
        workers = workers or self.cpus // self.cpus_per_worker
        if workers < 1 or workers * self.cpus_per_worker > self.cpus:
            raise ConfigError(f"{workers or 1} worker(s) of {self.cpus_per_worker} CPU(s) asked "
                              f"for, but the Ray cluster at '{self.address}' has {self.cpus} CPU(s)")
        return workers

    def close(self) -> None:
        if self._owned:
            _ray().shutdown()
            self._owned = False
        self.workers = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a HOST:PORT (or ray://HOST:PORT) that does not accept connections: Ray
    itself retries an unreachable address for minutes."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at '{address}': "
                           f"{err.strerror or err}") from None


def coerce_cluster(cluster, workers=None) -> tuple[Cluster, int, bool]:
    """(a connected Cluster, how many workers to run on it, whether the caller made
    the Cluster and must close it)."""
    if isinstance(cluster, Cluster):
        cluster.connect()
        if workers is not None and workers != (cluster.requested or workers):
            raise ConfigError(f"workers={workers} contradicts the Cluster's {cluster.requested}")
        return cluster, cluster.check_workers(workers or cluster.workers), False
    made = Cluster(cluster, workers).connect()
    return made, made.workers, True


class ClusterWorker:
    """One worker: compiles the model's variants once, runs jobs on shards of the data.

    Made a Ray actor by :class:`ClusterRunner`; when Ray restarts it after a crash, it
    compiles again on its first task."""

    def __init__(self, index: int, target: str, options: dict):
        self.index, self.target, self.options = index, target, options
        # Every task carries [a reference to the model's bytes] (nested: fetched only to
        # compile), so that a restarted worker compiles again on its first task.
        self.model_ref = None
        self._models: dict = {}
        self._calls: dict = {}

    def where(self) -> str:
        return f"worker {self.index} (pid {os.getpid()} on {socket.gethostname()})"

    def _model(self, variant):
        if variant not in self._models:
            import onnx

            try:
                import ray

                proto = onnx.load_from_string(ray.get(self.model_ref))
                self._models[variant] = variant.compile(proto, self.target, self.options)
            except ClusterError:
                raise
            except Exception as err:  # noqa: BLE001 -- reported with the worker's name
                raise ClusterError(f"{self.where()} cannot compile the model ({variant.kind}): "
                                   f"{type(err).__name__}: {err}") from None
        return self._models[variant]

    def prepare(self, model: list, variants: list, expected: dict) -> dict:
        """Check the versions against the driver's, compile every variant; describe the
        unmodified model (what the driver needs to cut the data into shards)."""
        self.model_ref = model[0]
        mine = versions()
        differ = [f"{name} {mine[name]} (this process: {expected[name]})"
                  for name in PINNED if mine[name] != expected.get(name)]
        if differ:
            raise ClusterError(f"{self.where()} runs " + ", ".join(differ) + "; every node "
                               "needs the same versions of " + ", ".join(PINNED))
        seconds = {}
        for variant in [UNMODIFIED, *variants]:
            t0 = time.perf_counter()
            self._model(variant)
            seconds[variant] = time.perf_counter() - t0
        plain = self._model(UNMODIFIED)
        return {"where": self.where(), "compile_s": seconds, "input_names": list(plain.input_names),
                "input_types": dict(plain.input_types), "output_types": dict(plain.output_types),
                "output_names": list(plain.output_names), "recurrent_state": dict(plain.recurrent_state),
                "modelled": hasattr(plain, "last_cost")}

    def run(self, model: list, variant, memo, shard: str, inputs, stream, keep):
        """(outputs, stats, cost) of ``variant`` on one shard; outputs not in ``keep``
        (None: all) are left out."""
        from .streaming import run_inputs, split_all

        self.model_ref = model[0]
        model = self._model(variant)
        if shard not in self._calls:
            self._calls[shard] = split_all(self._model(UNMODIFIED), inputs, stream)
        outputs, stats = run_inputs(model, inputs, stream, memo=memo, calls=self._calls[shard])
        kept = [o if keep is None or i in keep else None for i, o in enumerate(outputs)]
        return kept, stats, getattr(model, "last_cost", None)

    def stream_info(self, model: list, variant, stream) -> dict:
        """What ``validate`` reports of a streamed run: the state pairs, and the
        directions memoized within each call only."""
        self.model_ref = model[0]
        session = self._model(variant).session(state=stream.state)
        return {"state": session.state_pairs,
                "within_call_only": [f"{n}:{d}" for n, d in session.within_call_only]}


class ClusterRunner:
    """The interface of :class:`memotvm.evaluation.LocalRunner`, on Ray workers."""

    def __init__(self, cluster, proto, target="cpu", options=None, variants=(), keep=None,
                 workers=None):
        ray = _ray()
        self.cluster, count, self._owns_cluster = coerce_cluster(cluster, workers)
        options = dict(options or {})
        # As many threads per call as the worker has CPUs (results do not depend on it).
        cpus = self.cluster.cpus_per_worker
        options.setdefault("threads", cpus)
        self.keep = None if keep is None else sorted(set(keep))
        self._model_ref = ray.put(proto.SerializeToString())
        actor = ray.remote(num_cpus=cpus, max_restarts=RESTARTS,
                           max_task_retries=RESTARTS)(ClusterWorker)
        self.workers = [actor.remote(i, target, options)
                        for i in range(count)]
        self._where = [f"worker {i}" for i in range(len(self.workers))]
        self._splits: dict = {}
        self._data: dict = {}
        try:
            infos = self._prepare(list(variants))
        except BaseException:
            self.close()
            raise
        self._where = [info["where"] for info in infos]
        self.info = infos[0]
        self.compile_seconds = infos[0]["compile_s"]
        self.output_names = infos[0]["output_names"]
        # What cutting a stream into calls needs of the model (split_all, find_state_pairs).
        self.signature = SimpleNamespace(**{key: infos[0][key] for key in (
            "input_names", "input_types", "output_names", "output_types", "recurrent_state")})

    def _prepare(self, variants):
        ray = _ray()
        refs = [w.prepare.remote([self._model_ref], variants, versions()) for w in self.workers]
        deadline = time.monotonic() + PREPARE_TIMEOUT_S
        pending = list(refs)
        while pending:  # the first failure ends the wait
            done, pending = ray.wait(pending, num_returns=1,
                                     timeout=max(deadline - time.monotonic(), 0))
            if not done:
                late = [self._where[refs.index(r)] for r in pending]
                raise ClusterError(f"{', '.join(late)} did not start and compile the model within "
                                   f"{PREPARE_TIMEOUT_S:.0f} s (is every node able to run "
                                   "memotvm, and are there free CPUs?)")
            self._get(done[0], refs.index(done[0]), "start")
        return [self._get(ref, i, "start") for i, ref in enumerate(refs)]

    def _get(self, ref, index, doing):
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, MemoTVMError):
                raise cause from None  # the error one machine gives (worker named where it matters)
            raise ClusterError(f"{self._where[index]} failed to {doing}: {err}") from None
        except ray.exceptions.RayActorError as err:
            raise ClusterError(f"{self._where[index]} died and was not restarted (after "
                               f"{RESTARTS} restarts, or its node cannot start it): {err}") from None

    # ------------------------------------------------------------------ data
    def add_split(self, key: str, inputs, stream=None) -> None:
        """Cut the split into shards (one per worker), each put in the object store once."""
        ray = _ray()
        count = 1 if self.info["modelled"] else len(self.workers)
        shards, axes = shard_split(self.info, inputs, stream, count, self.keep)
        self._splits[key] = ([ray.put(s) for s in shards], axes, stream)
        self._data[key] = (inputs, stream)

    def split_data(self, key: str) -> tuple:
        """(inputs, stream) of the split."""
        return self._data[key]

    def stream_info(self, variant, stream) -> dict:
        return self._get(self.workers[0].stream_info.remote([self._model_ref], variant, stream), 0,
                         "run")

    # ------------------------------------------------------------------ jobs
    def run(self, jobs: list, reduce=None) -> list:
        """An Outcome per job, in order; with ``reduce``, ``reduce(i, outcome)`` of each
        instead, called as job i finishes (in any order)."""
        ray = _ray()
        tasks = deque((j, s) for j, job in enumerate(jobs)
                      for s in range(len(self._splits[job.split][0])))
        parts = [[None] * len(self._splits[job.split][0]) for job in jobs]
        left = [len(p) for p in parts]
        outcomes: list = [None] * len(jobs)
        load = [0] * len(self.workers)
        pending: dict = {}
        while tasks or pending:
            while tasks:
                w = min(range(len(self.workers)), key=load.__getitem__)
                if load[w] >= IN_FLIGHT:
                    break
                j, s = tasks.popleft()
                job = jobs[j]
                refs, _, stream = self._splits[job.split]
                ref = self.workers[w].run.remote([self._model_ref], job.variant, job.memo,
                                                 f"{job.split}/{s}", refs[s], stream, self.keep)
                pending[ref] = (j, s, w)
                load[w] += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                j, s, w = pending.pop(ref)
                load[w] -= 1
                parts[j][s] = self._get(ref, w, "run")
                left[j] -= 1
                if left[j] == 0:
                    outcome = self._join(self._splits[jobs[j].split][1], parts[j])
                    outcomes[j] = outcome if reduce is None else reduce(j, outcome)
                    parts[j] = None
        return outcomes

    @staticmethod
    def _join(axes, parts) -> Outcome:
        from .stats import ReuseStats

        if len(parts) == 1:
            return Outcome(*parts[0])
        outputs = []
        for i, pieces in enumerate(zip(*(p[0] for p in parts))):
            outputs.append(None if pieces[0] is None else np.concatenate(pieces, axis=axes[i]))
        stats = ReuseStats()
        for _, part_stats, _ in parts:
            stats.add(part_stats)
        return Outcome(outputs, stats, None)

    def close(self) -> None:
        ray = _ray()
        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
        if self._owns_cluster:
            self.cluster.close()


_BATCH = ("batch", "n", "b", "bs")


def shard_split(info: dict, inputs, stream, count: int, keep) -> tuple[list, list]:
    """(shards, the axis of each output to join them along).

    A data set of sequences is cut into runs of whole sequences (outputs joined along
    their first axis, as :func:`memotvm.sequences.join_outputs` joins sequences).  One
    set of inputs is cut along its batch axis: the symbolic dimension every input
    shares, named like "batch" (or n, b, bs), that every output sent back has too;
    with a stream, not an output's first axis (calls are joined along it).  Where no
    such axis exists the split is one shard."""
    names = info["output_names"]
    if isinstance(inputs, list):
        count = min(count, len(inputs))
        bounds = np.linspace(0, len(inputs), count + 1).astype(int)
        return [inputs[a:b] for a, b in zip(bounds[:-1], bounds[1:])], [0] * len(names)
    symbol = _batch_symbol(info, inputs, stream, keep)
    if symbol is None or count < 2:
        return [inputs], [0] * len(names)
    in_axes = {n: info["input_types"][n][0].index(symbol) for n in inputs
               if symbol in (info["input_types"].get(n, (None,))[0] or [])}
    sizes = {np.shape(inputs[n])[a] for n, a in in_axes.items() if np.ndim(inputs[n]) > a}
    if len(sizes) != 1:
        return [inputs], [0] * len(names)
    size = sizes.pop()
    count = min(count, size)
    if count < 2:
        return [inputs], [0] * len(names)
    bounds = np.linspace(0, size, count + 1).astype(int)
    shards = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        shards.append({n: (np.take(np.asarray(v), np.arange(a, b), axis=in_axes[n]) if n in in_axes
                           else v) for n, v in inputs.items()})
    out_axes = [(info["output_types"].get(n, (None,))[0] or []).index(symbol)
                if symbol in (info["output_types"].get(n, (None,))[0] or []) else 0 for n in names]
    return shards, out_axes


def _batch_symbol(info, inputs, stream, keep):
    def symbols(types, name):
        dims = types.get(name, (None,))[0] or []
        return [d for d in dims if isinstance(d, str)]

    given = [n for n in inputs if n in info["input_types"]]
    if not given:
        return None
    shared = set(symbols(info["input_types"], given[0]))
    for n in given[1:]:
        shared &= set(symbols(info["input_types"], n))
    names = info["output_names"]
    kept = [n for i, n in enumerate(names) if keep is None or i in keep]
    candidates = []
    for symbol in sorted(shared):
        ok = True
        for n in kept:
            dims = symbols(info["output_types"], n)
            full = info["output_types"].get(n, (None,))[0] or []
            if dims.count(symbol) != 1 or (stream is not None and full.index(symbol) == 0):
                ok = False
        if all(symbols(info["input_types"], n).count(symbol) == 1 for n in given) and ok:
            candidates.append(symbol)
    # Only a symbol named as a batch: cutting a time axis would cut the recurrence.
    named = [s for s in candidates if s.lower() in _BATCH or "batch" in s.lower()]
    return named[0] if len(named) == 1 else None

"""Calibration, sweeps and validation on Ray (memotvm.cluster).

The slow tests start a real Ray cluster with ``--node-ip-address 127.0.0.1`` (which Ray
resolves to this machine's own address; every node is on this machine) -- a head without
CPUs and two worker nodes of one CPU each, every process in a session of its own that the
fixture stops -- and check that the results equal the single-machine run, that a worker killed
in the middle of a calibration is restarted and the result unchanged, and that a worker
that runs another TVM fails the run with an error naming it.  The fast ones use a local
Ray instance in this process's machine, or none.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from memotvm.calibrate import calibrate
from memotvm.errors import ClusterError, ConfigError

MODELS = os.path.join(os.path.dirname(__file__), "..", "memotvm", "models")
CO2 = os.path.join(MODELS, "co2_lstm.onnx")
DIGITS = os.path.join(MODELS, "digits_bigru.onnx")
START_TIMEOUT_S = 90


def split(name):
    inputs = dict(np.load(os.path.join(MODELS, f"{name}_calib_inputs.npz")))
    labels = np.load(os.path.join(MODELS, f"{name}_calib_labels.npz"))
    return inputs, labels[labels.files[0]]


def small_co2(n=60):
    inputs, labels = split("co2_lstm")
    return {"x": inputs["x"][:, :n]}, labels[:n]


CO2_ARGS = dict(max_loss=0.01, predictors=("bnn", "lowrank:4"), grid=(0, 0.01, 0.05, 0.1, 0.2),
                progress=False)


# ---------------------------------------------------------------- no Ray at all
def test_without_ray_cluster_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    inputs, labels = small_co2()
    with pytest.raises(ConfigError, match=r"pip install 'memotvm\[cluster\]'"):
        calibrate(CO2, inputs, labels, "mse", cluster="local", **CO2_ARGS)


def test_workers_without_a_cluster_and_bad_worker_counts_are_refused():
    from memotvm.cluster import Cluster

    inputs, labels = small_co2()
    with pytest.raises(ConfigError, match="workers are for a cluster"):
        calibrate(CO2, inputs, labels, "mse", workers=2, **CO2_ARGS)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="workers must be a positive whole number"):
            Cluster("local", bad)
        with pytest.raises(ConfigError, match="cpus_per_worker must be a positive whole number"):
            Cluster("local", 1, cpus_per_worker=bad)


def test_cli_cluster_options(tmp_path, capsys, monkeypatch):
    from memotvm.cli import main

    inputs, labels = small_co2()
    np.savez(tmp_path / "x.npz", **inputs)
    np.savez(tmp_path / "y.npz", labels=labels)
    common = ["calibrate", CO2, "--inputs", str(tmp_path / "x.npz"), "--labels",
              str(tmp_path / "y.npz"), "--metric", "mse", "--quiet", "--out", str(tmp_path / "c.json")]
    for option in (["--workers", "2"], ["--cpus-per-worker", "2"]):
        assert main(common + option) != 0
        assert "--workers and --cpus-per-worker need --cluster" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(common + ["--cluster", "local"]) != 0
    assert "pip install 'memotvm[cluster]'" in capsys.readouterr().err


@pytest.mark.parametrize("name, predictor", [
    pytest.param("digits_bigru", "bnn", marks=pytest.mark.slow), ("digits_bigru", "delta"),
    ("pydoc_charlstm", "bnn"), pytest.param("co2_lstm", "lowrank:4", marks=pytest.mark.slow)])
def test_shards_joined_equal_the_whole_batch_bit_for_bit(name, predictor):
    """What makes cluster results equal to one machine's: each batch element is computed
    on its own, so outputs of shards joined are the whole batch's, and counts add up."""
    from memotvm.cluster import shard_split
    from memotvm.evaluation import Job, LocalRunner, Variant
    from memotvm.frontend import load_model
    from memotvm.passes import MemoConfig
    from memotvm.stats import ReuseStats

    inputs, _ = split(name)
    runner = LocalRunner(load_model(os.path.join(MODELS, f"{name}.onnx")))
    plain = runner.model()
    info = {"input_names": plain.input_names, "input_types": plain.input_types,
            "output_names": plain.output_names, "output_types": plain.output_types}
    shards, axes = shard_split(info, inputs, None, 3, None)
    assert len(shards) == 3
    runner.add_split("whole", inputs)
    for i, shard in enumerate(shards):
        runner.add_split(f"shard {i}", shard)
    memo = MemoConfig(predictor=predictor, threshold=0.05 if predictor == "delta" else 0.3)
    job = dict(variant=Variant.tunable(predictor), memo=memo)
    whole, *parts = runner.run([Job("whole", **job)] + [Job(f"shard {i}", **job) for i in range(3)])
    for k, out in enumerate(whole.outputs):
        np.testing.assert_array_equal(np.concatenate([p.outputs[k] for p in parts], axis=axes[k]), out)
    assert whole.stats.reuse > 0.05
    total = ReuseStats()
    for part in parts:
        total.add(part.stats)
    assert total.to_dict() == whole.stats.to_dict()


def test_an_unreachable_cluster_is_an_error_at_once():
    pytest.importorskip("ray")
    inputs, labels = small_co2()
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:\d+'"):
        calibrate(CO2, inputs, labels, "mse", cluster=f"127.0.0.1:{_free_port()}", **CO2_ARGS)
    assert time.monotonic() - t0 < 30


def test_shards_cut_whole_batch_elements_or_sequences_and_never_time():
    from memotvm.cluster import shard_split

    info = {"input_names": ["x"], "input_types": {"x": (["seq", "batch", 8], "float32")},
            "output_names": ["y"], "output_types": {"y": (["seq", "batch", 3], "float32")}}
    x = np.arange(5 * 7 * 8, dtype=np.float32).reshape(5, 7, 8)
    shards, axes = shard_split(info, {"x": x}, None, 3, None)
    assert [s["x"].shape for s in shards] == [(5, 2, 8), (5, 2, 8), (5, 3, 8)] and axes == [1]
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards], axis=1), x)
    assert len(shard_split(info, {"x": x[:, :1]}, None, 3, None)[0]) == 1
    # A time axis is never cut: without a batch-named symbol, one shard.
    timed = {**info, "input_types": {"x": (["seq", 1, 8], "float32")},
             "output_types": {"y": (["seq", 1, 3], "float32")}}
    assert len(shard_split(timed, {"x": x[:, :1]}, None, 3, None)[0]) == 1
    # An output without the batch axis cannot be joined: one shard.
    pooled = {**info, "output_types": {"y": ([3], "float32")}}
    assert len(shard_split(pooled, {"x": x}, None, 3, None)[0]) == 1
    # A stream joins calls along the first axis: batch first cannot be cut.
    first = {**info, "input_types": {"x": (["batch", "seq", 8], "float32")},
             "output_types": {"y": (["batch", "seq", 3], "float32")}}
    assert len(shard_split(first, {"x": x}, None, 2, None)[0]) == 2
    assert len(shard_split(first, {"x": x}, object(), 2, None)[0]) == 1
    sequences = [{"x": x[:, i:i + 1]} for i in range(5)]
    shards, _ = shard_split(info, sequences, None, 2, None)
    assert [len(s) for s in shards] == [2, 3]


# ---------------------------------------------------------------- local Ray
@pytest.mark.slow  # (starts a local Ray cluster: 40 s)
def test_calibration_on_local_ray_workers_equals_the_single_machine_run():
    inputs, labels = small_co2()
    alone = calibrate(CO2, inputs, labels, "mse", **CO2_ARGS)
    on_ray = calibrate(CO2, inputs, labels, "mse", cluster="local", workers=2, **CO2_ARGS)
    assert on_ray.to_json() == alone.to_json()
    assert on_ray.evaluations == alone.evaluations


@pytest.mark.slow
def test_a_worker_of_two_cpus_gives_the_same_calibration():
    from memotvm.cluster import Cluster

    inputs, labels = small_co2()
    alone = calibrate(CO2, inputs, labels, "mse", **CO2_ARGS)
    # One worker of two CPUs (its calls on two threads): the same result.
    with Cluster("local", cpus_per_worker=2) as cluster:
        assert cluster.workers == max(1, cluster.cpus // 2)
        assert calibrate(CO2, inputs, labels, "mse", cluster=cluster, **CO2_ARGS).to_json() == alone.to_json()
        too_many = cluster.cpus // 2 + 1
        with pytest.raises(ConfigError, match=rf"{too_many} worker\(s\) of 2 CPU\(s\) asked for"):
            calibrate(CO2, inputs, labels, "mse", cluster=cluster, workers=too_many, **CO2_ARGS)


# ---------------------------------------------------------------- a real cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """A head (no CPUs) and worker nodes on 127.0.0.1, each ``ray start --block`` in a
    process session of its own, stopped by ``stop``."""

    def __init__(self, workers=2, worker_env=None):
        self.temp = tempfile.mkdtemp(prefix="mtray", dir="/tmp")  # short: Unix socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs = []
        # Token authentication off: every process of the test cluster is on 127.0.0.1, and
        # its nodes would otherwise read a token another Ray left in ~/.ray.
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self._start(["--head", "--port", str(self.port), "--num-cpus", "0",
                     "--include-dashboard", "false", "--disable-usage-stats",
                     "--temp-dir", self.temp], env)
        self._wait(lambda: _connectable(self.port), "the head")
        self.workers, self.worker_env = workers, {**env, **(worker_env or {})}

    def start_workers(self):
        """Start the worker nodes one after another (nodes starting together on one
        host can time out registering), each waited for until its CPU is in the
        cluster."""
        import ray

        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            for n in range(1, self.workers + 1):
                self._start(["--address", self.address, "--num-cpus", "1"], self.worker_env)
                self._wait(lambda: ray.cluster_resources().get("CPU", 0) >= n, f"worker node {n}")
        finally:
            ray.shutdown()

    def _start(self, args, env):
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
               "--node-ip-address", "127.0.0.1", *args]
        log = open(os.path.join(self.temp, f"node{len(self.procs)}.log"), "wb")
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        log.close()

    def _wait(self, ready, what):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = ""
                for i in range(len(self.procs)):
                    with open(os.path.join(self.temp, f"node{i}.log"), errors="replace") as f:
                        logs += f"\n--- node {i} (exit {self.procs[i].poll()}):\n" + f.read()[-1500:]
                self.stop()
                pytest.fail(f"the test's Ray cluster did not start ({what}){logs}")
            time.sleep(0.2)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def _connectable(port) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module", autouse=True)
def no_token_auth():
    """This process runs Ray without token authentication, as the test clusters' nodes
    do: set before any Ray starts here, since a Ray started with a token keeps using it
    in this process (its actors on a cluster without one then die unscheduled)."""
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    cluster = LocalRayCluster(workers=2)
    try:
        cluster.start_workers()
        yield cluster
    finally:
        cluster.stop()


def digits_calibration(**kw):
    inputs, labels = split("digits_bigru")
    return calibrate(DIGITS, inputs, labels, "accuracy", max_loss=0.01, predictors=("bnn", "delta"),
                     grid=(0, 0.01, 0.05, 0.1, 0.2, 0.3), progress=False, **kw)


@pytest.mark.slow
def test_calibration_sweep_and_validation_on_a_cluster_equal_one_machine(ray_cluster):
    from memotvm.sweep import sweep
    from memotvm.validate import validate

    alone = digits_calibration()
    for workers in (1, 2):
        assert digits_calibration(cluster=ray_cluster.address, workers=workers).to_json() == alone.to_json()
    inputs, labels = split("digits_bigru")
    kw = dict(labels=labels, metric="accuracy", predictors=("bnn", "delta"), progress=False)
    assert sweep(DIGITS, inputs, [0.1, 0.3], cluster=ray_cluster.address, **kw) == \
        sweep(DIGITS, inputs, [0.1, 0.3], **kw)
    reports = [validate(DIGITS, inputs, alone.config, labels=labels, metric="accuracy", **c).to_dict()
               for c in ({}, {"cluster": ray_cluster.address})]
    for report in reports:
        report.pop("timings_s")
    assert reports[0] == reports[1]


@pytest.mark.slow
def test_a_worker_killed_during_calibration_is_restarted_and_the_result_unchanged(ray_cluster):
    import psutil

    alone = digits_calibration()
    killed = []

    def kill_a_running_worker():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                title = " ".join(proc.info["cmdline"] or [])
                if title.startswith("ray::ClusterWorker.run"):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_running_worker, daemon=True)
    killer.start()
    result = digits_calibration(cluster=ray_cluster.address, workers=2)
    killer.join()
    assert killed, "no worker was seen running a task"
    assert result.to_json() == alone.to_json()


@pytest.mark.slow
def test_a_worker_with_another_tvm_fails_the_run_naming_it(tmp_path):
    pytest.importorskip("ray")
    # The worker node sees an apache-tvm 0.0.1 installed ahead of the real one.
    info = tmp_path / "apache_tvm-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: apache-tvm\nVersion: 0.0.1\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cluster = LocalRayCluster(workers=1, worker_env={"PYTHONPATH": path})
    try:
        cluster.start_workers()
        inputs, labels = small_co2()
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"worker 0 \(pid \d+ on .*\) runs apache-tvm 0\.0\.1"):
            calibrate(CO2, inputs, labels, "mse", cluster=cluster.address, **CO2_ARGS)
        assert time.monotonic() - t0 < 120
    finally:
        cluster.stop()


@pytest.mark.slow
def test_streams_on_a_cluster_equal_one_machine(ray_cluster):
    import memotvm
    from memotvm.streaming import StreamSpec
    from memotvm.sweep import sweep
    from memotvm.validate import validate
    from test_streaming import smooth, stateful_layer

    model = stateful_layer("GRU")
    x = smooth(24, 4, 10)
    spec = StreamSpec(chunk=3, state={"initial_h": "Y_h"})
    reports = [validate(model, {"X": x}, 0.3, stream=spec, **c).to_dict()
               for c in ({}, {"cluster": ray_cluster.address})]
    for report in reports:
        report.pop("timings_s")
    assert reports[0] == reports[1] and reports[1]["stream"]["calls"] == 8
    kw = dict(predictors=["bnn"], stream=spec, progress=False)
    assert sweep(model, {"X": x}, [0.0, 0.3], cluster=ray_cluster.address, **kw) == \
        sweep(model, {"X": x}, [0.0, 0.3], **kw)
    labels = memotvm.compile(model).run({"X": x, "initial_h": np.zeros((1, 4, 24), np.float32)})[0]
    runs = [calibrate(model, {"X": x[:, :2]}, labels[:, :, :2], "mse", {"X": x[:, 2:]},
                      labels[:, :, 2:], max_loss=0.05, grid=[0.0, 0.1, 0.3], stream=spec,
                      progress=False, **c) for c in ({}, {"cluster": ray_cluster.address})]
    assert runs[0].to_json() == runs[1].to_json()

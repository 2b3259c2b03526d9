"""Running and timing on a device over TVM's RPC (memotvm.remote): a real
``tvm.exec.rpc_server`` (and tracker) on 127.0.0.1, started and stopped here."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import memotvm
from memotvm.cli import main as cli_main
from memotvm.errors import ConfigError
from memotvm.remote import remote_model, remote_time

pytest.importorskip("cloudpickle", reason="TVM's RPC server needs cloudpickle (the rpc extra)")
pytest.importorskip("psutil", reason="TVM's RPC server needs psutil (the rpc extra)")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the rpc extra)")

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")
DENOISER = os.path.join(FIELD, "gru_denoiser.onnx")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process(*args, ready_port=None, python=sys.executable, wait=60):
    # (a session of its own: the server's workers, and qemu behind the arm64 Python's
    # wrapper, are stopped with it, not left running)
    proc = subprocess.Popen([python, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + wait
        while ready_port is not None and time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", ready_port)) == 0:
                    break
            time.sleep(0.2)
        time.sleep(0.5)
        yield proc
    finally:
        stop_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        stop_group(proc, signal.SIGKILL)


def stop_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with process("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                 "--port-end", str(port + 1), ready_port=port):
        yield f"127.0.0.1:{port}"


def denoiser_feeds():
    data = np.load(os.path.join(FIELD, "inputs.npz"))
    return {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("gru_denoiser/")}


def test_remote_model_gives_the_hosts_outputs_counts_and_timing(server):
    feeds = denoiser_feeds()
    model = memotvm.compile(DENOISER, memo=0.3)
    want = model.run(feeds)
    device = remote_model(model, rpc=server)
    for got, expected in zip(device.run(feeds), want):
        np.testing.assert_array_equal(got, expected)
    assert device.last_stats.per_gate == model.last_stats.per_gate
    times = remote_time(device, feeds, number=2, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)


@pytest.mark.slow
def test_cli_bench_and_validate_over_rpc(server, tmp_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **denoiser_feeds())
    assert cli_main(["bench", DENOISER, "--inputs", str(inputs), "--rpc", server,
                     "--thresholds", "0.3", "--rounds", "5"]) == 0
    out = capsys.readouterr().out
    assert f"on {server}" in out and "memo@0.3" in out
    assert cli_main(["validate", DENOISER, "--inputs", str(inputs), "--threshold", "0.3",
                     "--rpc", server]) == 0
    assert "reuse:" in capsys.readouterr().out
    assert cli_main(["bench", DENOISER, "--inputs", str(inputs), "--rpc", "127.0.0.1:1"]) == 2
    assert "cannot reach the RPC server" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="HOST:PORT"):
        remote_model(memotvm.compile(DENOISER), rpc="nowhere")


@pytest.mark.slow
def test_a_device_from_the_tracker(tmp_path):
    tracker_port, server_port = free_port(), free_port()
    with process("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
                 "--port-end", str(tracker_port + 1), ready_port=tracker_port):
        with process("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                     "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{tracker_port}",
                     "--key", "testbox", ready_port=server_port):
            time.sleep(2)  # the server registers with the tracker
            feeds = denoiser_feeds()
            model = memotvm.compile(DENOISER, memo=0.3)
            device = remote_model(model, tracker=f"127.0.0.1:{tracker_port}", key="testbox")
            for got, expected in zip(device.run(feeds), model.run(feeds)):
                np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_an_aarch64_artifact_runs_under_emulation_through_the_rpc_server():
    """An arm64 "device" here: qemu-user and Debian's arm64 Python with the aarch64 TVM
    wheel (scripts/install_arm64_emulation.sh, apt as root) run TVM's RPC server; the
    denoiser compiled for aarch64 and linked by Debian's cross toolchain runs there with
    the host build's outputs (within rounding: 4 float lanes there, the host's here)
    and the same decisions, in one call and in a session, and is timed there."""
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dest = os.environ.get("MEMOTVM_ARM64") or os.path.expanduser("~/.cache/memotvm/arm64")
    python = os.path.join(dest, "bin", "python3")
    needs_root = shutil.which("aarch64-linux-gnu-gcc") is None or not os.path.exists(python)
    if needs_root and os.geteuid() != 0:
        pytest.skip("the cross toolchain or the arm64 emulation is not installed, and "
                    "installing them (apt) needs root")
    for script, args in (("install_cross_toolchain.sh", []), ("install_arm64_emulation.sh", [dest])):
        done = subprocess.run(["bash", os.path.join(root, "scripts", script), *args],
                              capture_output=True, text=True, timeout=1200,
                              env=dict(os.environ, PYTHON=sys.executable))
        if done.returncode != 0:
            pytest.skip(f"scripts/{script} could not install what it needs here: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    feeds = denoiser_feeds()
    host = memotvm.compile(DENOISER, memo=0.3)
    want = host.run(feeds)
    arm = memotvm.compile(DENOISER, memo=0.3, target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon")
    port = free_port()
    # (TVM's import alone takes about 15 s under emulation)
    with process("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                 "--port-end", str(port + 1), ready_port=port, python=python, wait=300):
        device = remote_model(arm, rpc=f"127.0.0.1:{port}", cc="aarch64-linux-gnu-gcc")
        for got, expected in zip(device.run(feeds), want):
            np.testing.assert_allclose(got, expected, atol=1e-5)
        assert device.last_stats.per_gate == host.last_stats.per_gate
        session, local = device.session(), host.session()
        for chunk in range(2):
            for got, expected in zip(session.run(feeds_without_state(feeds)),
                                     local.run(feeds_without_state(feeds))):
                np.testing.assert_allclose(got, expected, atol=1e-5)
        assert session.stats.per_gate == local.stats.per_gate
        times = remote_time(device, feeds, number=1, repeat=2)
        assert len(times) == 2 and all(t > 0 for t in times)


def feeds_without_state(feeds):
    """The denoiser's inputs but its recurrent state (a session feeds that)."""
    return {k: v for k, v in feeds.items() if k != "h"}

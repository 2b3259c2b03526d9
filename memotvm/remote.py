"""Running and timing compiled models on another machine through TVM's RPC.

A device runs ``python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`` (it needs the
TVM runtime, numpy, and TVM's RPC dependencies: ``pip install 'memotvm[rpc]'`` on the
host, ``cloudpickle`` and ``psutil`` on the device), or registers with a tracker
(``python -m tvm.exec.rpc_tracker``, then servers with ``--tracker HOST:PORT --key
KEY``).  :func:`remote_model` exports a compiled model, uploads the library, and returns
a model whose calls run on the device (``run``, ``last_stats``, sessions, errors as on
the host); :func:`remote_time` times one call there with TVM's ``time_evaluator``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .errors import ConfigError


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"an RPC address is HOST:PORT, got {text!r}")
    return host, int(port)


def connect(rpc=None, tracker=None, key=None, timeout: int = 60):
    """A TVM RPC session: to the server at ``rpc`` ("HOST:PORT"), or to one that
    ``tracker`` ("HOST:PORT") hands out for ``key``."""
    try:
        import tvm.rpc
    except ImportError as err:  # pragma: no cover - TVM ships its RPC client
        raise ConfigError(f"TVM's RPC client is not available: {err}") from err
    try:
        if tracker is not None:
            if not key:
                raise ConfigError("--tracker needs --key (the device kind the tracker hands out)")
            host, port = parse_address(tracker)
            return tvm.rpc.connect_tracker(host, port).request(key, session_timeout=timeout)
        host, port = parse_address(rpc)
        return tvm.rpc.connect(host, port, session_timeout=timeout)
    except ConfigError:
        raise
    except Exception as err:  # TVM raises its own types
        where = tracker or rpc
        raise ConfigError(f"cannot reach the RPC {'tracker' if tracker else 'server'} at "
                          f"{where}: {str(err).strip().splitlines()[-1]}") from None


class _RemoteCall:
    """The compiled function on the device: arguments uploaded, results fetched."""

    def __init__(self, session, library_path):
        from tvm import relax

        session.upload(library_path)
        self.session, self.device = session, session.cpu()
        self.vm = relax.VirtualMachine(session.load_module(os.path.basename(library_path)), self.device)

    def tensors(self, arrays):
        import tvm

        return [tvm.runtime.tensor(np.require(np.asarray(a), requirements="C"), self.device)
                for a in arrays]

    def __call__(self, arrays, keep=0):  # (every result comes back as numpy)
        self.vm.set_input("main", *self.tensors(arrays))
        self.vm.invoke_stateful("main")
        out = self.vm.get_outputs("main")
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [np.array(o.numpy()) for o in out]

    def time(self, arrays, number: int, repeat: int) -> list:
        """Seconds per call of each repeat, timed on the device."""
        self.vm.set_input("main", *self.tensors(arrays))
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)
        return list(timer("main").results)


def remote_model(model, rpc=None, tracker=None, key=None, cc=None):
    """``model`` (a CompiledModel for the device's target) running on the device."""
    from .runtime import CompiledModel

    session = connect(rpc, tracker, key)
    # (the library is uploaded: the local copy is not kept)
    with tempfile.TemporaryDirectory(prefix="memotvm-rpc-") as folder:
        library = os.path.join(folder, "model.so")
        model.export(library, cc=cc)
        call = _RemoteCall(session, library)
    if model.threads is not None:
        # The device's pool for the server's thread, before its first call; the device's
        # CPUs are taken to be numbered from 0 (share-all mode: no worker is pinned).
        configure = session.get_function("runtime.config_threadpool")
        configure(-3, model.threads, [str(c) for c in range(model.threads)])
    # (A compiled model has every attribute the constructor reads from an import.)
    remote = CompiledModel(model, lambda: call, target="cpu", memo=model.memo)
    remote.tunable = model.tunable
    remote.remote_call = call
    return remote


def remote_time(remote, feeds: dict, number: int = 10, repeat: int = 5) -> list:
    """Seconds per call of ``remote`` (from remote_model) on ``feeds``, each repeat's."""
    arrays = remote.vm_arguments(remote.check_inputs(feeds))
    return remote.remote_call.time(arrays, number, repeat)

"""Logging: memotvm's messages and what TVM prints while it compiles.

memotvm logs under the ``memotvm`` logger and never prints warnings of its own to the
terminal behind the user's back.  TVM's Python importer emits warnings and prints to
stdout, and its C++ side writes warnings ("Unknown pragma", "Scope Saving", ...) straight
to the process's standard error; :func:`captured_tvm_output` collects both around
compilation and logs them, line by line, at DEBUG under ``memotvm.tvm``.  To see them::

    import logging
    logging.basicConfig()
    logging.getLogger("memotvm.tvm").setLevel(logging.DEBUG)

or pass ``--verbose`` to the command line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings

logger = logging.getLogger("memotvm")
tvm_logger = logging.getLogger("memotvm.tvm")

# Standard error, sys.stdout and the warnings filters are one per process: a capture in
# one thread must not be undone by another's (contextlib.redirect_stdout in two threads
# compiling at once left sys.stdout a dead buffer, and every later print vanished).  The
# first capture to start redirects them; nested and concurrent ones share the
# redirection, and the last one to end restores them and logs what all of them caught.
_lock = threading.Lock()
_depth = 0
_shared = None  # while any capture runs: what _start_capture saved and collects


def _start_capture():
    global _depth, _shared
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        shared = {"stdout": sys.stdout, "out": io.StringIO(), "fd": None, "file": None}
        try:
            sys.stderr.flush()
            shared["file"] = tempfile.TemporaryFile(mode="w+b")
            shared["fd"] = os.dup(2)
            os.dup2(shared["file"].fileno(), 2)
        except (OSError, ValueError):  # no file descriptor 2 (an embedded interpreter)
            shared["fd"] = shared["file"] = None
        sys.stdout = shared["out"]
        shared["warnings"] = warnings.catch_warnings(record=True)
        shared["caught"] = shared["warnings"].__enter__()
        warnings.simplefilter("always")
        _shared = shared


def _stop_capture():
    """(warnings, printed text) caught since the first capture started, where this is
    the last one to end; else None."""
    global _depth, _shared
    with _lock:
        _depth -= 1
        if _depth > 0:
            return None
        shared, _shared = _shared, None
        shared["warnings"].__exit__(None, None, None)
        sys.stdout = shared["stdout"]
        native = ""
        if shared["fd"] is not None:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(shared["fd"], 2)
            os.close(shared["fd"])
            shared["file"].seek(0)
            native = shared["file"].read().decode(errors="replace")
            shared["file"].close()
        return shared["caught"], shared["out"].getvalue() + native


@contextlib.contextmanager
def captured_tvm_output(stage: str):
    """Run the block with TVM's warnings, stdout and C++ stderr output captured, then log
    them at DEBUG under ``memotvm.tvm`` (prefixed with ``stage``; while captures overlap,
    in several threads, the last to end logs what all of them caught).  What the block
    raises propagates unchanged."""
    _start_capture()
    try:
        yield
    finally:
        caught = _stop_capture()
        if caught is not None and tvm_logger.isEnabledFor(logging.DEBUG):
            for w in caught[0]:
                tvm_logger.debug("%s: %s: %s", stage, w.category.__name__, w.message)
            for line in caught[1].splitlines():
                if line.strip():
                    tvm_logger.debug("%s: %s", stage, line.rstrip())

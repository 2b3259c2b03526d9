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

# Standard error is one per process: a capture in one thread must not be undone by
# another's.  The first capture to start owns the redirection; nested and concurrent
# ones share it.
_lock = threading.Lock()
_depth = 0
_saved_fd = None
_capture_file = None


def _start_fd_capture():
    global _depth, _saved_fd, _capture_file
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        try:
            sys.stderr.flush()
            _capture_file = tempfile.TemporaryFile(mode="w+b")
            _saved_fd = os.dup(2)
            os.dup2(_capture_file.fileno(), 2)
        except (OSError, ValueError):  # no file descriptor 2 (an embedded interpreter)
            _saved_fd = _capture_file = None


def _stop_fd_capture() -> str:
    global _depth, _saved_fd, _capture_file
    with _lock:
        _depth -= 1
        if _depth > 0 or _saved_fd is None:
            return ""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(_saved_fd, 2)
        os.close(_saved_fd)
        _capture_file.seek(0)
        text = _capture_file.read().decode(errors="replace")
        _capture_file.close()
        _saved_fd = _capture_file = None
        return text


@contextlib.contextmanager
def captured_tvm_output(stage: str):
    """Run the block with TVM's warnings, stdout and C++ stderr output captured, then log
    them at DEBUG under ``memotvm.tvm`` (prefixed with ``stage``).  What the block raises
    propagates unchanged."""
    out = io.StringIO()
    _start_fd_capture()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            yield
    finally:
        native = _stop_fd_capture()
        if tvm_logger.isEnabledFor(logging.DEBUG):
            for w in caught:
                tvm_logger.debug("%s: %s: %s", stage, w.category.__name__, w.message)
            for line in (out.getvalue() + native).splitlines():
                if line.strip():
                    tvm_logger.debug("%s: %s", stage, line.rstrip())

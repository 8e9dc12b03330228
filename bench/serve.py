"""`python -m bench.serve ARGS...`: `deepfake-serve ARGS...` whose Python threads carry their names
into the OS (prctl PR_SET_NAME, the name /proc/PID/task/TID/comm shows), so the capacity benchmark
can split the server's CPU by thread: the event loop (ICE, DTLS, SRTP, RTP depacketising, the
jitter buffer, the data channel), aiortc's `video-decoder` threads, the `face-stage` pool and the
`inference-engine` thread. Python 3.11 leaves every thread named after the process.

Threads FFmpeg or onnxruntime start inherit the name of the thread that starts them: FFmpeg's
decoder threads are named after aiortc's decoder thread; onnxruntime's pool, created while the
bundle loads on the main thread, keeps the process's name (told from the main thread by its id).
With `--ingest-workers N` the workers are started as `python -m bench.serve` too (through
DEEPFAKE_WORKER_MODULE), named the same way. Only the benchmark runs the server this way; the service itself is unchanged."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import sys
import threading
from typing import Any

PR_SET_NAME = 15
WORKER_ENV = "DEEPFAKE_WORKER_MODULE"  # read by stream_server.shell.workers
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named_bootstrap(self: threading.Thread) -> Any:
    try:
        _libc.prctl(PR_SET_NAME, self.name.encode("utf-8", "replace")[:15], 0, 0, 0)
    except Exception:  # a name is a convenience; never stop a thread for it
        pass
    return _original(self)


threading.Thread._bootstrap_inner = _named_bootstrap  # type: ignore[attr-defined]

if __name__ == "__main__":
    if os.environ.get(WORKER_ENV) == "bench.serve":  # an ingest worker of the server below
        runpy.run_module("stream_server.shell.workers", run_name="__main__", alter_sys=True)
    else:
        # Exactly `python -m stream_server ARGS...` (the command, not the shell's modules:
        # bench/ imports only the core), its ingest workers (--ingest-workers) started as
        # `python -m bench.serve` too, so that their threads are named as well.
        os.environ[WORKER_ENV] = "bench.serve"
        sys.argv[0] = "stream_server"
        runpy.run_module("stream_server", run_name="__main__", alter_sys=True)

"""A real server process started for a test on loopback (mosquitto, coturn): its output collected
line by line, ready when its TCP port accepts, stopped with terminate then kill."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.timing import deadline


class LoopbackDaemon:
    """Subclasses set `name`, `port` and `workdir`, and call `_launch(args)` from `start()`."""

    name = "daemon"

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def _launch(self, args: list[str], within: float = 15) -> None:
        """Start `args` in `workdir` and wait until 127.0.0.1:`port` accepts TCP connections;
        on failure stop it and raise with the end of its log."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.workdir
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        end = deadline(within)
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} did not start within {within:g} s:\n"
                        + "\n".join(self.lines[-30:])
                    ) from None
                time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log_has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

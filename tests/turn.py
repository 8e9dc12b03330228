"""Start and stop a real TURN server (Debian's coturn, `turnserver`) on loopback for a test:
long-term credentials (one user and password), relaying to loopback peers, no TLS/DTLS listeners,
no CLI, its log collected. `.ci/run` installs it (scripts/setup_env.sh full)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.daemon import LoopbackDaemon

TURNSERVER = "turnserver"


def require_coturn() -> str:
    path = shutil.which(TURNSERVER) or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("coturn is not installed; .ci/run must install it (apt-get install coturn)")
        pytest.skip("coturn is not installed (apt-get install coturn); CI installs it")
    return path


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


class TurnServer(LoopbackDaemon):
    """coturn on 127.0.0.1:`port`, user `user` with `password` in realm `realm`.

    `allocations()` counts the relay allocations coturn logged (a session really relayed)."""

    name = "coturn"

    def __init__(
        self,
        workdir: Path,
        user: str = "camera-user",
        password: str = "turn-s3cret",
        realm: str = "camera.test",
    ) -> None:
        super().__init__(workdir, free_udp_tcp_port())
        self.user, self.password, self.realm = user, password, realm

    def url(self, transport: str = "udp") -> str:
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def ice_server(self, transport: str = "udp") -> str:
        """The --ice-servers entry for this server: turn:USER:PASSWORD@127.0.0.1:PORT."""
        return f"turn:{self.user}:{self.password}@127.0.0.1:{self.port}?transport={transport}"

    def start(self) -> TurnServer:
        exe = require_coturn()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # stdbuf: coturn's stdout log is block-buffered into a pipe; line-buffer it.
        stdbuf = shutil.which("stdbuf")
        args = [
            *([stdbuf, "-oL"] if stdbuf else []),
            exe,
            "-n",  # no configuration file (not /etc/turnserver.conf): all is below
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}",
            "--allow-loopback-peers",  # the service under test listens on 127.0.0.1
            "--lt-cred-mech",
            f"--user={self.user}:{self.password}",
            f"--realm={self.realm}",
            "--fingerprint",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-multicast-peers",
            "--min-port=49152",
            "--max-port=65535",
            f"--pidfile={self.workdir / 'turnserver.pid'}",
            f"--userdb={self.workdir / 'turndb.sqlite'}",
            "--log-file=stdout",
            "--simple-log",
            "--verbose",
        ]
        # Ready when its TCP listener accepts (it opens UDP and TCP listeners together).
        self._launch(args)
        return self

    def allocations(self) -> int:
        """Relay allocations coturn made for our user (its log lines 'realm <R> user <U>:
        incoming packet ALLOCATE processed, success')."""
        return sum(
            1
            for line in list(self.lines)
            if f"user <{self.user}>: incoming packet ALLOCATE processed, success" in line
        )

    def refusals(self) -> int:
        """Requests naming our user that coturn refused with 401 (a wrong password); the 401
        every client first gets, before it knows the realm and nonce, names no user."""
        return sum(
            1
            for line in list(self.lines)
            if f"user <{self.user}>: incoming packet message processed, error 401" in line
        )

    def __enter__(self) -> TurnServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

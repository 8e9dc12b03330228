"""A guard between FFmpeg and an RTSP camera, one per connection attempt.

FFmpeg's RTSP client has no option that bounds a reply: it allocates whatever `Content-Length`
a server names (a 1.5 GB one cost 300 MB of RSS per 300 MB sent) and follows `3xx` redirects
to any host. So FFmpeg never talks to the camera directly: it connects to a one-shot listener
on 127.0.0.1, and the relay connects to the ONE address that `resolve_checked` approved (no
second name lookup, so no DNS rebinding between check and connect), copies the bytes both
ways, and reads the camera's side the way FFmpeg's parser will (`ReplyGuard`). It cuts the
connection, and says why, when a reply head passes `MAX_HEAD` bytes, a body passes
`MAX_BODY` bytes, the camera redirects, or it describes a session without a video stream.
For rtsps:// the relay speaks TLS to the camera (unverified, as FFmpeg's default) and plain
RTSP to FFmpeg on loopback. Closing the relay ends FFmpeg's blocking reads at once (EOF), which
is how a camera stuck connecting is stopped at shutdown."""

from __future__ import annotations

import contextlib
import logging
import re
import selectors
import socket
import ssl
import threading

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # an RTSP reply head (status line and headers)
MAX_BODY = 64 * 1024  # an RTSP reply body (an SDP is a few hundred bytes; FFmpeg's cap is 16 KiB)
_INT = re.compile(rb"^\s*([+-]?\d+)")


class HostileReply(Exception):
    """The camera sent something the relay refuses; the message says what."""


def _c_int(raw: bytes) -> int:
    """`strtol` then a C `int`, as FFmpeg reads a Content-Length or a status code."""
    m = _INT.match(raw)
    if not m:
        return 0
    v = max(-(2**63), min(2**63 - 1, int(m.group(1))))
    return ((v + 2**31) % 2**32) - 2**31


class ReplyGuard:
    """An incremental reader of the camera-to-FFmpeg byte stream: interleaved `$` packets,
    RTSP message heads (lines up to an empty line) and bodies (`Content-Length` bytes). It
    follows FFmpeg's parser (`ff_rtsp_read_reply`): a `$` at the start of any line is an
    interleaved packet, `Content-Length:` is matched case-insensitively at the start of a
    header line and read with strtol into an int, the status code is the word after RTSP/."""

    def __init__(self, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self.max_head, self.max_body = max_head, max_body
        self.line = bytearray()
        self.head_lines = 0
        self.head_bytes = 0
        self.content_length = 0
        self.need = 0  # bytes still to pass through unparsed (a packet or a body)
        self.body: bytearray | None = None  # a body being collected (checked when complete)
        self.packet_head = bytearray()  # the 3 bytes after a `$`
        self.in_packet_head = False
        self.described = False  # a session description with a video stream went through

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.need:
                take = min(self.need, n - i)
                if self.body is not None:
                    self.body += data[i : i + take]
                self.need -= take
                i += take
                if not self.need and self.body is not None:
                    self._check_body(bytes(self.body))
                    self.body = None
                continue
            if self.in_packet_head:
                take = min(3 - len(self.packet_head), n - i)
                self.packet_head += data[i : i + take]
                i += take
                if len(self.packet_head) == 3:
                    size = int.from_bytes(self.packet_head[1:3], "big")
                    if size < 8:  # FFmpeg reads such a packet's payload as RTSP text
                        raise HostileReply(f"malformed interleaved packet ({size} bytes)")
                    self.in_packet_head, self.need = False, size
                continue
            if not self.line and data[i] == 0x24:  # `$` at a line start
                self.in_packet_head, self.packet_head = True, bytearray()
                i += 1
                continue
            end = data.find(b"\n", i)
            chunk = data[i : n if end < 0 else end]
            self.line += chunk
            self.head_bytes += len(chunk) + (end >= 0)
            if self.head_bytes > self.max_head:
                raise HostileReply(f"reply head larger than {self.max_head} bytes")
            if end < 0:
                return
            i = end + 1
            self._end_line(bytes(self.line).replace(b"\r", b""))
            self.line = bytearray()

    def _end_line(self, line: bytes) -> None:
        if line:
            if self.head_lines == 0:
                self._status_line(line)
            elif line[:15].lower() == b"content-length:":
                self.content_length = _c_int(line[15:])
            self.head_lines += 1
            return
        # the empty line ends the head
        length = self.content_length
        self.head_lines = self.head_bytes = self.content_length = 0
        if length > self.max_body:
            raise HostileReply(f"reply body of {length} bytes (more than {self.max_body})")
        if length > 0:
            self.need, self.body = length, bytearray()

    def _status_line(self, line: bytes) -> None:
        # In the data phase FFmpeg eats a message's first byte before parsing it: check both.
        for cand in (line, line[1:]):
            words = cand.split()
            if len(words) >= 2 and words[0].startswith(b"RTSP/"):
                code = _c_int(words[1])
                if 300 <= code < 400:
                    raise HostileReply(f"camera redirects elsewhere ({code}); not followed")

    def _check_body(self, body: bytes) -> None:
        text = body.replace(b"\r", b"")
        media = [ln for ln in text.split(b"\n") if ln.startswith(b"m=")]
        if media:
            if not any(ln.startswith(b"m=video") for ln in media):
                raise HostileReply("camera offers no video stream")
            self.described = True


class RtspRelay:
    """One FFmpeg connection relayed to one checked address (see the module docstring)."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        tls_host: str | None = None,
        timeout: float = 5.0,
        guard: ReplyGuard | None = None,
    ) -> None:
        self.address, self.upstream_port = address, port
        self.tls_host = tls_host
        self.timeout = timeout
        self.guard = guard or ReplyGuard()
        self.failure: str | None = None  # why the relay cut the connection, if it did
        self.connected = False  # the camera's TCP (and TLS) connection was made
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._client: socket.socket | None = None
        self._upstream: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name="rtsp-relay", daemon=True)

    @property
    def described(self) -> bool:
        return self.guard.described

    def start(self) -> RtspRelay:
        self.thread.start()
        return self

    def close(self) -> None:
        """Cut both sides now (from any thread): FFmpeg's pending read sees EOF."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for s in (self._client, self._upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        try:
            self._serve()
        except HostileReply as exc:
            self.failure = str(exc)
            log.info("camera %s:%d cut off: %s", self.address, self.upstream_port, exc)
        except (OSError, ssl.SSLError) as exc:
            log.debug("camera relay to %s ended: %s", self.address, type(exc).__name__)
        finally:
            self._stop.set()
            for s in (self._client, self._upstream, self.listener, self._wake_r, self._wake_w):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            if not sel.select(self.timeout) or self._stop.is_set():
                return  # FFmpeg never came (it failed or was stopped)
            client, _ = self.listener.accept()
            self._client = client
            self.listener.close()
            up = socket.create_connection((self.address, self.upstream_port), self.timeout)
            if self.tls_host is not None:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                up = ctx.wrap_socket(up, server_hostname=self.tls_host or None)
            self._upstream = up
            if self._stop.is_set():
                return
            self.connected = True
            up.settimeout(self.timeout)
            client.settimeout(self.timeout)
            sel.unregister(self.listener)
            sel.register(client, selectors.EVENT_READ, "client")
            sel.register(up, selectors.EVENT_READ, "up")
            while not self._stop.is_set():
                pending = isinstance(up, ssl.SSLSocket) and up.pending() > 0
                events = [(None, "up")] if pending else [(k.data, k.data) for k, _ in sel.select()]
                for _, side in events:
                    if side is None:  # woken by close()
                        return
                    if side == "client":
                        data = client.recv(65536)
                        if not data:
                            return
                        up.sendall(data)
                    else:
                        data = up.recv(65536)
                        if not data:
                            return
                        self.guard.feed(data)
                        client.sendall(data)
        finally:
            sel.close()

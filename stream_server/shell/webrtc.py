"""WebRTC ingest (aiortc): answer offers, read the remote video track (newest frame wins), send
score and status messages on the `scores` data channel."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
import uuid
from typing import Any, Protocol

import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream_server.core.messages import ScoreMessage, StatusMessage
from stream_server.core.metrics import Metrics
from stream_server.shell.ice import parse_ice_server
from stream_server.shell.service import Service
from stream_server.shell.settings import Settings

log = logging.getLogger(__name__)

SCORES_LABEL = "scores"


class OfferError(Exception):
    """A bad offer: the HTTP layer answers 400 with this message."""


# aioice's own lookup (all addresses but loopback), kept before any replacement below.
_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses
LOOPBACK = ("127.0.0.1", "::1")


def _offering(addrs: list[str]) -> Any:
    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addrs if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    return host_addresses


def configure_ice(settings: Settings) -> list[str] | None:
    """Which local addresses ICE offers. aioice has no option for it, so its address lookup is
    replaced (it is looked up at call time). `--ice-addresses` names them; by default all
    addresses but loopback, and when the host has no other address (a container with only
    `lo`), loopback, so that a browser on the same host still connects instead of getting an
    answer without a single candidate. Returns the addresses fixed here (None: aioice's own)."""
    if settings.ice_addresses:
        addrs = list(settings.ice_addresses)
    else:
        try:
            others = _AIOICE_HOST_ADDRESSES(use_ipv4=True, use_ipv6=True)
        except Exception:  # ifaddr failing leaves aioice's lookup to fail the same way
            log.debug("listing host addresses failed", exc_info=True)
            others = []
        if others:
            return None
        addrs = list(LOOPBACK)
        log.warning(
            "this host has no network address but loopback: WebRTC offers only %s, so only a "
            "browser on this host can connect (set --ice-addresses, or --ice-servers with a "
            "TURN server, for others)",
            ", ".join(addrs),
        )
    aioice.ice.get_host_addresses = _offering(addrs)
    return addrs


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    servers = [parse_ice_server(u) for u in settings.ice_servers]
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in servers
        ]
    )


NO_CANDIDATE = (
    "the server's answer carries no ICE candidate: it has no network address it can offer "
    "(set --ice-addresses to an address of the server, or --ice-servers with a TURN server)"
)


def has_candidate(sdp: str) -> bool:
    return any(line.startswith("a=candidate:") for line in sdp.replace("\r", "").split("\n"))


OFFER_WITHOUT_CANDIDATE = (
    "malformed offer: a media section lists no usable ICE candidate (send the offer once ICE "
    "gathering is complete: this server takes no trickled candidates)"
)


def _usable_candidate(c: Any) -> bool:
    import ipaddress

    if c.type not in ("host", "srflx", "prflx", "relay") or str(c.protocol).lower() not in (
        "udp",
        "tcp",
    ):
        return False
    if not (0 < int(c.port) < 65536 and c.ip):
        return False
    if str(c.ip).endswith(".local"):  # a browser's mDNS name for its host address
        return True
    try:
        ipaddress.ip_address(c.ip)
    except ValueError:
        return False
    return True


def section_without_candidate(sdp: str) -> bool:
    """Whether a media section of `sdp` lists no usable ICE candidate (none at all, or only
    cut or garbled `a=candidate` lines: an unknown type or transport, no port, no address)."""
    from aiortc.sdp import SessionDescription

    try:
        media = SessionDescription.parse(sdp).media
    except Exception:
        return True
    return any(not any(_usable_candidate(c) for c in m.ice_candidates) for m in media)


def check_offer(body: Any, max_sdp: int) -> RTCSessionDescription:
    if not isinstance(body, dict):
        raise OfferError("body must be a JSON object with sdp and type")
    sdp, typ = body.get("sdp"), body.get("type")
    if typ != "offer":
        raise OfferError('type must be "offer"')
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("sdp must be a non-empty string")
    if len(sdp.encode("utf-8", "replace")) > max_sdp:
        raise OfferError(f"sdp is larger than {max_sdp} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("sdp is not a session description (must start with v=0)")
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not any(line.startswith("m=video") for line in lines):
        raise OfferError("offer has no video track to analyse")
    check_bundle(lines)
    return RTCSessionDescription(sdp=sdp, type="offer")


def check_bundle(lines: list[str]) -> None:
    """Every mid a BUNDLE group names must be a media section's mid (aiortc fails later, with
    an AttributeError, when the first one is missing)."""
    mids = {line[6:].strip() for line in lines if line.startswith("a=mid:")}
    for line in lines:
        if line.startswith("a=group:BUNDLE"):
            for mid in line[len("a=group:BUNDLE") :].split():
                if mid not in mids:
                    raise OfferError(
                        f"malformed offer: BUNDLE group names mid {mid[:32]!r}, which no media has"
                    )


def send_message(channel: RTCDataChannel | None, msg: ScoreMessage | StatusMessage) -> None:
    """Send on the `scores` channel if it is open; a send on a closing transport is dropped."""
    if channel is not None and channel.readyState == "open":
        try:
            channel.send(msg.to_json())
        except Exception:  # the session is being torn down
            log.debug("send failed on channel %s", channel.label, exc_info=True)


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def cap_candidates(sdp: str, limit: int) -> tuple[str, int]:
    """`sdp` keeping at most `limit` distinct remote ICE candidates (component, transport,
    address, port), the highest-priority ones; every `a=candidate` line of a dropped candidate
    is removed (so each media section keeps the same set). Returns (sdp, candidates dropped).
    aiortc sends connectivity checks to every candidate an offer lists (and resolves each mDNS
    name), so an offer listing hundreds would make the server probe hundreds of addresses."""
    lines = sdp.split("\n")
    best: dict[tuple[str, ...], int] = {}
    keys: list[tuple[str, ...] | None] = []
    for line in lines:
        if not line.startswith("a=candidate:"):
            keys.append(None)
            continue
        f = line[len("a=candidate:") :].split()
        key = (f[1], f[2].lower(), f[4], f[5]) if len(f) >= 6 else (line.strip(),)
        try:
            priority = int(f[3])
        except (IndexError, ValueError):
            priority = 0
        best[key] = max(priority, best.get(key, priority))
        keys.append(key)
    if len(best) <= limit:
        return sdp, 0
    ranked = sorted(best, key=lambda k: -best[k])  # stable: equal priorities keep SDP order
    kept = set(ranked[:limit])
    out = [line for line, key in zip(lines, keys, strict=True) if key is None or key in kept]
    return "\n".join(out), len(best) - limit


async def set_remote_offer(
    pc: RTCPeerConnection, offer: RTCSessionDescription, max_candidates: int | None = None
) -> None:
    """Apply a client's offer (with at most `max_candidates` remote ICE candidates, see
    `cap_candidates`); anything aiortc rejects becomes an OfferError (HTTP 400)."""
    if max_candidates is not None:
        sdp, dropped = cap_candidates(offer.sdp, max_candidates)
        if dropped:
            log.info(
                "offer listed %d remote ICE candidates over the limit of %d: dropped",
                dropped,
                max_candidates,
            )
            offer = RTCSessionDescription(sdp=sdp, type=offer.type)
    try:
        await pc.setRemoteDescription(offer)
    except Exception as exc:
        raise OfferError(f"malformed offer: {_reason(exc)}") from exc


class NoCandidate(Exception):
    """The answer would carry no ICE candidate: the client could never connect."""


async def make_answer(pc: RTCPeerConnection) -> RTCSessionDescription:
    """Create and apply the answer to an applied offer. aiortc accepts some offers it cannot
    answer (it raises ValueError, AttributeError, ... here): those are bad offers too (400).
    An answer without any ICE candidate raises NoCandidate (logged as a warning)."""
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        raise OfferError(f"malformed offer: {_reason(exc)}") from exc
    desc: RTCSessionDescription = pc.localDescription
    if not has_candidate(desc.sdp):
        remote = pc.remoteDescription
        if remote is not None and section_without_candidate(remote.sdp):
            # aiortc answers a media section that lists no candidate with none of its own: the
            # offer's fault (sent before ICE gathering completed), not the server's addresses.
            raise OfferError(OFFER_WITHOUT_CANDIDATE)
        log.warning("refused a WebRTC session: %s", NO_CANDIDATE)
        raise NoCandidate(NO_CANDIDATE)
    return desc


async def close_pc(pc: RTCPeerConnection) -> None:
    """Close a peer connection; one half set up by a bad offer may raise while closing."""
    try:
        await pc.close()
    except Exception:
        log.debug("closing a half set-up peer connection failed", exc_info=True)


async def watch_peer(
    session: PeerSession | ViewerSession,
    metrics: Metrics,
    setup_seconds: float,
    idle_seconds: float | None,
) -> None:
    """Close `session` when its peer has not connected (ICE + DTLS) within `setup_seconds`,
    or, with `idle_seconds`, when it is connected but has sent no video frame for that long.
    Either way its slot is freed and the reason counted in deepfake_peers_closed_total."""
    started = time.monotonic()
    limits = [setup_seconds] + ([idle_seconds] if idle_seconds is not None else [])
    step = min(0.5, *(x / 4 for x in limits))
    while not session.closed:
        await asyncio.sleep(step)
        now = time.monotonic()
        if session.connected_at is None:
            if now - started >= setup_seconds:
                log.info("peer %s not connected within %.1f s: closed", session.id, setup_seconds)
                metrics.peers_closed.labels("setup_timeout").inc()
                await session.close()
                return
        elif idle_seconds is not None:
            last = max(session.connected_at, session.last_frame_at or 0.0)
            if now - last >= idle_seconds:
                log.info("peer %s sent no video for %.1f s: closed", session.id, idle_seconds)
                metrics.peers_closed.labels("media_timeout").inc()
                session.send(
                    StatusMessage("source_lost", session.id, f"no video for {idle_seconds:g} s")
                )
                await session.close()
                return


async def answer_here(
    session: PeerSession | ViewerSession, sdp: str, **extra: Any
) -> dict[str, Any]:
    """For an offer forwarded from another process (a cluster node's actor, an ingest worker):
    `session`'s answer to `sdp` as a dict (`sdp`, `type`, `stream` and `extra`), or the error
    the API answers (`error` and the HTTP `status`; the session closed)."""
    try:
        answer = await session.answer(RTCSessionDescription(sdp=sdp, type="offer"))
    except OfferError as exc:
        await session.close()
        return {"error": str(exc), "status": 400}
    except NoCandidate as exc:
        await session.close()
        return {"error": str(exc), "status": 500}
    except Exception as exc:
        await session.close()
        log.exception("answering an offer failed")
        return {"error": f"answering the offer failed: {_reason(exc)}", "status": 500}
    return {"sdp": answer.sdp, "type": answer.type, "stream": session.id, **extra}


class PeerSession:
    """One browser (or any WebRTC client) sending video and receiving scores."""

    def __init__(self, service: Service, settings: Settings) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.service = service
        self.pc = RTCPeerConnection(rtc_configuration(settings))
        self.channel: RTCDataChannel | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.settings = settings
        self._closed = False
        self.ended = asyncio.Event()  # set once close() has finished
        self._closer: asyncio.Task[None] | None = None
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.stream = service.new_stream(self.id, self.send, self)
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == SCORES_LABEL:
                self.channel = channel
                channel.on("message", self._on_client_message)
                if channel.readyState == "open":
                    self._hello()
                else:
                    channel.on("open", self._hello)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video(track) if track.kind == "video" else self._drain(track)
            self._spawn(reader)

        follow_connection(pc, self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_client_message(self, data: object) -> None:
        """The client says goodbye before closing, so its stream ends at once (not after ICE
        consent times out)."""
        if isinstance(data, str) and len(data) < 256 and '"bye"' in data and self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close())

    def _hello(self) -> None:
        self.send(StatusMessage("connected", self.id, self.service.bundle.model_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, msg: ScoreMessage | StatusMessage) -> None:
        send_message(self.channel, msg)

    async def _read_video(self, track: MediaStreamTrack) -> None:
        # aiortc decodes in its own thread; draining recv() promptly keeps its queue short.
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if isinstance(frame, av.VideoFrame):
                self.last_frame_at = time.monotonic()
                self.stream.offer_frame(frame)
        if not self._closed:
            self.send(StatusMessage("source_lost", self.id, "video track ended"))

    async def _drain(self, track: MediaStreamTrack) -> None:
        while True:  # audio is not analysed, but its frames must not pile up
            try:
                await track.recv()
            except MediaStreamError:
                return

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        await set_remote_offer(self.pc, offer, self.settings.max_remote_candidates)
        answer = await make_answer(self.pc)
        s = self.settings
        self._spawn(
            watch_peer(self, self.service.metrics, s.peer_setup_seconds, s.peer_idle_seconds)
        )
        return answer

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.service.end_stream(self.id)
            current = asyncio.current_task()
            for t in list(self.tasks):
                if t is not current:
                    t.cancel()
            await asyncio.gather(
                *(t for t in self.tasks if t is not current), return_exceptions=True
            )
            await close_pc(self.pc)
        finally:
            self.ended.set()


def follow_connection(pc: RTCPeerConnection, session: PeerSession | ViewerSession) -> None:
    """Stamp `session.connected_at` when its peer connects; close it when the peer fails or
    closes."""

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState == "connected" and session.connected_at is None:
            session.connected_at = time.monotonic()
        if pc.connectionState in ("failed", "closed"):
            await session.close()


class WatchedCamera(Protocol):
    """What a viewer needs of a camera (`cameras.Camera`): its newest decoded frame with a
    sequence number and an event set when the next arrives, and a feed of its messages."""

    latest: av.VideoFrame | None
    frame_seq: int
    new_frame: asyncio.Event
    viewers: int  # viewers relaying its video now (a watched camera decodes every frame)

    def subscribe(self) -> asyncio.Queue[Any]: ...

    def unsubscribe(self, q: asyncio.Queue[Any], /) -> None: ...


def own_copy(src: av.VideoFrame) -> av.VideoFrame:
    """A new frame with `src`'s picture. (`reformat` to the same format and size returns `src`
    itself, so viewers stamping their pts on it raced, and libvpx refused a frame whose pts ran
    backwards: the relay to that viewer stopped.)"""
    fmt = "yuv420p" if src.width % 2 == 0 and src.height % 2 == 0 else "rgb24"
    return av.VideoFrame.from_ndarray(src.to_ndarray(format=fmt), format=fmt)


class CameraTrack(VideoStreamTrack):
    """Relays a camera's newest decoded frame to one viewer (the camera is decoded once)."""

    def __init__(self, camera: WatchedCamera) -> None:
        super().__init__()
        self.camera = camera
        self.seen = 0
        self.start = time.monotonic()

    async def recv(self) -> av.VideoFrame:
        while self.camera.frame_seq == self.seen or self.camera.latest is None:
            await self.camera.new_frame.wait()
        self.seen = self.camera.frame_seq
        frame = own_copy(self.camera.latest)  # each viewer stamps its own pts on its own frame
        frame.pts = int((time.monotonic() - self.start) * 90000)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class ViewerSession:
    """A browser watching a registered camera: its video relayed, its scores on `scores`."""

    def __init__(self, service: Service, settings: Settings, camera: WatchedCamera) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.service = service
        service.add_viewer(self.id, self)  # one slot of --max-streams, or Capacity
        self.camera = camera
        self.pc = RTCPeerConnection(rtc_configuration(settings))
        self.channel: RTCDataChannel | None = None
        self.queue = camera.subscribe()
        camera.viewers += 1
        self.settings = settings
        self._closed = False
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None  # viewers send no video; not watched for it
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == SCORES_LABEL:
                self.channel = channel

        follow_connection(pc, self)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, msg: ScoreMessage | StatusMessage) -> None:
        send_message(self.channel, msg)

    async def _forward(self) -> None:
        while True:
            msg = await self.queue.get()
            send_message(self.channel, msg)

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        await set_remote_offer(self.pc, offer, self.settings.max_remote_candidates)
        self.pc.addTrack(CameraTrack(self.camera))
        answer = await make_answer(self.pc)
        loop = asyncio.get_running_loop()
        self._pump = loop.create_task(self._forward(), name=f"viewer-{self.id}")
        self._watch = loop.create_task(
            watch_peer(self, self.service.metrics, self.settings.peer_setup_seconds, None),
            name=f"viewer-watch-{self.id}",
        )
        return answer

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.camera.unsubscribe(self.queue)
        self.camera.viewers -= 1
        self.service.remove_viewer(self.id)
        current = asyncio.current_task()
        tasks = [t for t in (self._pump, self._watch) if t is not None and t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_pc(self.pc)

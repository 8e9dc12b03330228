"""A real Chromium sender for the capacity benchmark: the service's own page, opened by Playwright
with Chromium's fake camera playing a 640x480 face clip at 30 fps, started with its Start button,
so it asks for the server's capture hints and caps its RTCRtpSender exactly as a user's browser
would. Writes one result in `bench.client`'s shape (server-side latencies of the scores the page
received, drops) plus what the sender says it sent (RTCPeerConnection.getStats): frames and bits
per second, size, codec.

    python -m bench.browser URL SECONDS OUT.json

Uses Debian's Chromium (/usr/bin/chromium), as the tests do; never `playwright install`."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"

# Keeps the page's peer connections and the score messages its `scores` channel receives.
RECORD = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.__scores = [];
  window.RTCPeerConnection = function (config) {
    const pc = new Original(config);
    window.__pcs.push(pc);
    const create = pc.createDataChannel.bind(pc);
    pc.createDataChannel = (label, options) => {
      const ch = create(label, options);
      ch.addEventListener("message", (e) => {
        try {
          const m = JSON.parse(e.data);
          if (m.type === "score") window.__scores.push([m.latency_ms, m.dropped || 0]);
        } catch (err) { /* not JSON: not a score */ }
      });
      return ch;
    };
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""

# The sender's own account of what it sent (outbound-rtp video) and with which codec.
SENT = """
async () => {
  const stats = await window.__pcs[0].getStats();
  let out = null, codecs = {};
  stats.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") out = s;
    if (s.type === "codec") codecs[s.id] = s.mimeType;
  });
  if (!out) return null;
  return {frames: out.framesSent, bytes: out.bytesSent, width: out.frameWidth,
          height: out.frameHeight, codec: codecs[out.codecId] || null,
          encoder: out.encoderImplementation || null,
          limitation: out.qualityLimitationReason || null};
}
"""


def chromium_path() -> str:
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    return path


def chromium_switches(
    video: Path | None, grant_camera: bool = True, camera_fps: int | None = None
) -> list[str]:
    """Headless Chromium's switches for a WebRTC page on loopback: no sandbox, GPU or background
    traffic, a fake camera (`video` looped, else Chromium's test pattern at `camera_fps`), the
    camera prompt granted when `grant_camera`, loopback ICE candidates not hidden behind mDNS.
    The benchmark's Chromium sender and the browser tests use these."""
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-fake-device-for-media-stream" + (f"=fps={camera_fps}" if camera_fps else ""),
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if grant_camera:
        args.append("--use-fake-ui-for-media-stream")
    if video is not None:
        args.append(f"--use-file-for-fake-video-capture={video}")
    return args


def fake_camera_clip(directory: Path) -> Path:
    """Two seconds of the 640x480 face clip as y4m at 30 fps (Chromium's fake camera loops it)."""
    from bench.media import face_frames, write_video

    path: Path = write_video(
        directory / "face.y4m", face_frames(60), 30, codec="rawvideo", format="yuv4mpegpipe"
    )
    return path


def run(url: str, seconds: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-chromium-"))
    clip = fake_camera_clip(tmp)
    args = chromium_switches(clip)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=args, headless=True)
        try:
            context = browser.new_context(permissions=["camera"])
            page = context.new_page()
            page.add_init_script(RECORD)
            page.goto(url + "/")
            page.get_by_role("button", name="Start camera").click()
            page.wait_for_function(
                "document.querySelector('#status').textContent === 'live'", timeout=60_000
            )
            caps = page.evaluate(
                "window.__pcs[0].getSenders().find((s) => s.track).getParameters().encodings[0]"
            )
            print("live", flush=True)  # the capacity benchmark starts the other peers now
            sent0, t0 = page.evaluate(SENT), time.monotonic()
            page.wait_for_timeout(seconds * 1000)
            sent1, t1 = page.evaluate(SENT), time.monotonic()
            scores = page.evaluate("window.__scores")
            page.get_by_role("button", name="Stop").click()
            page.wait_for_timeout(500)
        finally:
            browser.close()
    shutil.rmtree(tmp, ignore_errors=True)
    dt = max(1e-6, t1 - t0)
    sent: dict[str, Any] = {}
    if sent0 and sent1:
        sent = {
            "frames_per_s": round((sent1["frames"] - sent0["frames"]) / dt, 2),
            "kbit_per_s": round(8 * (sent1["bytes"] - sent0["bytes"]) / dt / 1000, 1),
            "width": sent1["width"],
            "height": sent1["height"],
            "codec": sent1["codec"],
            "encoder": sent1["encoder"],
            "quality_limitation": sent1["limitation"],
        }
    return {
        "sender": "chromium",
        # Chromium's capture times are not on a schedule the benchmark knows: no client-side
        # latency; the server's own (decoded frame -> score sent) arrives in every score.
        "latencies_s": [],
        "server_latencies_s": [float(x[0]) / 1000.0 for x in scores],
        "scores": len(scores),
        "dropped": int(scores[-1][1]) if scores else 0,
        "seconds": seconds,
        "encoding": caps,
        "sent": sent,
    }


if __name__ == "__main__":
    sys.path.insert(0, ".")
    try:
        result = run(sys.argv[1], float(sys.argv[2]))
    except Exception as exc:  # reported in the level's errors, as a failed peer's would be
        result = {"sender": "chromium", "error": f"{type(exc).__name__}: {exc}"[:500]}
    Path(sys.argv[3]).write_text(json.dumps([result]))

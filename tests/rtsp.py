"""Start and stop the real GStreamer RTSP server (tests/rtsp_server.py) on loopback."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.media import face_frames, write_video
from tests.timing import scaled

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def write_camera_clip(path: Path, loops: int = 6) -> Path:
    """The camera clip the RTSP tests serve: `loops` x 6 s of the panned astronaut face at
    320x240, 15 fps, H.264 with zero-latency tuning and a keyframe every second (so a camera
    that joins late decodes within a second)."""
    return Path(
        write_video(
            path,
            face_frames(90, size=(320, 240)) * loops,
            fps=15,
            options={"tune": "zerolatency", "g": "15"},
        )
    )


def require_gst_rtsp() -> None:
    ok = (
        Path(SYSTEM_PYTHON).exists()
        and subprocess.run(
            [
                SYSTEM_PYTHON,
                "-c",
                "import gi; gi.require_version('GstRtspServer', '1.0'); "
                "from gi.repository import GstRtspServer",
            ],
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(
                "GStreamer's RTSP server is missing; .ci/run must install gir1.2-gst-rtsp-server-1.0"
            )
        pytest.skip(
            "GStreamer RTSP server not installed (apt-get install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad})"
        )


class RtspServer:
    def __init__(self, clip: Path, port: int, mount: str = "/cam") -> None:
        self.clip, self.port, self.mount = clip, port, mount
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"rtsp://127.0.0.1:{port}{mount}"

    def start(self) -> RtspServer:
        require_gst_rtsp()
        assert shutil.which(SYSTEM_PYTHON)
        self.proc = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(ROOT / "tests" / "rtsp_server.py"),
                str(self.port),
                str(self.clip),
                self.mount,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        # Bounded: a server that hangs before printing "ready" fails here within 15 s (times the
        # test time scale), not at the 600 s pytest timeout (readline alone would block).
        ready, _, _ = select.select([self.proc.stdout], [], [], scaled(15))
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"RTSP server did not start within 15 s: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

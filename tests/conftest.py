from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.timing import scaled

# aiortc's libsrtp binding must load before TensorFlow: importing pylibsrtp after TensorFlow's
# shared libraries segfaults (seen with TF 2.21 + pylibsrtp 1.0). Tests export models with TF and
# run WebRTC peers in one process, so load aiortc first.
import aiortc  # noqa: F401,E402  isort: skip

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} is absent (it is present in CI)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test keeps its state (the service's state database, certificates) in a fresh
    $XDG_DATA_HOME, which servers started without --data-dir use, in this process and in the
    processes it starts: no test sees another's cameras, none touches the user's home."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CNN-GRU saved the way deepfake-train saves models (Keras: the tests
    that use it are marked `tensorflow`)."""
    from models.config import ModelConfig
    from models.saving import new_model, save_model_dir

    cfg = ModelConfig(backbone="tiny_cnn", input_size=64, weights=None, window=20)
    return save_model_dir(new_model(cfg), tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checked-in test bundle `tiny-test@1` (tests/data/tiny_bundle, made by
    scripts/make_test_bundle.py) with the default bundle's face stage: no TensorFlow needed."""
    from tests.bundles import tiny_bundle as assemble

    return assemble(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def exported_tiny_bundle(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_model_dir` exported now, for the tests that compare Keras with its ONNX export."""
    from export.bundle_export import ExportConfig, export_bundle
    from models.saving import load_model_dir

    out = tmp_path_factory.mktemp("bundles") / "exported"
    config = ExportConfig(name="tiny-test", version="1")
    return export_bundle(load_model_dir(tiny_model_dir), out, config)


# A tiny random-weight CNN-GRU for `deepfake-train` runs in tests (seconds per step on a CPU).
TINY_MODEL_ARGS = [
    "--backbone",
    "tiny_cnn",
    "--input-size",
    "64",
    "--weights",
    "none",
    "--window",
    "8",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(proc: Any, url: str, within: float = 60.0) -> None:
    """Wait until the `deepfake-serve` process `proc` answers `url`/healthz; fails with its
    stderr if it exits first, or when `within` seconds pass."""
    import httpx

    end = time.monotonic() + within
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            if proc.poll() is not None:
                err = proc.communicate()[1] if proc.stderr is not None else ""
                raise AssertionError(f"deepfake-serve exited ({proc.returncode}):\n{err}") from None
            assert time.monotonic() < end, f"deepfake-serve did not answer {url} in {within:g} s"
            time.sleep(0.2)


class LiveServer:
    """A real uvicorn serving the app on a loopback port, in a background thread."""

    def __init__(self, port: int | None = None, **overrides: object) -> None:
        """`port`: a given one (a server started again where the last one was), else a free one."""
        import uvicorn

        from stream_server.shell.api import create_app
        from stream_server.shell.service import Service
        from stream_server.shell.settings import Settings

        self.port = port or free_port()
        settings = Settings(port=self.port, ice_addresses=("127.0.0.1",), **overrides)  # type: ignore[arg-type]
        self.service = Service(settings)
        self.app = create_app(self.service)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + scaled(30)
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server(tiny_bundle: Path) -> Iterator[LiveServer]:
    with LiveServer(bundle=tiny_bundle) as srv:
        yield srv


def tinted(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A crude 'manipulated' clip: the centre of the picture (where the face is) recoloured."""
    out = []
    for f in frames:
        g = f.astype(np.int16).copy()
        h, w = g.shape[:2]
        g[h // 8 : h // 2, w // 3 : 2 * w // 3] += np.array([60, -30, -30], np.int16)
        out.append(np.clip(g, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def dfdc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.media import face_frames, faceless_frames, write_video

    d = tmp_path_factory.mktemp("dfdc")
    meta = {}
    for i in range(3):
        frames = (
            face_frames(30, size=(320, 240))[i * 3 :] + face_frames(30, size=(320, 240))[: i * 3]
        )
        write_video(d / f"person{i}_real.mp4", frames, fps=10)
        write_video(d / f"person{i}_fake.mp4", tinted(frames), fps=10)
        meta[f"person{i}_real.mp4"] = {"label": "REAL", "original": None, "split": "train"}
        meta[f"person{i}_fake.mp4"] = {
            "label": "FAKE",
            "original": f"person{i}_real.mp4",
            "split": "train",
        }
    write_video(d / "empty_room.mp4", faceless_frames(20, size=(320, 240)), fps=10)
    meta["empty_room.mp4"] = {"label": "REAL", "original": None, "split": "train"}
    meta["missing.mp4"] = {"label": "FAKE", "original": None, "split": "train"}
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


# Components that some tests need and a hand run may lack. A test with one of these markers that
# skips (its component is missing) FAILS instead when $CI is set (CI runs .ci/run with CI=true);
# a hand run lists every skip and its reason at the end (pytest_terminal_summary).
COMPONENTS = {
    "shared_data": f"the shared data set ({SHARED_DATA})",
    "browser": "Chromium (apt-get install chromium)",
    "rtsp": "GStreamer's RTSP server (apt-get install gir1.2-gst-rtsp-server-1.0)",
    "torch_reference": "the PyTorch reference model (pip install torch efficientnet_lite_pytorch)",
    "turn": "the coturn TURN server (apt-get install coturn)",
    "mqtt": "the mosquitto MQTT broker (apt-get install mosquitto) and paho-mqtt",
    "loopback": "the loopback-only network namespace (scripts/test.sh as root: unshare -n)",
}


def in_ci() -> bool:
    """The same test as the Chromium and GStreamer guards: $CI set to anything non-empty."""
    return bool(os.environ.get("CI"))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _components(keywords: object) -> list[str]:
    return [name for name in COMPONENTS if name in keywords]  # type: ignore[operator]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    needed = _components(item.keywords)
    if needed:
        report.outcome = "failed"
        report.longrepr = (
            f"CI is set, so this test must not skip: it needs "
            f"{' and '.join(COMPONENTS[n] for n in needed)}, which CI must provide. "
            f"It skipped with: {_skip_reason(report)}"
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        terminalreporter.write_line("skipped tests: 0")
        return
    groups: dict[tuple[str, str], int] = {}
    for r in skipped:
        needed = _components(getattr(r, "keywords", {}))
        what = " and ".join(COMPONENTS[n] for n in needed) if needed else "-"
        key = (what, _skip_reason(r))
        groups[key] = groups.get(key, 0) + 1
    tr = terminalreporter
    tr.write_sep("=", f"{len(skipped)} test(s) skipped: what is missing, and why", yellow=True)
    for (what, reason), n in sorted(groups.items()):
        if what == "-":
            tr.write_line(f"{n:4d} skipped: {reason}")
        else:
            tr.write_line(f"{n:4d} skipped, missing {what}: {reason}")
    if any(what != "-" for what, _ in groups) and not in_ci():
        tr.write_line("     (with CI set, as CI runs them, those with a missing component fail)")

"""README: "A non-editable install carries the default bundle as package data; point
`--static-dir` at this repository's `client_web/` to serve the web page from it."

A wheel is built from a copy of the sources (no network: no build isolation, no dependencies)
and unpacked into a folder that `deepfake-serve` then runs from, with `python -S` so that the
editable install of this checkout (a .pth finder) cannot shadow it; the dependencies come from
the test environment's site-packages on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.timing import poll, scaled

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_serves_the_packaged_default_bundle_and_static_dir(tmp_path: Path) -> None:
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in ("stream_server", "export", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert "models/default_bundle/manifest.json" in names
    assert not any(n.startswith("client_web/") for n in names)  # the page is not package data

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEEPFAKE_")},
        "PYTHONPATH": os.pathsep.join(
            dict.fromkeys([str(site), *(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))])
        ),
    }
    run = [sys.executable, "-S"]
    where = subprocess.run(
        [*run, "-c", "import stream_server.core.bundle as b; print(b.DEFAULT_BUNDLE)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()) == site / "models" / "default_bundle"

    def serve(*extra: str) -> tuple[int, str, dict[str, object]]:
        port = free_port()
        p = subprocess.Popen(
            [*run, "-m", "stream_server", "--port", str(port), "--providers", "cpu", *extra],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def health() -> dict[str, object] | None:
                try:
                    return dict(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json())
                except httpx.TransportError:
                    assert p.poll() is None, p.communicate()[1][-2000:]
                    return None

            h = poll(health, 90, every=0.2)
            assert h is not None, "deepfake-serve from the wheel did not start"
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
            return page.status_code, page.text, h
        finally:
            p.terminate()
            try:
                p.wait(scaled(15))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    status, text, h = serve("--static-dir", str(ROOT / "client_web"))
    assert status == 200 and "Deepfake live check" in text
    assert str(h["model"]).startswith("deepfake-cnn-gru@")  # the packaged default bundle
    status, text, _ = serve()  # no --static-dir: the wheel has no page to serve
    assert status == 404 and "web client not found" in text

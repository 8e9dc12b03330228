"""The code style gates run with the suite: ruff (lint + format) everywhere, mypy strict on the
serving and export packages, mypy's defaults on the training package (`models`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_ruff_lint_and_format() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = _run(ruff, "check", ".")
    assert r.returncode == 0, r.stdout[-3000:]
    r = _run(ruff, "format", "--check", ".")
    assert r.returncode == 0, r.stdout[-3000:]


def test_mypy_strict_on_serving_and_export_and_default_on_training() -> None:
    r = _run(sys.executable, "-m", "mypy", "stream_server", "export", "models")
    assert r.returncode == 0, r.stdout[-3000:]

"""No quiet skips: under CI a test whose component is missing fails; by hand, the run ends with a
list of what was skipped and why (tests/conftest.py). Plus the loopback-only namespace check."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.loopback
def test_suite_runs_in_a_loopback_only_network_namespace() -> None:
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        pytest.skip(
            f"not in a loopback-only network namespace (interfaces: {', '.join(names)}); "
            "scripts/test.sh runs the suite under `unshare -n` when run as root"
        )
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname(), timeout=5) as c:
            peer, _ = srv.accept()
            with peer:
                c.sendall(b"ping")
                assert peer.recv(4) == b"ping"


INNER_TESTS = """
import pytest

SKIP_SHARED = pytest.mark.skip(reason="shared data is absent here")


@pytest.mark.browser
def test_browser_component_missing():
    pytest.skip("chromium is not installed")


@pytest.mark.shared_data
@SKIP_SHARED
def test_shared_data_missing():
    pass


@pytest.mark.torch_reference
def test_torch_missing():
    pytest.importorskip("no_such_module_torch_stand_in")


@pytest.mark.rtsp
@pytest.mark.xfail(reason="expected to fail")
def test_rtsp_xfail():
    assert False


def test_unmarked_skip():
    pytest.skip("an ordinary skip")


@pytest.mark.loopback
def test_loopback_present():
    pass
"""


def _inner_run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """The project's conftest hooks on a small suite of marked tests, in a fresh pytest."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_makereport, pytest_terminal_summary  # noqa\n"
    )
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    markers = "\n".join(f"  {m}: x" for m in ("browser", "rtsp", "shared_data", "torch_reference"))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nmarkers =\n{markers}\n  loopback: x\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_by_hand_component_skips_are_listed_with_their_reasons(tmp_path: Path) -> None:
    r = _inner_run(tmp_path, None)
    out = r.stdout
    assert r.returncode == 0, out[-3000:]
    assert "1 passed, 4 skipped, 1 xfailed" in out, out[-3000:]
    assert "4 test(s) skipped: what is missing, and why" in out
    assert (
        "1 skipped, missing Chromium (apt-get install chromium): chromium is not installed" in out
    )
    assert "missing the shared data set" in out and "shared data is absent here" in out
    assert "missing the PyTorch reference model" in out and "no_such_module_torch_stand_in" in out
    assert "1 skipped: an ordinary skip" in out
    assert "with CI set, as CI runs them, those with a missing component fail" in out


def test_under_ci_component_skips_fail(tmp_path: Path) -> None:
    r = _inner_run(tmp_path, "true")
    out = r.stdout
    assert r.returncode == 1, out[-3000:]
    # The shared-data skip comes from a skip marker (setup), so pytest reports it as an error.
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out, out[-3000:]
    assert "FAILED test_inner.py::test_browser_component_missing" in out
    assert "FAILED test_inner.py::test_torch_missing" in out
    assert "ERROR test_inner.py::test_shared_data_missing" in out
    assert "CI is set, so this test must not skip: it needs Chromium" in out
    assert "It skipped with: chromium is not installed" in out
    assert "1 test(s) skipped: what is missing, and why" in out
    assert "1 skipped: an ordinary skip" in out

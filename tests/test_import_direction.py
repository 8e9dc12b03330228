"""The import direction between the packages, read from the source with `ast`:

- `stream_server/` imports none of `models/`, `export/`, `bench/`, `tests/`, TensorFlow, Keras or
  tf2onnx;
- inside it, the analysis core (`stream_server/core/`) never imports the service shell
  (`stream_server/shell/`), and the shell is the only place that imports starlette, uvicorn or
  aiortc (HTTP and WebRTC);
- `models/`, `export/` and `bench/` import only the core of `stream_server`;
- `export/` may import `models/` (only `models.saving`: the model directory format) and the core;
- `models/` never imports `export/`: `deepfake-train` runs `deepfake-export` as a process;
- `bench/` never imports `tests/` (the media both generate live in `bench/media.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(package: str) -> dict[str, set[str]]:
    """Module file -> the top-level-qualified names it imports (absolute, at any depth)."""
    out: dict[str, set[str]] = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                names.add(package)  # relative imports stay inside the package
        out[str(f.relative_to(ROOT))] = names
    return out


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for module, names in imports(package).items():
        hits = sorted(n for n in names if n.split(".")[0] in forbidden)
        if hits:
            bad[module] = hits
    return bad


def test_serving_imports_no_training_export_or_tensorflow() -> None:
    assert (
        offenders(
            "stream_server",
            ("models", "export", "bench", "tests", "tensorflow", "keras", "tf2onnx"),
        )
        == {}
    )


WEB = ("starlette", "uvicorn", "aiortc", "aioice")


def test_only_the_shell_imports_http_and_webrtc() -> None:
    """starlette, uvicorn and aiortc belong to `stream_server/shell/`; the core, training and
    export never import them. `bench/` never imports the HTTP stack either; its load client
    plays the browser's part over WebRTC (aiortc as a client peer, in `bench/client.py` and the
    soak run) and `bench/__main__.py` loads aiortc first for libsrtp's sake."""
    for package in ("stream_server", "models", "export"):
        bad = {
            m: n
            for m, n in offenders(package, WEB).items()
            if not m.startswith("stream_server/shell/")
        }
        assert bad == {}, package
    bench_clients = {"bench/client.py", "bench/soak.py", "bench/__main__.py"}
    assert offenders("bench", ("starlette", "uvicorn", "tests")) == {}
    assert set(offenders("bench", WEB)) <= bench_clients


def test_core_never_imports_the_shell() -> None:
    core = {
        m: n for m, n in imports("stream_server").items() if m.startswith("stream_server/core/")
    }
    assert core, "no core modules found"
    bad = {m: sorted(x for x in n if x.startswith("stream_server.shell")) for m, n in core.items()}
    assert {m: n for m, n in bad.items() if n} == {}


@pytest.mark.parametrize("package", ["models", "export", "bench"])
def test_training_export_and_bench_import_only_the_core(package: str) -> None:
    """From `stream_server` they import `stream_server.core...` and nothing else (not the shell,
    not names from the top-level package)."""
    bad = {}
    for module, names in imports(package).items():
        hits = sorted(
            n
            for n in names
            if n.split(".")[0] == "stream_server"
            and not (n == "stream_server.core" or n.startswith("stream_server.core."))
        )
        if hits:
            bad[module] = hits
    assert bad == {}
    assert any(
        n.startswith("stream_server.core.") for names in imports(package).values() for n in names
    )


def test_models_never_import_export() -> None:
    assert offenders("models", ("export", "bench", "tests")) == {}


def test_export_imports_only_the_model_directory_format_from_models() -> None:
    for module, names in imports("export").items():
        from_models = {n for n in names if n.split(".")[0] == "models"}
        assert from_models <= {"models.saving", "models.saving.load_model_dir"}, module
        assert not {n for n in names if n.split(".")[0] in ("bench", "tests")}, module


@pytest.mark.parametrize("package", ["stream_server", "models", "export"])
def test_the_checker_sees_imports_inside_functions(package: str) -> None:
    """Lazy imports (inside functions) count: the walk covers every node, not just the top."""
    seen = imports(package)
    assert seen and any(names for names in seen.values())
    if package == "export":
        assert "models.saving" in imports("export")["export/cli.py"]

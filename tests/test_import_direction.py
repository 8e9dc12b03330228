"""The import direction between the top-level packages, read from the source with `ast`:

- `stream_server/` (serving and the analysis core) imports none of `models/`, `export/`, `bench/`,
  `tests/`, TensorFlow, Keras or tf2onnx;
- `export/` may import `models/` (only `models.saving`: the model directory format) and the core;
- `models/` never imports `export/`: `deepfake-train` runs `deepfake-export` as a process.
(`bench/` still imports helpers from `tests/`; issue 16 lists that separately.)
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

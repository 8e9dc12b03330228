"""Serving must run where TensorFlow (and Keras, tf2onnx) are not installed. scripts/test.sh runs
every test not marked `tensorflow` that way; these tests check the pieces that make it work."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.bundles import TINY

ROOT = Path(__file__).resolve().parent.parent
WITHOUT_TF = ROOT / "tests" / "without_tensorflow"  # its sitecustomize makes TF unimportable


def run_without_tf(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WITHOUT_TF), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def test_stream_server_imports_and_runs_without_tensorflow(tiny_bundle: Path) -> None:
    code = f"""
import importlib, pkgutil, sys, stream_server
for m in pkgutil.walk_packages(stream_server.__path__, 'stream_server.'):
    if not m.name.endswith('__main__'):
        importlib.import_module(m.name)
try:
    import tensorflow
except ModuleNotFoundError:
    pass
else:
    raise SystemExit('the block did not work')
from export.validate import validate_bundle
report = validate_bundle({str(tiny_bundle)!r})
assert report['model'] == 'tiny-test@1', report
leaked = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]
assert not leaked, leaked
print('ok')
"""
    r = run_without_tf(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_the_test_bundle_is_small_checked_in_onnx_and_complete(tiny_bundle: Path) -> None:
    """tests/data/tiny_bundle (scripts/make_test_bundle.py): encoder, head and manifest under
    1 MB; with the default bundle's face stage added it is a bundle the server verifies file by
    file, made without TensorFlow at test time."""
    kept = sorted(f.name for f in TINY.iterdir())
    assert kept == ["encoder.onnx", "head.onnx", "manifest.json"]
    assert sum(f.stat().st_size for f in TINY.iterdir()) < 1_000_000
    r = run_without_tf(
        "from stream_server.core.bundle import load_bundle\n"
        f"b = load_bundle({str(tiny_bundle)!r})\n"
        "print(b.name, b.version, b.window, b.roi is not None)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tiny-test", "1", "20", "True"]


def test_the_blocker_makes_tensorflow_unimportable() -> None:
    r = run_without_tf("import tensorflow")
    assert r.returncode != 0 and "No module named 'tensorflow'" in r.stderr


def test_no_tensorflow_import_in_serving_sources() -> None:
    for path in (ROOT / "stream_server").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            assert not s.startswith(
                (
                    "import tensorflow",
                    "from tensorflow",
                    "import keras",
                    "from keras",
                    "import tf2onnx",
                )
            ), f"{path}: {s}"


# What needs TensorFlow when a test uses it: Keras modules and the fixtures built with them.
NEEDS_TF_MODULES = (
    "tensorflow",
    "keras",
    "tf2onnx",
    "models.backbones",
    "models.cnn_gru",
    "models.efficientnet_lite",
    "models.saving",
)
NEEDS_TF_FIXTURES = ("tiny_model_dir", "exported_tiny_bundle")


def _marked_tensorflow(node: ast.AST) -> bool:
    return "tensorflow" in {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr == "tensorflow"
    }


def test_tests_that_use_keras_are_marked_tensorflow() -> None:
    """Read with `ast`: a test that takes a Keras-built fixture or imports a Keras module is
    marked `tensorflow` (itself or its module), so scripts/test.sh's first pass, which has no
    TensorFlow, never runs it (that pass also fails any unmarked test that reaches for it)."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module_marked = any(
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
            and _marked_tensorflow(n.value)
            for n in tree.body
        )
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test"):
                continue
            uses = {a.arg for a in fn.args.args} & set(NEEDS_TF_FIXTURES)
            for n in ast.walk(fn):
                if isinstance(n, ast.Import):
                    uses |= {a.name for a in n.names if a.name.startswith(NEEDS_TF_MODULES)}
                elif isinstance(n, ast.ImportFrom) and n.module:
                    names = [n.module, *(f"{n.module}.{a.name}" for a in n.names)]
                    uses |= {m for m in names if m.startswith(NEEDS_TF_MODULES)}
            marked = module_marked or any(_marked_tensorflow(d) for d in fn.decorator_list)
            if uses and not marked:
                unmarked.append(f"{path.name}::{fn.name} uses {sorted(uses)}")
    assert unmarked == []

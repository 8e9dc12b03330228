"""Serving must run where TensorFlow (and Keras, tf2onnx) are not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK_TF = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)')
        return None
sys.meta_path.insert(0, Block())
"""


def test_stream_server_imports_and_runs_without_tensorflow(tiny_bundle: Path) -> None:
    code = (
        BLOCK_TF
        + f"""
import pkgutil, importlib, stream_server
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
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


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

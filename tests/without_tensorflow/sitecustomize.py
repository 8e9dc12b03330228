"""With this folder on PYTHONPATH, every Python process started (the test run and the servers,
scans and benchmarks it starts) finds no TensorFlow, Keras or tf2onnx, as if they were not
installed. scripts/test.sh runs the tests not marked `tensorflow` this way, proving that serving
needs none of them."""

import importlib.abc
import sys

BLOCKED = ("tensorflow", "keras", "tf2onnx", "tf_keras")


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())

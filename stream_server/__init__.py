"""Live deepfake detection: the analysis core and the service shell around it.

- `stream_server.core`: the analysis library (bundle and manifest, onnxruntime sessions, the frame
  source, faces, the inference engine, windows, scanning, evaluation, messages). `models/`,
  `export/` and `bench/` import only this part.
- `stream_server.shell`: the service around the core (settings, HTTP API, WebRTC, RTSP cameras,
  uploads, alerts, TLS, the `deepfake-serve` and `deepfake-scan` commands). The only part that
  imports starlette, uvicorn or aiortc.

Nothing here imports TensorFlow, and nothing loads a model at import time.
"""

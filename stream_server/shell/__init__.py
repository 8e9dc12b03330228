"""The service shell around the analysis core: settings, HTTP API, WebRTC, cameras, uploads,
alerts, TLS and the `deepfake-serve` / `deepfake-scan` commands.

The only part of the project that knows about HTTP (starlette, uvicorn) and WebRTC (aiortc).
"""

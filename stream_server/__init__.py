"""Live deepfake detection service: WebRTC/RTSP/file ingest, face stage, ONNX inference, scores out.

Nothing here imports TensorFlow, and nothing loads a model at import time.
"""

__version__ = "0.1.0"

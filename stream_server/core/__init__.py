"""The analysis core: bundle and manifest, sessions, frame source, faces, engine, windows, scans.

A library without HTTP or WebRTC: the service shell (`stream_server.shell`), training (`models/`),
export (`export/`) and the benchmarks (`bench/`) all build on it. It never imports the shell.
"""

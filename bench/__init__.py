"""Benchmarks: stage costs, the original prototype's way as a baseline, and capacity in concurrent
WebRTC streams. `python -m bench` writes JSON, a markdown summary and a plot to bench/results/."""

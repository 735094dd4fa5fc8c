"""Benchmarks of the server's moving parts; run each with `python -m bench.<name>`, never under pytest."""

"""Benchmarks, run as scripts (`python benchmarks/X.py`). A package so the test suite can import the helpers it shares
with the benchmarks (synthetic_photos, made_up_runs, serve_process); the benchmarks never depend on the test suite."""

"""Benchmarks: mallops against raw Celery and the Celery-events (Flower) stack, in one run.

``python -m bench run --out bench/results/latest.json`` (docs/performance.md). Never run as tests; the
smoke test (tests/bench) only checks that a tiny run works.
"""

"""The reports worker: consumes the ``reports`` queue (period reports, exports, access logs)."""

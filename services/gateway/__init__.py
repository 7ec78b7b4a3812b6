"""The HTTP gateway (FastAPI): submit, inspect, revoke and retry tasks."""

"""Contracts shared by every mallops service: settings, Celery factory, task catalog, models, database."""

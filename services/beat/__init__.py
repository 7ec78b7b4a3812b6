"""The beat scheduler: celery-redbeat, schedules in Redis, one active replica at a time (Redis lock)."""

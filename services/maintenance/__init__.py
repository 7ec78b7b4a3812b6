"""The maintenance worker: consumes the ``default`` queue (backups, cache and data cleanup, test tasks)."""

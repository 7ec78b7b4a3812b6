"""The notifier worker: consumes the ``email`` queue (notification e-mails, notification retention)."""

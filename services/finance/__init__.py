"""The finance worker: consumes the ``finance`` queue (overdue bills, reminders, monthly revenue)."""

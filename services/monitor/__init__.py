"""The monitor: lifecycle events into Prometheus metrics and a durable SQL task history."""

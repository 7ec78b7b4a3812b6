"""The gateway's routes, one module per resource. Routers carry their own prefix so that a route's
``path`` is its full template (the bounded label of the request metrics)."""

API_PREFIX = "/api/v1"

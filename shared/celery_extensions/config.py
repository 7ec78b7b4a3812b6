"""The one object that configures mallops' Celery extensions for an app, attached to the app itself.

:func:`shared.celery_extensions.install` builds it from :class:`~shared.settings.Settings`; signal handlers,
the worker's consumer and transport, and task bodies reach it through their app (:func:`extensions`), so
no extension keeps its configuration in a module global and two apps of one process (as in tests) do not
share one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from shared.celery_extensions.events import LifecycleEvents
    from shared.celery_extensions.redelivery import Sweeper
    from shared.celery_extensions.revocations import RevokedIds

ATTRIBUTE = "mallops_extensions"


@dataclass
class CeleryExtensions:
    settings: Settings
    revoked: RevokedIds  # the worker's copy of the durable revocations
    events: LifecycleEvents | None = None  # None when MALLOPS_EVENTS_ENABLED=false
    sweeper: Sweeper | None = None  # started by a worker without an event loop (Redis brokers)


def find_extensions(app: Any) -> CeleryExtensions | None:
    extensions = getattr(app, ATTRIBUTE, None)
    return extensions if isinstance(extensions, CeleryExtensions) else None


def extensions(app: Celery) -> CeleryExtensions:
    """The app's extensions; LookupError for an app that :func:`shared.celery_app.create_celery_app` did
    not build."""
    found = find_extensions(app)
    if found is None:
        raise LookupError(f"the Celery app {app.main!r} was not built by shared.celery_app.create_celery_app")
    return found


def app_settings(app: Celery) -> Settings:
    """The settings the app was built with: what its tasks read (instead of the process's settings)."""
    return extensions(app).settings

"""The operator commands of the ``mallops`` CLI, one module per area, registered on the main app.

Kept apart from ``mallops/cli.py`` (which holds ``serve``, ``migrate`` and ``demo-data``)
so that each area can grow without touching the others.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add every operator command to ``app``."""
    from mallops.commands import access, dead_letters, doctor, files, platform, schedules, stack, tasks, workflows

    tasks.register(app)
    files.register(app)
    platform.register(app)
    schedules.register(app)
    dead_letters.register(app)
    doctor.register(app)
    stack.register(app)
    access.register(app)
    workflows.register(app)

"""Every catalog task declares a known permission; roles are bundles of known permissions."""

from __future__ import annotations

import dataclasses

import pytest

from shared import permissions
from shared.catalog import CATALOG, NoArgs, TaskSpec, _spec


def test_every_catalog_task_declares_a_known_permission() -> None:
    missing = [name for name, spec in CATALOG.items() if spec.permission not in permissions.PERMISSIONS]
    assert missing == []


def test_a_task_cannot_be_declared_without_a_permission() -> None:
    fields = {field.name: field for field in dataclasses.fields(TaskSpec)}
    assert fields["permission"].default is dataclasses.MISSING  # required: no silent default
    with pytest.raises(TypeError):
        TaskSpec("t", "maintenance", "default", NoArgs, "no permission")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown permission"):
        _spec("t", "maintenance", "default", NoArgs, "a made-up permission", "tasks.submit.everything")


def test_every_submit_permission_is_used_and_bundles_hold_only_known_permissions() -> None:
    used = {spec.permission for spec in CATALOG.values()}
    assert used == set(permissions.SUBMIT_PERMISSIONS)
    for role, granted in permissions.ROLE_PERMISSIONS.items():
        assert granted <= set(permissions.PERMISSIONS), role
    assert set(permissions.ROLE_PERMISSIONS) == set(permissions.ROLES)
    assert permissions.ROLE_PERMISSIONS["admin"] == frozenset(permissions.PERMISSIONS)


def test_the_diagnostics_are_open_to_every_role_that_may_submit() -> None:
    for role in permissions.ROLES:
        granted = permissions.permissions_of(role)
        if permissions.can_submit(granted):
            assert {CATALOG["test_task"].permission, CATALOG["long_running_task"].permission} <= granted, role
    assert not permissions.can_submit(permissions.permissions_of("viewer"))


def test_permission_identifiers_are_stable() -> None:
    """Identifiers are a contract (docs/security.md); renaming one must be a deliberate change here too."""
    assert set(permissions.PERMISSIONS) == {
        "tasks.submit.finance",
        "tasks.submit.reports",
        "tasks.submit.access_logs",
        "tasks.submit.exports",
        "tasks.submit.email",
        "tasks.submit.maintenance",
        "tasks.submit.diagnostics",
        "email.any_address",
        "exports.dataset.bills",
        "exports.dataset.payments",
        "exports.dataset.revenue",
        "exports.dataset.stores",
        "exports.dataset.sales",
        "stores.all",
        "catalog.read",
        "tasks.read.own",
        "tasks.read.finance_queue",
        "tasks.read.all",
        "reports.read",
        "reports.read.finance",
        "exports.read.all",
        "workers.read",
        "queues.read",
        "schedules.read",
        "tasks.retry",
        "tasks.revoke",
        "schedules.write",
        "tokens.manage",
        "audit.read",
        "dead_letters.manage",
        "tasks.bulk",
        "workflows.run",
        "workflows.read",
    }

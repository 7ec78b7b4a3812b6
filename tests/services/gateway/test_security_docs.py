"""docs/security.md's permission matrix is generated from the catalog and the routes; it must be current."""

from __future__ import annotations

from services.gateway import security_docs
from services.gateway.app import create_app
from shared.settings import Settings


def test_the_permission_matrix_in_the_docs_is_up_to_date() -> None:
    app = create_app(Settings(environment="test"))
    text = security_docs.DOC.read_text(encoding="utf-8")
    assert security_docs.updated(text, app) == text, (
        "docs/security.md is out of date: run `python -m services.gateway.security_docs`"
    )


def test_every_api_route_declares_a_permission() -> None:
    app = create_app(Settings(environment="test"))
    undeclared = [
        f"{method} {path}"
        for method, path, route in security_docs.api_routes(app)
        if security_docs.route_permissions(route) is None
    ]
    assert undeclared == []
    assert len(list(security_docs.api_routes(app))) >= 20

"""A form built from a catalog task's JSON Schema (``GET /api/v1/catalog``'s ``args_schema``), and the
task's keyword arguments read back from what was posted.

Enough of JSON Schema for the catalog's argument models: objects (nested, through ``$ref`` to ``$defs``),
``enum`` (a select), ``integer`` and ``number``, ``string`` with ``format: date``, arrays of integers (typed
comma-separated), and ``anyOf [X, null]`` (an optional X). A nested field is named with dots
(``filters.store_id``). What the form cannot express the API still checks: the submission goes through
the API's own validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FieldKind = str  # "select", "date", "integer", "number", "integers", "text"


@dataclass(frozen=True)
class SchemaField:
    name: str
    title: str
    kind: FieldKind
    required: bool
    options: tuple[str, ...] = ()
    default: str = ""
    description: str = ""

    @property
    def element_id(self) -> str:
        return "arg-" + self.name.replace(".", "-").replace("_", "-")


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(defs[ref.removeprefix("#/$defs/")], defs)
    return node


def fields(schema: Mapping[str, Any]) -> list[SchemaField]:
    """The form's fields, in the schema's order (nested objects flattened with dotted names)."""
    return list(_walk(schema, schema.get("$defs", {}), "", True))


def _walk(
    schema: Mapping[str, Any], defs: Mapping[str, Any], prefix: str, required_here: bool
) -> Iterator[SchemaField]:
    required = set(schema.get("required", ()))
    for name, raw in schema.get("properties", {}).items():
        node = _resolve(raw, defs)
        optional = False
        choices = [_resolve(option, defs) for option in node.get("anyOf", ())]
        if choices:
            given = [option for option in choices if option.get("type") != "null"]
            optional = len(given) < len(choices)
            node = {**node, **given[0]} if given else node
        path = f"{prefix}{name}"
        if node.get("type") == "object" or "properties" in node:
            yield from _walk(node, defs, path + ".", False)
            continue
        yield SchemaField(
            name=path,
            title=str(raw.get("title") or node.get("title") or name),
            kind=_kind(node),
            required=required_here and name in required and not optional,
            options=tuple(str(value) for value in node.get("enum", ())),
            default=""
            if raw.get("default", node.get("default")) is None
            else str(raw.get("default", node.get("default"))),
            description=str(raw.get("description") or node.get("description") or ""),
        )


def _kind(node: Mapping[str, Any]) -> FieldKind:
    if "enum" in node:
        return "select"
    kind = node.get("type")
    if kind == "string" and node.get("format") == "date":
        return "date"
    if kind in ("integer", "number"):
        return str(kind)
    if kind == "array" and _items_type(node) == "integer":
        return "integers"
    return "text"


def _items_type(node: Mapping[str, Any]) -> Any:
    items = node.get("items")
    return items.get("type") if isinstance(items, Mapping) else None


def arguments(form_fields: list[SchemaField], form: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments the posted form gives (empty fields left out); ValueError for a number that
    is not one."""
    kwargs: dict[str, Any] = {}
    for field in form_fields:
        text = (form.get(field.name) or "").strip()
        if not text:
            continue
        value: Any = text
        if field.kind == "integer":
            value = int(text)
        elif field.kind == "number":
            value = float(text)
        elif field.kind == "integers":
            value = [int(part) for part in text.replace("，", ",").split(",") if part.strip()]
        target = kwargs
        *parents, leaf = field.name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return kwargs

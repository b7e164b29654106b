"""Pydantic validation errors as file problems: the one formatter for config and scenario files.

Each error becomes a :class:`~controller.errors.ConfigIssue` at the key's line and column,
worded for the person editing the file: a missing or unknown key (with the closest allowed
name), a number out of its range (both ends, from the field's own constraints), a wrong type.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel

from controller.errors import ConfigIssue
from controller.settings.bounds import number_text
from controller.settings.yaml_loader import KeyPart, YamlDocument, format_key_path

_BOUND_WORDS = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
_UNION_MEMBERS = frozenset({"int", "str", "float", "bool", "dict[str,any]", "none"})


def shown(value: object) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed name closest to a misspelt ``name``, or None."""
    matches = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return matches[0] if matches else None


def model_of(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def allowed_keys(root: type[BaseModel], loc: Sequence[KeyPart]) -> list[str]:
    """Names allowed in the mapping at ``loc`` (empty when it is not a known section)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return []
        model = model_of(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if isinstance(fields, dict) else []


def _field_info(root: type[BaseModel], loc: Sequence[KeyPart]) -> Any:
    """The pydantic FieldInfo of the key at ``loc``, or None when it cannot be found."""
    model: Any = root
    info: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return None
        info = fields[part]
        model = model_of(info.annotation)
    return info


def _bounds_text(root: type[BaseModel], loc: Sequence[KeyPart], ctx: Mapping[str, Any]) -> str:
    """'must be from 1000 to 10000' from the field's own constraints (both ends), or from the
    one bound pydantic reports."""
    bounds: dict[str, Any] = {}
    for item in getattr(_field_info(root, loc), "metadata", ()):
        for name in _BOUND_WORDS:
            value = getattr(item, name, None)
            if isinstance(value, int | float):
                bounds[name] = value
    for name in _BOUND_WORDS:
        if name in ctx and isinstance(ctx[name], int | float):
            bounds.setdefault(name, ctx[name])
    if "ge" in bounds and "le" in bounds:
        return f"must be from {number_text(bounds['ge'])} to {number_text(bounds['le'])}"
    return "must be " + " and ".join(
        f"{_BOUND_WORDS[name]} {number_text(value)}" for name, value in bounds.items()
    )


def _is_union_tag(part: str) -> bool:
    return part in _UNION_MEMBERS or ("[" in part and part != "[key]")


def file_key_path(
    data: Any, pydantic_loc: Sequence[Any], *, union_tags: bool
) -> tuple[KeyPart, ...]:
    """The key path in the file of a pydantic error location.

    The location is walked through the parsed document: a part that is a key (or index) of the
    mapping (or list) reached so far is part of the path, whatever its name, so a key written
    ``none`` or ``int`` is never mistaken for pydantic's union tag. Only a part that is not in
    the document and, with ``union_tags``, names a union member is dropped. The result may be
    empty (the document itself).
    """
    path: list[KeyPart] = []
    node: Any = data
    for part in pydantic_loc:
        if not isinstance(part, str | int):
            continue
        in_file = False
        if isinstance(node, Mapping):
            in_file = part in node
        elif isinstance(node, list) and isinstance(part, int):
            in_file = 0 <= part < len(node)
        if in_file:
            path.append(part)
            node = node[part]
            continue
        if union_tags and isinstance(part, str) and _is_union_tag(part):
            continue
        path.append(part)
        node = None
    return tuple(path)


def _last_key(loc: Sequence[KeyPart]) -> str:
    """The last key of ``loc`` as written in a message (the document itself when empty)."""
    return repr(loc[-1]) if loc else "(top level)"


def schema_issue(
    document: YamlDocument,
    error: Mapping[str, Any],
    root: type[BaseModel],
    *,
    keys_at: Callable[[Sequence[KeyPart]], list[str]] | None = None,
    union_tags: bool = False,
) -> ConfigIssue:
    """One pydantic error (``ValidationError.errors()`` item) of ``root`` as a file problem.

    ``keys_at`` gives the names allowed at a location when the models do not say it alone
    (a list whose items are one of several models); by default they come from ``root``.
    ``union_tags``: the models have union fields, and pydantic puts the member of the union
    (``int``, ``str``, ``function-after[...]``) in the location; drop those from the key path
    when they are not keys written in the file (see :func:`file_key_path`). Whatever the
    location, even empty, the result is a message, never an exception.
    """
    loc = file_key_path(document.data, error["loc"], union_tags=union_tags)
    kind = str(error["type"])
    value = error.get("input")
    if kind == "missing":
        if not loc:
            return document.issue(loc, f"a required value is missing: {error.get('msg', kind)}")
        where = "at the top level" if len(loc) == 1 else f"in {format_key_path(loc[:-1])}"
        return document.issue(loc, f"required key {loc[-1]!r} is missing {where}")
    if kind == "extra_forbidden":
        allowed = keys_at(loc[:-1]) if keys_at is not None else allowed_keys(root, loc[:-1])
        message = f"unknown key {_last_key(loc)}"
        close = closest(str(loc[-1]), allowed) if allowed and loc else None
        if close:
            message += f" (did you mean {close!r}?)"
        if allowed:
            message += f"; allowed here: {', '.join(allowed)}"
        return document.issue(loc, message)
    if kind == "out_of_range":
        return document.issue(loc, str(error["msg"]))
    if kind == "value_error":
        return document.issue(loc, str(error["msg"]).removeprefix("Value error, "))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        ctx = error.get("ctx") or {}
        return document.issue(loc, f"{_bounds_text(root, loc, ctx)}; got {shown(value)}")
    if loc and loc[-1] == "[key]":
        # A key of a table keyed by number (training.session_length_min) that is not one.
        loc = loc[:-1]
        key = shown(loc[-1]) if loc else "this key"
        return document.issue(loc, f"{key} is not a valid key here: use a number")
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else kind
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "expected a mapping of keys (key: value lines)"
    elif kind == "tuple_type":
        message = "expected a list (lines starting with '- ')"
    return document.issue(loc, f"{message}; got {shown(value)}")

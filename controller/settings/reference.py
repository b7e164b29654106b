"""The key reference of docs/configuration.md, generated from the schema."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import (
    BaseModel,
)

from controller.settings.bounds import number_text as _number
from controller.settings.checks import (
    _INPUT_MEANING,
)
from controller.settings.schema import (
    AppConfig,
    GpioInputs,
    InputPin,
    Range,
)
from controller.settings.schema_errors import model_of as _model_of
from controller.training.config import TrainingConfig


@dataclass(frozen=True)
class KeyReference:
    """One row of the key table in docs/configuration.md."""

    key: str
    kind: str
    default: str
    allowed: str
    description: str


def key_reference() -> list[KeyReference]:
    """Every key of the schema with its type, default, allowed values and description.

    ``training`` is one row: its keys are documented with the training program.
    """
    rows: list[KeyReference] = []
    _reference_rows(AppConfig, "", rows)
    return rows


def _reference_rows(model: type[BaseModel], prefix: str, rows: list[KeyReference]) -> None:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        nested = _model_of(annotation)
        description = info.description or (model.__doc__ or "").strip().split("\n")[0]
        if nested is TrainingConfig:
            rows.append(
                KeyReference(
                    key, "section", "defaults", "", "The training program: see docs/training.md"
                )
            )
            continue
        if nested is InputPin:
            optional = type(None) in get_args(annotation)
            rows.append(
                KeyReference(
                    key,
                    "input",
                    "absent" if optional else "required",
                    "{pin, active, pull}",
                    _INPUT_MEANING[name][0].capitalize() + (" (optional)" if optional else ""),
                )
            )
            continue
        if nested is not None:
            is_list = get_args(annotation)[1:2] == (Ellipsis,)
            kind = "list" if is_list else "section"
            if info.is_required():
                default = "required"
            elif type(None) in get_args(annotation):
                default = "null"
            else:
                default = "defaults"
            doc = info.description or (nested.__doc__ or "").strip().split("\n")[0]
            rows.append(KeyReference(key, kind, default, "", doc))
            _reference_rows(nested, f"{key}[]." if is_list else f"{key}.", rows)
            continue
        rows.append(
            KeyReference(
                key,
                _kind(annotation),
                "required" if info.is_required() else _default_text(info.default),
                _allowed(annotation, info.metadata),
                description,
            )
        )
    if model is GpioInputs:
        for name, info in InputPin.model_fields.items():
            rows.append(
                KeyReference(
                    f"{prefix}<input>.{name}",
                    _kind(info.annotation),
                    "required",
                    _allowed(info.annotation, info.metadata),
                    info.description or "",
                )
            )


def _kind(annotation: Any) -> str:
    args = get_args(annotation)
    if type(None) in args:
        inner = [arg for arg in args if arg is not type(None)]
        return f"{_kind(inner[0])} or null" if len(inner) == 1 else "value or null"
    if args and all(isinstance(arg, str) for arg in args):
        return "text"
    if args and not isinstance(args[0], type):
        return _kind(args[0])
    return {int: "integer", float: "number", str: "text", bool: "true/false"}.get(
        annotation, str(annotation)
    )


def _allowed(annotation: Any, metadata: Sequence[Any]) -> str:
    for item in metadata:
        if isinstance(item, Range):
            return item.describe()
    args = get_args(annotation)
    literal = [arg for arg in args if isinstance(arg, str)]
    if literal:
        return ", ".join(literal)
    inner = [arg for arg in args if arg is not type(None)]
    for arg in inner:
        for item in get_args(arg)[1:]:
            if isinstance(item, Range):
                return item.describe()
    return ""


def _default_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    return str(value)


def key_reference_markdown() -> str:
    """The key table of docs/configuration.md, as Markdown."""
    lines = [
        "| key | type | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in key_reference():
        description = row.description.replace("``", "`")
        cells = (f"`{row.key}`", row.kind, row.default, row.allowed, description)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"

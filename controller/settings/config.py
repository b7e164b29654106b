"""The application configuration: YAML file -> validated, frozen :class:`AppConfig`.

Loading happens in three passes, and every problem of a pass is reported together, each as
``PATH:LINE:COL: key.path: message`` (see ``docs/configuration.md``):

1. **YAML** (:mod:`controller.settings.yaml_loader`): syntax, duplicate keys, aliases, odd keys.
2. **Schema** (pydantic, ``extra="forbid"``, strict types): unknown keys, missing keys, wrong
   types, values outside their range. Range messages state the allowed range and the unit.
3. **Rules across keys**: fail-safe GPIO wiring, duplicate pins, limits above the firmware's
   ceilings, then :func:`controller.rules.config_rules.check_safety_config` on the
   :class:`~controller.rules.model.SafetyConfig` built from the file, and the training program's
   checks against the stage table. Their key paths are mapped back to the YAML.

Nothing here is a warning that lets a bad file through: a refused file means the service does
not start (exit status :data:`EXIT_CONFIG`, 78) and a reload keeps the previous config.
Warnings (things that work but are unwise, such as a ``/dev/ttyUSB0`` port) are returned by
:func:`load_config_report` and logged by :func:`load_config`.

A refused file gives lines such as::

    /etc/treadmill/treadmill.yaml:88:7: stages[1].max_kmh: must be more than 0 and at
      most 25 km/h; got 30   (on one line)
    /etc/treadmill/treadmill.yaml:52:18: gpio.inputs.grip_left.active: unsafe wiring: ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import (
    ValidationError,
)

from controller.errors import ConfigError, ConfigIssue
from controller.settings.checks import (
    Problem,
    _advice,
    _firmware_problems,
    _mqtt_problems,
    _safety_rule_problems,
    _training_problems,
    _wiring_problems,
)
from controller.settings.credentials import read_mqtt_credentials
from controller.settings.schema import (
    AppConfig,
)
from controller.settings.schema_errors import schema_issue
from controller.settings.schema_errors import shown as _shown
from controller.settings.yaml_loader import (
    EXIT_CONFIG,
    YamlDocument,
    parse_yaml,
    read_config_text,
)

__all__ = [
    "EXIT_CONFIG",
    "AppConfig",
    "ConfigError",
    "ConfigIssue",
    "LoadReport",
    "load_config",
    "load_config_report",
    "load_config_text",
    "read_mqtt_credentials",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Range: a bound with a message that states the range and the unit
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# SafetyConfig field -> YAML key path (one table, used to place rule problems)
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Rules across keys
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Pydantic errors -> ConfigIssue
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    """A configuration that passed every check, and the warnings about it."""

    config: AppConfig
    warnings: tuple[ConfigIssue, ...]


RuleCheck = Callable[[AppConfig], list[Problem]]


def validate_document(document: YamlDocument) -> LoadReport:
    """Validate parsed YAML: schema, then the rules across keys. Raises :class:`ConfigError`."""
    if not isinstance(document.data, dict):
        raise ConfigError(
            [
                document.issue(
                    (),
                    f"the file must be a mapping of sections (treadmill:, serial:, ...); got "
                    f"{_shown(document.data)}",
                )
            ]
        )
    try:
        config = AppConfig.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(
            [schema_issue(document, error, AppConfig) for error in exc.errors(include_url=False)]
        ) from None
    errors: list[Problem] = []
    checks: tuple[RuleCheck, ...] = (
        _wiring_problems,
        _firmware_problems,
        _safety_rule_problems,
        _training_problems,
    )
    for check in checks:
        errors.extend(check(config))
    mqtt_errors, mqtt_warnings = _mqtt_problems(config)
    errors.extend(mqtt_errors)
    if errors:
        raise ConfigError(_unique(document.issue(path, message) for path, message in errors))
    warnings = [document.issue(path, message) for path, message in mqtt_warnings]
    warnings.extend(document.issue(path, message) for path, message in _advice(config))
    return LoadReport(config=config, warnings=tuple(warnings))


def _unique(issues: Iterator[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[ConfigIssue] = set()
    result: list[ConfigIssue] = []
    for issue in issues:
        if issue not in seen:
            seen.add(issue)
            result.append(issue)
    return result


def load_config_text(text: str, source: str = "<text>") -> AppConfig:
    """Validate configuration ``text`` (named ``source`` in messages).

    Raises :class:`ConfigError` and nothing else, whatever the text.
    """
    return load_config_text_report(text, source).config


def load_config_text_report(text: str, source: str = "<text>") -> LoadReport:
    """Like :func:`load_config_text`, also returning the warnings."""
    return validate_document(parse_yaml(text, source))


def load_config_report(path: Path) -> LoadReport:
    """Read and validate the file at ``path``; return the config and its warnings."""
    return load_config_text_report(read_config_text(path), str(path))


def load_config(path: Path) -> AppConfig:
    """Read and validate the file at ``path``. Warnings are logged; problems raise
    :class:`ConfigError` (exit with :data:`EXIT_CONFIG`)."""
    report = load_config_report(path)
    for warning in report.warnings:
        logger.warning("%s", warning.text())
    return report.config


# --------------------------------------------------------------------------
# Key reference (docs/configuration.md is checked against it)
# --------------------------------------------------------------------------

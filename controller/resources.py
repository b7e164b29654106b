"""Files the commands need at run time: the demo config, the example config, the scenarios.

In the source tree they live in ``config/`` and ``scenarios/``; a built wheel carries copies
in ``controller/bundled/`` (``setup.py`` copies them at build time), so that ``treadmill demo``
and ``treadmill scenario NAME`` work after a plain ``pip install``. Lookups try the package
first and fall back to the source tree (an editable install has no copies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from controller.errors import ResourceMissingError

__all__ = [
    "BUNDLED_CONFIGS",
    "bundled_config",
    "bundled_scenarios",
    "resolve_scenario",
    "scenario_dir",
]

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_BUNDLED: Final = _PACKAGE_DIR / "bundled"
_SOURCE_TREE: Final = _PACKAGE_DIR.parent

BUNDLED_CONFIGS: Final[tuple[str, ...]] = ("demo.yaml", "monitor-demo.yaml", "treadmill.yaml")
"""Config files shipped in the wheel (from ``config/``)."""


def bundled_config(name: str) -> Path:
    """``config/<name>`` (one of :data:`BUNDLED_CONFIGS`) of this install."""
    for candidate in (_BUNDLED / "config" / name, _SOURCE_TREE / "config" / name):
        if candidate.is_file():
            return candidate
    msg = (
        f"config/{name} is not installed with the package (looked in {_BUNDLED / 'config'} "
        f"and {_SOURCE_TREE / 'config'}): reinstall treadmill-controller"
    )
    raise ResourceMissingError(msg)


def scenario_dir() -> Path:
    """The folder of the bundled scenario files."""
    for candidate in (_BUNDLED / "scenarios", _SOURCE_TREE / "scenarios"):
        if candidate.is_dir():
            return candidate
    msg = (
        f"the scenario library is not installed with the package (looked in "
        f"{_BUNDLED / 'scenarios'} and {_SOURCE_TREE / 'scenarios'}): reinstall "
        "treadmill-controller"
    )
    raise ResourceMissingError(msg)


def bundled_scenarios() -> list[Path]:
    """Every bundled scenario file, sorted by name."""
    return sorted(scenario_dir().glob("*.yaml"))


def resolve_scenario(argument: Path) -> Path:
    """``argument`` if it names a file, else the bundled scenario of that name (with or
    without ``.yaml``, with or without a leading ``scenarios/``); else ``argument`` unchanged
    (the loader then reports the missing file)."""
    if argument.exists():
        return argument
    name = argument.name if argument.suffix == ".yaml" else f"{argument.name}.yaml"
    try:
        candidate = scenario_dir() / name
    except ResourceMissingError:
        return argument
    return candidate if candidate.is_file() else argument

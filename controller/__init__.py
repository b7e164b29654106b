"""Treadmill controller: safety core, service, MQTT telemetry."""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "version"]

DISTRIBUTION = "treadmill-controller"
"""The installed distribution's name (pyproject.toml ``[project] name``)."""


def version() -> str:
    """The installed version: the one source for ``treadmill --version``, the logs and the
    Home Assistant device (``pyproject.toml`` ``[project] version``, read back from the
    installed metadata). ``0+unknown`` when run from a tree that was never installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"

"""Config reload (SIGHUP): the file loaded off the loop, tighter limits applied at once, looser
ones when the belt is at rest, and sections that need a restart kept at their running values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from controller.rules.model import Event, SafetyConfig
from controller.rules.reload import merge_for_running
from controller.settings.config import ConfigError, load_config
from controller.settings.schema import AppConfig

logger = logging.getLogger(__name__)

#: Config sections read once at start-up: a change to one needs a restart.
RESTART_SECTIONS = ("serial", "gpio", "mqtt", "firmware", "treadmill", "state_dir")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes: the running ``config`` and ``safety`` from now, the looser
    ``pending`` limits to apply once the belt is at rest (or ``None``), and the event that
    says so."""

    config: AppConfig
    safety: SafetyConfig
    pending: SafetyConfig | None
    event: Event


async def load_for_reload(path: Path | None) -> AppConfig | Event:
    """The new config from ``path``, or the ``config_rejected`` event saying why the service
    keeps running on the previous one (every problem logged, one line each)."""
    if path is None:
        return Event("config_rejected", "no config file to reload")
    try:
        return await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        lines = exc.lines()
        for line in lines:
            logger.error("%s", line)
        return Event(
            "config_rejected",
            f"{path}: {len(lines)} problem(s); still running on the previous "
            f"config. First: {lines[0] if lines else '?'}",
            {"file": str(path), "problems": len(lines)},
        )


def plan_reload(
    running: AppConfig,
    running_safety: SafetyConfig,
    new_config: AppConfig,
    source: str,
    *,
    belt_at_rest: bool,
) -> ReloadPlan:
    """Apply a loaded, checked config as SIGHUP does: tighter limits at once, looser ones
    when the belt is at rest; a stage no longer in the table is clamped by the core at
    the next tick (SR-STAGE-6). Sections that need a restart keep their running values."""
    new_safety = new_config.safety()
    restart_needed = [
        section
        for section in RESTART_SECTIONS
        if getattr(new_config, section) != getattr(running, section)
    ]
    if "firmware" in restart_needed:
        # The firmware was configured at the handshake; its limits stay in force. The core
        # limits that mirror them are kept too, so the two layers agree.
        new_safety = dataclasses.replace(
            new_safety,
            machine_max_kmh=running_safety.machine_max_kmh,
            lease_ms=running_safety.lease_ms,
            stale_ms=running_safety.stale_ms,
        )
    if belt_at_rest:
        safety, pending = new_safety, None
        applied = "applied"
    else:
        safety, pending = merge_for_running(running_safety, new_safety), new_safety
        applied = "tighter limits applied now, looser ones when the belt is at rest"
    config = new_config.model_copy(update={s: getattr(running, s) for s in restart_needed})
    message = f"{source} reloaded: {applied}"
    if restart_needed:
        message += f"; changes to {', '.join(restart_needed)} need a restart"
    return ReloadPlan(config, safety, pending, Event("config_reloaded", message, {"file": source}))

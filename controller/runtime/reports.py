"""What the service reports about itself: its status line, the ``state`` payload and the
link, loop and MQTT counters.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from controller.adapters.mqtt.telemetry import state_payload
from controller.rules.model import CoreState, Decision, Inputs, SafetyConfig
from controller.runtime.stats import LoopStats
from firmware_bridge.port.bridge import FirmwareBridge

#: The inputs shown before the first tick: nothing held, nothing known of the firmware.
NO_INPUTS = Inputs(False, False, False, False, None)


def status_line(state: CoreState, inputs: Inputs | None) -> str:
    """One line for systemd's ``STATUS=``: mode, stage, measured speed, fault."""
    fault = f" fault={state.fault.code}" if state.fault else ""
    measured = ""
    if inputs is not None and inputs.firmware is not None:
        measured = f" belt={inputs.firmware.measured_kmh:.2f}km/h"
    return f"{state.mode} stage={state.stage}{measured}{fault}"


def belt_true_kmh(simulator: Any | None) -> float | None:
    """The simulated belt's true speed (km/h), or None on a real treadmill."""
    if simulator is None:
        return None
    return float(simulator.firmware.true_speed_kmh)


def link_info(
    bridge: FirmwareBridge | None, loop_stats: LoopStats, publisher: Any | None
) -> dict[str, object]:
    """The link, loop and MQTT counters (docs/mqtt.md ``diagnostics``)."""
    info: dict[str, object] = {}
    if bridge is not None:
        info.update(dataclasses.asdict(bridge.stats))
    info["loop"] = loop_stats.as_dict()
    if publisher is not None:
        info["mqtt"] = dataclasses.asdict(publisher.stats)
    return info


def state_telemetry(
    now_ms: int,
    state: CoreState,
    inputs: Inputs | None,
    safety: SafetyConfig,
    *,
    simulator: Any | None,
    bridge: FirmwareBridge | None,
    link: dict[str, object] | None,
    session: dict[str, object] | None,
    decision: Decision | None,
) -> dict[str, object]:
    """The ``state`` payload (docs/mqtt.md) at ``now_ms``; ``link`` adds the counters."""
    hello = bridge.hello if bridge is not None else None
    return state_payload(
        ts=datetime.now(UTC),
        now_ms=now_ms,
        core=state,
        inputs=inputs if inputs is not None else NO_INPUTS,
        safety=safety,
        belt_kmh=belt_true_kmh(simulator),
        link=link,
        session=session,
        warnings=sorted(state.warnings),
        firmware_version=hello.fw_version if hello is not None else None,
        decision=decision,
    )

"""The firmware's status report: when it is fresh and usable, and the checks on it (missing or
stale status, invalid speed reading, firmware fault, reboot, configuration mismatch)
(SR-STALE-1, SR-PLAUS-4, SR-FW-1..3).
"""

from __future__ import annotations

import math
from typing import Final

from controller.rules.faults import POWER_CHAIN_FAULTS, latch
from controller.rules.model import (
    CoreState,
    FaultCode,
    FirmwareState,
    FirmwareStatus,
    SafetyConfig,
    StopKind,
)
from controller.rules.tick import Step, replace
from firmware_bridge.wire.faults import CATEGORY_0_FAULTS
from firmware_bridge.wire.messages import FwFault

FW_FAULT_SAFETY_KEY_OPEN: Final = int(FwFault.SAFETY_KEY_OPEN)
"""Firmware fault code: its safety-key circuit opened (FW-10)."""

FW_FAULT_ESTOP: Final = int(FwFault.ESTOP)
"""Firmware fault code: it received ESTOP (FW-5): this controller sent it."""

FIRMWARE_EMERGENCY_FAULT_CODES: Final = frozenset(int(code) for code in CATEGORY_0_FAULTS)
"""Firmware fault codes the controller answers with an emergency stop (SR-FW-1): exactly the
category-0 faults of the wire data dictionary (firmware_bridge/wire/faults.py), for which the
firmware has already cut motor power; a controlled ramp would claim a control it no longer
has."""


def firmware_fresh(firmware: FirmwareStatus | None, config: SafetyConfig, now_ms: int) -> bool:
    """A firmware status exists and is at most ``stale_ms`` old (SR-STALE-1).

    The one definition of a fresh status: the core, the service (watchdog, shutdown) and
    telemetry (``firmware.link``) all use it, through :attr:`Decision.firmware_fresh`.
    """
    return firmware is not None and now_ms - firmware.received_ms <= config.stale_ms


def status_problem(
    firmware: FirmwareStatus | None, config: SafetyConfig, now_ms: int
) -> str | None:
    """Why ``firmware`` cannot be trusted for a speed reading now, or None when it can.

    A status is usable when it exists, is at most ``stale_ms`` old and carries a finite,
    non-negative measured speed (SR-STALE-1, SR-PLAUS-4).
    """
    if firmware is None:
        return "no firmware status has been received"
    if not firmware_fresh(firmware, config, now_ms):
        age_ms = now_ms - firmware.received_ms
        return f"the last firmware status is {age_ms} ms old (limit {config.stale_ms} ms)"
    if not (math.isfinite(firmware.measured_kmh) and firmware.measured_kmh >= 0.0):
        return f"the measured belt speed {firmware.measured_kmh!r} km/h is not a valid reading"
    return None


def check_firmware(step: Step) -> None:
    """Stale or invalid status, firmware fault, reboot, config mismatch (SR-STALE-*, SR-FW-*)."""
    firmware = step.inputs.firmware
    config = step.config
    if firmware is None:
        latch(
            step,
            FaultCode.LINK_STALE,
            StopKind.CONTROLLED,
            "Motor controller silent: no firmware status has been received",
        )
        return
    age_ms = step.now_ms - firmware.received_ms
    if not firmware_fresh(firmware, config, step.now_ms):
        latch(
            step,
            FaultCode.LINK_STALE,
            StopKind.CONTROLLED,
            f"Motor controller silent: the last firmware status is {age_ms} ms old "
            f"(limit {config.stale_ms} ms)",
        )
    elif step.fresh is None:
        latch(
            step,
            FaultCode.NOT_FOLLOWING,
            StopKind.CONTROLLED,
            f"Speed sensor: the measured belt speed {firmware.measured_kmh!r} km/h is not a "
            "valid reading",
        )
    if firmware.fault_code != 0 or firmware.state is FirmwareState.FAULT:
        stop = (
            StopKind.EMERGENCY
            if firmware.fault_code in FIRMWARE_EMERGENCY_FAULT_CODES
            else StopKind.CONTROLLED
        )
        latch(
            step,
            FaultCode.FIRMWARE_FAULT,
            stop,
            f"The motor controller reports fault code {firmware.fault_code} "
            f"(state {firmware.state.value})",
            follows=_firmware_fault_follows(step.state, firmware.fault_code),
        )
    if step.state.boot_id is None:
        step.state = replace(step.state, boot_id=firmware.boot_id)
    elif firmware.boot_id != step.state.boot_id:
        latch(
            step,
            FaultCode.FIRMWARE_REBOOT,
            StopKind.CONTROLLED,
            f"The motor controller restarted (boot id {step.state.boot_id} -> {firmware.boot_id})",
        )
    if firmware.config_checksum != firmware.expected_config_checksum:
        latch(
            step,
            FaultCode.CONFIG_MISMATCH,
            StopKind.CONTROLLED,
            f"The motor controller's configuration checksum 0x{firmware.config_checksum:08x} "
            f"differs from the one sent, 0x{firmware.expected_config_checksum:08x}",
        )


def _firmware_fault_follows(state: CoreState, fault_code: int) -> frozenset[FaultCode]:
    """The first causes a firmware fault code follows from (SR-FAULT-6): its safety circuit
    opened by the e-stop or the key, or its ESTOP latch from this controller's own EStop."""
    if fault_code == FW_FAULT_SAFETY_KEY_OPEN:
        return POWER_CHAIN_FAULTS
    fault = state.fault
    if fault_code == FW_FAULT_ESTOP and fault is not None and fault.stop is StopKind.EMERGENCY:
        return frozenset({fault.code})
    return frozenset()

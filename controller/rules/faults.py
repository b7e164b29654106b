"""Latching faults and changing modes: what the user must do for each fault
(``FAULT_ADVICE``), :func:`latch` and :func:`enter` (SR-MODE-1, SR-MODE-3, SR-FAULT-1..3,
SR-FAULT-6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from controller.rules import transitions
from controller.rules.model import Fault, FaultCode, Mode, StopKind
from controller.rules.tick import Record, replace

FAULT_ADVICE: Final[Mapping[FaultCode, str]] = {
    FaultCode.GRIP_LOST: "Hold the rails, then press RESET",
    FaultCode.GRIP_SENSOR: (
        "Check the rail grip sensors and their wiring (wet or gloved hands can chatter), "
        "then press RESET"
    ),
    FaultCode.ESTOP: "Release the e-stop, then press RESET with the belt at rest",
    FaultCode.SAFETY_KEY: (
        "Put the safety key back, clip its cord to your clothing, then press RESET"
    ),
    FaultCode.LINK_STALE: (
        "Check the USB cable to the motor controller; press RESET once the link is back"
    ),
    FaultCode.OVERSPEED: (
        "Step off the belt. Have the speed sensor and motor controller checked, "
        "then press RESET with the belt at rest"
    ),
    FaultCode.NOT_FOLLOWING: (
        "Check the belt for a stall or obstruction, the speed sensor and the motor "
        "controller, then press RESET"
    ),
    FaultCode.MOVING_AT_REST: (
        "Step off the belt and have the motor controller checked, then press RESET"
    ),
    FaultCode.FIRMWARE_FAULT: (
        "Read the firmware fault code in the log and fix its cause, then press RESET (it also "
        "clears the motor controller's fault)"
    ),
    FaultCode.FIRMWARE_REBOOT: (
        "The motor controller restarted unexpectedly (power or watchdog): check its supply, "
        "then press RESET"
    ),
    FaultCode.CONFIG_MISMATCH: (
        "The motor controller holds other limits than configured: restart the service so it "
        "sends them again, then press RESET"
    ),
    FaultCode.INTERNAL: "Internal controller error: read the log, then restart the service",
    FaultCode.CHANNELS_DISAGREE: (
        "Step off the belt. Check both belt speed sensors (the motor controller's and the "
        "Pi's), their magnets and wiring, and the belt for slip; then press RESET with the "
        "belt at rest"
    ),
    FaultCode.BELT_SENSOR: (
        "Check the Pi's belt sensor input (belt_sensor in the config) and its wiring, then "
        "press RESET"
    ),
}
"""What the user must do to clear each fault (shown in every fault event; no final full stop)."""


POWER_CHAIN_FAULTS: Final = frozenset({FaultCode.ESTOP, FaultCode.SAFETY_KEY})
"""Console faults that open the motor power chain (e-stop and key are wired in series with
it): the firmware then reads its safety-key circuit open and latches its own fault."""


def enter(step: Record, mode: Mode, reason: str) -> None:
    """Change mode and report it as ``old -> new (reason)`` (SR-MODE-1).

    A change missing from the transition table is an internal error: the mode stays and
    ``internal`` latches with a controlled stop instead (SR-MODE-3). Entering FAULTED is
    never refused, so the fail-safe path always ends.
    """
    old = step.state.mode
    if mode is not Mode.FAULTED and not transitions.is_allowed(old, mode):
        latch(
            step,
            FaultCode.INTERNAL,
            StopKind.CONTROLLED,
            f"Internal error: mode change {old.value} -> {mode.value} ({reason}) is not in "
            "the mode-transition table",
        )
        return
    step.state = replace(step.state, mode=mode)
    step.emit(
        "transition",
        f"{old.value} -> {mode.value} ({reason})",
        **{"from": old.value, "to": mode.value, "reason": reason},
    )


def latch(
    step: Record,
    code: FaultCode,
    stop: StopKind,
    seen: str,
    *,
    follows: frozenset[FaultCode] = frozenset(),
) -> None:
    """Latch a fault, or upgrade/record it when already FAULTED (SR-FAULT-1..3).

    ``follows``: latched first causes this observation is a consequence of; it is then
    folded into that cause (SR-FAULT-6) instead of reported as a fault of its own. A new
    fault of its own cancels a RESET waiting for the firmware (SR-RESET-3).
    """
    state = step.state
    current = state.fault
    message = f"{seen}. {FAULT_ADVICE[code]}."
    fault = Fault(code=code, message=message, since_ms=step.now_ms, stop=stop)
    if current is None:
        step.state = replace(
            step.state,
            fault=fault,
            stop_reason=code.value,
        )
        enter(step, Mode.FAULTED, code.value)
        step.emit(
            "fault",
            message,
            code=code.value,
            stop=stop.value,
            since_ms=step.now_ms,
            upgraded_from=None,
        )
        return
    if code is current.code or code in state.secondary_faults:
        return
    # Every cause in a ``follows`` set stops with an emergency stop, so folding never hides
    # a stop upgrade (SR-FAULT-2).
    if current.code in follows:
        step.state = replace(step.state, secondary_faults=(*state.secondary_faults, code))
        step.emit(
            "fault_folded",
            f"{seen}: a consequence of fault {current.code.value}, cleared with it",
            code=code.value,
            cause=current.code.value,
        )
        return
    _record_further_fault(step, fault, current)


def _record_further_fault(step: Record, fault: Fault, current: Fault) -> None:
    """A fault of its own while ``current`` is latched. It cancels a RESET waiting for the
    firmware (SR-RESET-3). An emergency upgrades a controlled stop and keeps the first fault
    as a secondary one (SR-FAULT-2); any other fault is recorded beside it (SR-FAULT-3)."""
    step.state = replace(step.state, reset_armed_ms=None)
    secondary = step.state.secondary_faults
    if fault.stop is StopKind.EMERGENCY and current.stop is StopKind.CONTROLLED:
        step.state = replace(step.state, fault=fault, secondary_faults=(*secondary, current.code))
        step.emit(
            "fault",
            f"{fault.message} (stop upgraded to an emergency stop; first fault: "
            f"{current.code.value})",
            code=fault.code.value,
            stop=fault.stop.value,
            since_ms=fault.since_ms,
            upgraded_from=current.code.value,
        )
        return
    step.state = replace(step.state, secondary_faults=(*secondary, fault.code))
    step.emit(
        "fault",
        f"{fault.message} (also seen while fault {current.code.value} is latched)",
        code=fault.code.value,
        stop=fault.stop.value,
        since_ms=fault.since_ms,
        upgraded_from=None,
    )

"""The local RESET: a latched fault cleared at rest, after the firmware has cleared its own,
never starting the belt (SR-RESET-1..5).
"""

from __future__ import annotations

from typing import Final

from controller.rules.faults import enter
from controller.rules.model import Button, Fault, FirmwareState, FirmwareStatus, Mode, Press
from controller.rules.readiness import reset_blockers
from controller.rules.stages import stage_config, stage_limit_kmh
from controller.rules.tick import Step, replace, sentence

RESET_CLEAR_TIMEOUT_MS: Final = 1000
"""A RESET that sent CLEAR_FAULT waits this long for the firmware to clear (SR-RESET-3)."""


def clear_remote_stage_cap(step: Step) -> None:
    """RESET with no fault latched: in IDLE it lifts the remote stage cap, a deliberate,
    local and reported act (SR-RESET-5); in any other mode it does nothing."""
    state = step.state
    if state.mode is Mode.IDLE and state.remote_stage_cap is not None:
        step.state = replace(step.state, remote_stage_cap=None)
        step.emit(
            "stage_cap_changed",
            f"remote stage cap {state.remote_stage_cap} cleared by RESET at the console",
            from_cap=state.remote_stage_cap,
            to_cap=None,
        )


def refuse_reset(step: Step, fault: Fault, reasons: tuple[str, ...]) -> None:
    """Report a refused RESET with every reason and what to do (SR-RESET-2); the fault stays."""
    step.emit(
        "reset_refused",
        sentence("reset refused", reasons),
        reasons=" | ".join(reasons),
        fault=fault.code.value,
    )


def reset(step: Step) -> None:
    """Local RESET: FAULTED -> IDLE at rest, never starting the belt (SR-RESET-1..5)."""
    state = step.state
    inputs = step.inputs
    fault = state.fault
    if fault is None:
        clear_remote_stage_cap(step)
        return
    problems = reset_blockers(state, inputs, step.config, step.now_ms)
    firmware = inputs.firmware
    if problems or firmware is None:
        step.state = replace(step.state, reset_armed_ms=None)
        refuse_reset(step, fault, problems)
        return
    if firmware.fault_code != 0 or firmware.state is FirmwareState.FAULT:
        step.clear_firmware_fault = True
        step.state = replace(step.state, reset_armed_ms=step.now_ms)
        step.emit(
            "reset_pending",
            f"the motor controller reports fault code {firmware.fault_code}: sent CLEAR_FAULT; "
            "the reset completes as soon as it has cleared",
            firmware_fault=firmware.fault_code,
        )
        return
    _complete_reset(step, fault, firmware)


def continue_reset(step: Step) -> None:
    """A RESET waiting for the firmware to clear its fault completes once it has, if every
    reset condition still holds; else it is refused (SR-RESET-3). A RESET pressed in this
    tick is handled by :func:`reset` instead."""
    state = step.state
    armed_ms = state.reset_armed_ms
    fault = state.fault
    if armed_ms is None or fault is None or Press(Button.RESET) in step.inputs.local:
        return
    problems = reset_blockers(state, step.inputs, step.config, step.now_ms)
    firmware = step.inputs.firmware
    if problems or firmware is None:
        step.state = replace(step.state, reset_armed_ms=None)
        refuse_reset(step, fault, problems)
        return
    if firmware.fault_code == 0 and firmware.state is not FirmwareState.FAULT:
        _complete_reset(step, fault, firmware)
        return
    if step.now_ms - armed_ms > RESET_CLEAR_TIMEOUT_MS:
        step.state = replace(step.state, reset_armed_ms=None)
        reason = (
            f"the motor controller still reports fault code {firmware.fault_code} "
            f"{RESET_CLEAR_TIMEOUT_MS} ms after CLEAR_FAULT: read its fault code in the log, "
            "fix the cause, then press RESET"
        )
        refuse_reset(step, fault, (reason,))


def _complete_reset(step: Step, fault: Fault, firmware: FirmwareStatus) -> None:
    """FAULTED -> IDLE: the fault record cleared, the belt stays stopped (SR-RESET-4)."""
    state = step.state
    stage = stage_config(state, step.config)
    step.state = replace(
        step.state,
        fault=None,
        secondary_faults=(),
        fault_rest_reached=False,
        reset_armed_ms=None,
        stop_reason=None,
        target_kmh=min(stage.start_kmh, stage_limit_kmh(stage, step.config)),
        boot_id=firmware.boot_id,
        link_session=link.session if (link := step.inputs.link) is not None else state.link_session,
    )
    # The speed timers are already clear: a reset needs the belt measured at rest. The
    # commanded speed drops to 0 in the ramp step, as in every IDLE tick.
    step.reset_done = True
    enter(step, Mode.IDLE, "reset")
    step.emit(
        "fault_cleared",
        f"fault {fault.code.value} cleared by RESET; the belt stays stopped until START",
        code=fault.code.value,
    )

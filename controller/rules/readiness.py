"""What must hold before a START or a RESET is accepted, each missing condition with what to do
(SR-START-2, SR-RESET-2).
"""

from __future__ import annotations

from controller.rules.channels import belt_sensor_text, second_channel_at_rest
from controller.rules.faults import FAULT_ADVICE
from controller.rules.firmware_status import status_problem
from controller.rules.grip import (
    WARNING_GRIP_SUSPECT,
    grip_text,
    grip_watched,
    hands_on_rails,
    hands_text,
)
from controller.rules.link import link_blockers
from controller.rules.model import CoreState, FaultCode, FirmwareState, Inputs, SafetyConfig
from controller.rules.rest import belt_at_rest
from controller.rules.stages import stage_config


def start_blockers(
    state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int
) -> tuple[str, ...]:
    """Everything that stops a START from being accepted now, each with what to do (SR-START-2).

    Empty when the belt may start. :func:`decide` also requires mode IDLE, a local press
    and no stop request in the same tick.
    """
    problems: list[str] = []
    if state.fault is not None:
        problems.append(
            f"fault {state.fault.code.value} is latched: {FAULT_ADVICE[state.fault.code]}"
        )
    problems.extend(_rest_blockers(inputs, config, now_ms))
    problems.extend(link_blockers(state, inputs, config, now_ms))
    firmware = inputs.firmware
    if firmware is not None:
        if firmware.state is not FirmwareState.IDLE:
            problems.append(
                f"the motor controller is in state {firmware.state.value}, not idle: "
                "wait until it is ready"
            )
        if firmware.fault_code != 0:
            problems.append(
                f"the motor controller reports fault code {firmware.fault_code}: press RESET"
            )
    stage = stage_config(state, config)
    hands = hands_on_rails(inputs)
    if hands < stage.grip_hands_required:
        problems.append(
            f"stage {stage.number} needs {hands_text(stage.grip_hands_required)} on the rails "
            f"({grip_text(inputs)}): hold the rails"
        )
    if grip_watched(stage) and WARNING_GRIP_SUSPECT in state.warnings:
        problems.append(
            "the grip sensors are chattering: check the rail sensors and keep the hands still"
        )
    return tuple(problems)


def reset_blockers(
    state: CoreState, inputs: Inputs, config: SafetyConfig, now_ms: int
) -> tuple[str, ...]:
    """Everything that stops a RESET from being accepted now, each with what to do (SR-RESET-2).

    A firmware fault is not listed: a reset sends CLEAR_FAULT for it (SR-RESET-3).
    """
    problems = list(_rest_blockers(inputs, config, now_ms))
    if state.fault is not None and FaultCode.INTERNAL in (
        state.fault.code,
        *state.secondary_faults,
    ):
        problems.append(
            "an internal controller error is latched: read the log, then restart the service"
        )
    if grip_watched(stage_config(state, config)) and WARNING_GRIP_SUSPECT in state.warnings:
        problems.append(
            "the grip sensors are chattering: check the rail sensors and keep the hands still"
        )
    return tuple(problems)


def _rest_blockers(inputs: Inputs, config: SafetyConfig, now_ms: int) -> list[str]:
    """Conditions shared by start and reset: a quiet, safe, at-rest machine."""
    problems: list[str] = []
    if inputs.estop_pressed:
        problems.append("the e-stop is pressed: release it")
    if not inputs.safety_key_present:
        problems.append("the safety key is out: put it back and clip the cord to your clothing")
    firmware = inputs.firmware
    problem = status_problem(firmware, config, now_ms)
    if problem is not None or firmware is None:
        problems.append(f"{problem}: check the USB link to the motor controller")
        return problems
    if not firmware.safety_key_closed:
        problems.append("the motor controller reads the safety key circuit open: put the key back")
    if not belt_at_rest(firmware, config):
        problems.append(
            f"the belt is moving ({firmware.measured_kmh:.2f} km/h measured, "
            f"{firmware.commanded_kmh:.2f} km/h set in the motor controller): "
            "wait until it stands still"
        )
    elif not second_channel_at_rest(inputs, config):
        problems.append(
            f"the Pi's belt sensor still sees the belt moving ({belt_sensor_text(inputs)}): "
            "wait until it stands still"
        )
    if firmware.config_checksum != firmware.expected_config_checksum:
        problems.append(
            f"the motor controller's configuration checksum 0x{firmware.config_checksum:08x} "
            f"differs from 0x{firmware.expected_config_checksum:08x}: restart the service"
        )
    return problems

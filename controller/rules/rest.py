"""The belt at rest: the one definition of rest, STOPPING -> IDLE on reaching it, a latched
fault remembering it, and the stop on a zero target (SR-STOP-2, SR-STOP-3, SR-SPEED-5).
"""

from __future__ import annotations

from controller.rules.channels import second_channel_at_rest
from controller.rules.emergencies import emergency_input
from controller.rules.faults import enter
from controller.rules.model import CoreState, FirmwareStatus, Mode, SafetyConfig
from controller.rules.stages import stage_config, stage_limit_kmh
from controller.rules.tick import Step, replace


def belt_at_rest(firmware: FirmwareStatus, config: SafetyConfig) -> bool:
    """The belt stands still: both the measured speed and the firmware's own ramped set-point
    are at or below ``standstill_kmh`` (SR-STOP-2). A coarse speed sensor can read 0 while a
    slow belt still creeps; the firmware's set-point cannot."""
    return (
        firmware.measured_kmh <= config.standstill_kmh
        and firmware.commanded_kmh <= config.standstill_kmh
    )


def at_rest(state: CoreState, fresh: FirmwareStatus | None, config: SafetyConfig) -> bool:
    """The belt is at rest for everything that needs it (reload, client change, trainer
    action, shutdown): the mode is IDLE or FAULTED, the firmware status is usable
    (``fresh``, see :func:`status_problem`) and :func:`belt_at_rest` holds, so a slowly
    creeping belt with a speed sensor that already reads 0 does not count (SR-STOP-2)."""
    return (
        state.mode in (Mode.IDLE, Mode.FAULTED)
        and fresh is not None
        and belt_at_rest(fresh, config)
    )


def stop_on_zero_target(step: Step) -> None:
    """A target at or below standstill while RUNNING is a controlled stop (SR-SPEED-5)."""
    if step.state.mode is Mode.RUNNING and step.state.target_kmh <= step.config.standstill_kmh:
        step.state = replace(step.state, stop_reason="target_zero")
        enter(step, Mode.STOPPING, "target_zero")


def settle(step: Step) -> None:
    """STOPPING -> IDLE at rest; remember when a FAULTED belt has come to rest (SR-STOP-2)."""
    fresh = step.fresh
    state = step.state
    config = step.config
    if (
        fresh is None
        or not belt_at_rest(fresh, config)
        or not second_channel_at_rest(step.inputs, config)
    ):
        return
    if state.mode is Mode.STOPPING:
        stage = stage_config(state, config)
        step.state = replace(
            step.state, target_kmh=min(stage.start_kmh, stage_limit_kmh(stage, config))
        )
    reach_rest(step, fresh.measured_kmh)


def reach_rest(step: Step, speed_kmh: float) -> None:
    """The belt is at rest: STOPPING -> IDLE, or a FAULTED belt remembers rest (SR-STOP-2/3)."""
    state = step.state
    if state.mode is Mode.STOPPING:
        enter(step, Mode.IDLE, "at_rest")
        step.emit(
            "stopped",
            f"belt at rest ({speed_kmh:.2f} km/h); stop reason: {state.stop_reason}",
            reason=state.stop_reason,
        )
    elif (
        state.mode is Mode.FAULTED
        and state.fault is not None
        and state.fault.since_ms < step.now_ms
        and not emergency_input(step.inputs)
    ):
        # At rest, with the e-stop released and the key in, and not in the tick that latched
        # the fault (an emergency always sends ESTOP at least once): from now on the stop is
        # a plain Stop, so CLEAR_FAULT can clear the firmware's ESTOP latch (SR-STOP-3).
        step.state = replace(step.state, fault_rest_reached=True)

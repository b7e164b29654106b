"""Rules SR-STOP-4 (at rest needs the firmware's set-point too), SR-FAULT-5 (ESTOP repeats
only while needed) and SR-GRIP-9 (warn-only stages where grip is optional)."""

from __future__ import annotations

from controller.rules.model import (
    Button,
    EStop,
    FaultCode,
    GripLossAction,
    Mode,
    SafetyConfig,
    SetSpeed,
    Stop,
)
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    faulted_rig,
    running_rig,
    single_stage_config,
)

STOP = Stop(DEFAULT_CONFIG.stop_decel_kmh_s)


def test_SR_STOP_4_a_zero_reading_is_not_rest_while_the_firmware_still_ramps() -> None:
    rig = running_rig()
    rig.press(Button.STOP)
    assert rig.core.mode is Mode.STOPPING
    rig.measured_kmh = 0.0  # a coarse sensor reads 0 ...
    rig.fw_commanded_kmh = 0.4  # ... while the firmware's ramp is still at 0.4 km/h
    rig.run_ms(500)
    assert rig.core.mode is Mode.STOPPING
    rig.fw_commanded_kmh = 0.0
    assert rig.tick().state.mode is Mode.IDLE


def test_SR_STOP_4_start_and_reset_wait_for_the_firmware_set_point() -> None:
    rig = faulted_rig()
    rig.measured_kmh = 0.0
    rig.fw_commanded_kmh = 0.5
    decision = rig.press(Button.RESET)
    assert rig.core.mode is Mode.FAULTED
    refused = [e for e in decision.events if e.kind == "reset_refused"]
    assert refused
    assert "0.50 km/h set in the motor controller" in refused[0].message


def test_SR_FAULT_5_estop_repeats_while_pressed_then_stop_at_rest_lets_reset_complete() -> None:
    rig = running_rig()
    rig.estop = True
    assert rig.tick().motion == EStop()
    rig.measured_kmh = 0.0  # the belt has stopped
    for _ in range(20):
        assert rig.tick().motion == EStop()  # still pressed: ESTOP every tick
    rig.estop = False
    rig.tick()
    assert rig.tick().motion == STOP  # released and at rest
    # The firmware latched its own ESTOP fault; CLEAR_FAULT goes out and is not undone.
    rig.fw_fault = 6
    first = rig.press(Button.RESET)
    assert first.clear_firmware_fault
    assert rig.core.mode is Mode.FAULTED
    rig.fw_fault = 0
    rig.tick()
    assert rig.tick().motion == STOP
    assert rig.press(Button.RESET).state.mode is Mode.IDLE
    assert not isinstance(rig.tick().motion, SetSpeed)  # a reset never starts the belt


def test_SR_FAULT_5_belt_moving_again_after_rest_goes_back_to_estop() -> None:
    rig = faulted_rig(running=False)  # ESTOP latched, released, at rest
    rig.tick()
    assert rig.tick().motion == STOP
    rig.measured_kmh = 0.8  # the belt creeps on its own
    motions = [rig.tick().motion for _ in range(40)]
    assert motions[-1] == EStop()
    assert FaultCode.MOVING_AT_REST in rig.core.secondary_faults


def warn_only_optional_grip() -> SafetyConfig:
    return single_stage_config(hands=0, action=GripLossAction.WARN, grace_ms=500, clip=True)


def test_SR_GRIP_9_optional_grip_warn_stage_starts_without_hands_and_warns_once() -> None:
    config = warn_only_optional_grip()
    rig = running_rig(config)
    assert rig.core.mode is Mode.RUNNING
    rig.grip = (True, False)
    rig.run_ms(1000)
    assert rig.events("grip_warning") == []
    rig.grip = (False, False)
    rig.run_ms(400)
    assert rig.events("grip_warning") == []  # within the grace
    rig.run_ms(2000)
    assert len(rig.events("grip_warning")) == 1  # once per loss, belt still running
    assert rig.core.mode is Mode.RUNNING
    rig.grip = (False, True)
    rig.run_ms(config.grip_regrip_ms + TICK_MS)  # held again: the loss is over (SR-GRIP-10)
    rig.grip = (False, False)
    rig.run_ms(1000)
    assert len(rig.events("grip_warning")) == 2

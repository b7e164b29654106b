"""Rules SR-MODE-*, SR-MOTION-*, SR-START-* and SR-SPEED-* of docs/safety.md."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller.rules.core import decide, initial_state
from controller.rules.model import (
    Button,
    EStop,
    FirmwareState,
    Inputs,
    Mode,
    Press,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SetSpeed,
    SetTarget,
    Stop,
)
from controller.rules.motion import MAX_TICK_DT_MS
from controller.rules.readiness import start_blockers
from controller.rules.stages import stage_limit_kmh
from tests.core.support import (
    DEFAULT_CONFIG,
    faulted_rig,
    idle_rig,
    make_config,
    running_rig,
    single_stage_config,
    stage,
    status,
    stopping_rig,
    tick_while,
)

# ---------------------------------------------------------------- modes and motion


def test_SR_MODE_2_initial_state_is_idle_at_stage_1_start_speed() -> None:
    state = initial_state(DEFAULT_CONFIG)
    assert state.mode is Mode.IDLE
    assert state.stage == 1
    assert state.target_kmh == DEFAULT_CONFIG.stages[0].start_kmh
    assert state.commanded_kmh == 0.0
    assert state.fault is None


def test_SR_MODE_2_initial_state_refuses_a_config_without_stages() -> None:
    with pytest.raises(
        ValueError,
        match=r"^the safety configuration has no stages: configure at least stage 1$",
    ):
        initial_state(make_config(stages=()))


def test_SR_MODE_1_every_transition_is_reported_old_new_reason() -> None:
    rig = idle_rig()
    decision = rig.press(Button.START)
    transitions = [e for e in decision.events if e.kind == "transition"]
    assert len(transitions) == 1
    assert transitions[0].message == "idle -> running (start_button)"
    assert transitions[0].details == {"from": "idle", "to": "running", "reason": "start_button"}
    rig.press(Button.STOP)
    rig.run_ms(1000)
    assert rig.core.stop_reason == "stop_button"
    assert rig.press(Button.START).state.stop_reason is None
    messages = [e.message for e in rig.events("transition")][:3]
    assert messages == [
        "idle -> running (start_button)",
        "running -> stopping (stop_button)",
        "stopping -> idle (at_rest)",
    ]


def test_SR_MOTION_1_motion_command_follows_the_mode() -> None:
    idle = idle_rig()
    assert idle.tick().motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    running = running_rig()
    motion = running.tick().motion
    assert isinstance(motion, SetSpeed)
    assert motion.lease_ms == DEFAULT_CONFIG.lease_ms
    stopping = stopping_rig()
    assert stopping.history[-1].motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    faulted = faulted_rig()
    assert faulted.tick().motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    estopped = faulted_rig(running=False)
    estopped.estop = True
    assert estopped.tick().motion == EStop()
    estopped.estop = False
    estopped.tick()
    assert estopped.tick().motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)  # SR-STOP-3


def test_SR_MOTION_2_set_speed_carries_accel_rising_and_decel_falling() -> None:
    rig = running_rig(settle=False)
    rising = rig.tick().motion
    assert rising == SetSpeed(rig.core.commanded_kmh, 0.2, DEFAULT_CONFIG.lease_ms)
    tick_while(rig, lambda: rig.core.commanded_kmh < rig.core.target_kmh)
    holding = rig.tick().motion
    assert isinstance(holding, SetSpeed)
    assert holding.accel_kmh_s == 0.2
    rig.tick(SetTarget(0.3))
    falling = rig.tick().motion
    assert isinstance(falling, SetSpeed)
    assert falling.accel_kmh_s == 0.4


# ---------------------------------------------------------------- start


def test_SR_START_1_local_start_press_starts_from_idle() -> None:
    rig = idle_rig()
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.RUNNING
    assert decision.state.stop_reason is None
    assert isinstance(decision.motion, SetSpeed)
    assert [e.kind for e in decision.events] == ["transition", "started"]
    assert "stage 1" in decision.events[1].message


def test_SR_START_1_no_remote_command_starts_the_belt() -> None:
    rig = idle_rig()
    for remote in (RemoteStop(), RemoteLowerTarget(0.1)):
        decision = rig.tick(remote=(remote,))
        assert decision.state.mode is Mode.IDLE
        assert isinstance(decision.motion, Stop)


def test_SR_START_1_without_a_press_the_belt_never_starts() -> None:
    rig = idle_rig()
    decisions = rig.run_ms(5000)
    assert all(d.state.mode is Mode.IDLE for d in decisions)
    assert all(isinstance(d.motion, Stop) for d in decisions)


@pytest.mark.parametrize(
    ("knob", "value", "reason"),
    [
        ("grip", (False, False), "needs one hand on the rails"),
        ("fw_state", FirmwareState.BOOT, "state boot, not idle"),
        ("fw_state", FirmwareState.STOPPING, "state stopping, not idle"),
        ("measured_kmh", 0.5, "the belt is moving (0.50 km/h measured"),
    ],
)
def test_SR_START_2_start_refused_names_what_is_missing(
    knob: str, value: object, reason: str
) -> None:
    rig = idle_rig()
    setattr(rig, knob, value)
    decision = rig.press(Button.START)
    assert decision.state.mode is not Mode.RUNNING
    assert isinstance(decision.motion, Stop | EStop)
    refusals = [e for e in decision.events if e.kind == "start_refused"]
    assert len(refusals) == 1
    assert reason in refusals[0].message


def test_SR_START_2_two_hand_stage_needs_both_hands() -> None:
    rig = idle_rig(single_stage_config(hands=2))
    rig.grip = (True, False)
    refused = rig.press(Button.START)
    assert refused.state.mode is Mode.IDLE
    assert "needs 2 hands" in refused.events[0].message
    assert "left held, right released" in refused.events[0].message
    rig.grip = (True, True)
    assert rig.press(Button.START).state.mode is Mode.RUNNING


def test_SR_START_2_stage_without_grip_starts_hands_free() -> None:
    rig = idle_rig(stage_number=4)
    rig.grip = (False, False)
    assert rig.press(Button.START).state.mode is Mode.RUNNING


def test_SR_START_2_blockers_list_every_unsafe_condition() -> None:
    state = faulted_rig().core
    state = replace(state, warnings=frozenset({"grip_sensor_suspect"}))
    inputs = Inputs(
        grip_left=False,
        grip_right=False,
        estop_pressed=True,
        safety_key_present=False,
        firmware=status(
            1000, 1.0, state=FirmwareState.FAULT, fault_code=6, key_closed=False, checksum=9
        ),
    )
    blockers = start_blockers(state, inputs, DEFAULT_CONFIG, 1000)
    text = " | ".join(blockers)
    for expected in (
        "fault grip_lost is latched",
        "e-stop is pressed",
        "safety key is out",
        "reads the safety key circuit open",
        "belt is moving",
        "configuration checksum",
        "state fault, not idle",
        "fault code 6",
        "needs one hand",
        "grip sensors are chattering",
    ):
        assert expected in text, expected
    assert len(blockers) == 10


@pytest.mark.parametrize(
    ("firmware_age_ms", "measured_kmh", "expected"),
    [
        (None, 0.0, "no firmware status has been received"),
        (501, 0.0, "501 ms old (limit 500 ms)"),
        (0, math.nan, "not a valid reading"),
        (0, -1.0, "not a valid reading"),
    ],
)
def test_SR_START_2_blockers_refuse_an_unusable_firmware_status(
    firmware_age_ms: int | None, measured_kmh: float, expected: str
) -> None:
    state = initial_state(DEFAULT_CONFIG)
    firmware = None if firmware_age_ms is None else status(1000 - firmware_age_ms, measured_kmh)
    inputs = Inputs(True, True, False, True, firmware)
    blockers = start_blockers(state, inputs, DEFAULT_CONFIG, 1000)
    assert len(blockers) == 1
    assert expected in blockers[0]
    assert "check the USB link" in blockers[0]


def test_SR_START_2_blockers_are_empty_when_everything_is_ready() -> None:
    state = initial_state(DEFAULT_CONFIG)
    inputs = Inputs(True, False, False, True, status(1000))
    assert start_blockers(state, inputs, DEFAULT_CONFIG, 1000) == ()
    creeping = Inputs(True, False, False, True, status(1000, DEFAULT_CONFIG.standstill_kmh))
    assert start_blockers(state, creeping, DEFAULT_CONFIG, 1000) == ()


def test_SR_START_3_start_targets_at_least_the_start_speed_and_ramps_from_zero() -> None:
    rig = idle_rig()
    rig.tick(SetTarget(0.0))
    assert rig.core.target_kmh == 0.0
    decision = rig.press(Button.START)
    assert decision.state.target_kmh == 0.5
    assert decision.state.commanded_kmh == pytest.approx(0.2 * 0.020)
    rig2 = idle_rig()
    rig2.tick(SetTarget(1.5))
    assert rig2.press(Button.START).state.target_kmh == 1.5


def test_SR_START_4_start_with_a_stop_in_the_same_tick_is_refused() -> None:
    for stop in (Press(Button.STOP), RequestStop("session_complete")):
        rig = idle_rig()
        decision = rig.tick(Press(Button.START), stop)
        assert decision.state.mode is Mode.IDLE
        assert "stop was requested in the same tick" in decision.events[0].message
    rig = idle_rig()
    decision = rig.tick(Press(Button.START), remote=(RemoteStop(),))
    assert decision.state.mode is Mode.IDLE
    assert decision.events[0].kind == "start_refused"


def test_SR_START_4_start_in_the_same_tick_as_a_reset_is_refused() -> None:
    rig = faulted_rig()
    decision = rig.tick(Press(Button.RESET), Press(Button.START))
    assert decision.state.mode is Mode.IDLE
    refused = [e for e in decision.events if e.kind == "start_refused"]
    assert "a reset never starts the belt" in refused[0].message
    assert rig.press(Button.START).state.mode is Mode.RUNNING


def test_SR_START_5_start_while_stopping_or_faulted_is_refused() -> None:
    rig = stopping_rig()
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.STOPPING
    assert "the belt is stopping" in decision.events[0].message
    faulted = faulted_rig()
    decision = faulted.press(Button.START)
    assert decision.state.mode is Mode.FAULTED
    assert "fault grip_lost is latched" in decision.events[0].message


def test_SR_START_5_start_while_running_changes_nothing() -> None:
    rig = running_rig()
    before = rig.core
    decision = rig.press(Button.START)
    assert decision.events == ()
    assert decision.state.mode is Mode.RUNNING
    assert decision.state.target_kmh == before.target_kmh


# ---------------------------------------------------------------- speed


def test_SR_SPEED_1_commanded_never_exceeds_the_stage_limit() -> None:
    rig = running_rig()
    rig.tick(SetTarget(99.0))
    assert rig.core.target_kmh == 2.0
    decisions = rig.run_ms(20_000)
    assert max(d.state.commanded_kmh for d in decisions) == 2.0
    assert all(d.state.commanded_kmh >= 0.0 for d in decisions)


def test_SR_SPEED_1_machine_max_caps_a_stage_above_it() -> None:
    config = make_config(stage(1, max_kmh=8.0, accel_kmh_s=3.0), machine_max_kmh=3.0)
    rig = running_rig(config)
    assert stage_limit_kmh(config.stages[0], config) == 3.0
    rig.tick(SetTarget(8.0))
    rig.run_ms(5000)
    assert rig.core.commanded_kmh == 3.0
    corrupt = replace(rig.core, commanded_kmh=10.0)
    decision = decide(corrupt, rig.inputs(), config, rig.now_ms + 20)
    assert decision.state.commanded_kmh == 3.0


def test_SR_SPEED_2_rate_of_change_within_accel_and_decel() -> None:
    rig = running_rig(settle=False)
    rig.tick(SetTarget(2.0))
    previous = rig.core.commanded_kmh

    def ramping_within_the_limit() -> bool:
        nonlocal previous
        assert rig.core.commanded_kmh - previous <= 0.2 * 0.020 + 1e-12
        previous = rig.core.commanded_kmh
        return rig.core.commanded_kmh < 2.0

    tick_while(rig, ramping_within_the_limit)
    rig.tick(SetTarget(0.5))
    assert previous - rig.core.commanded_kmh == pytest.approx(0.4 * 0.020)
    previous = rig.core.commanded_kmh
    rig.tick()
    assert previous - rig.core.commanded_kmh == pytest.approx(0.4 * 0.020)


def test_SR_SPEED_3_a_long_pause_never_produces_a_jump() -> None:
    rig = running_rig(settle=False)
    before = rig.core.commanded_kmh
    rig.tick(dt_ms=10_000)
    assert rig.core.commanded_kmh - before == pytest.approx(0.2 * MAX_TICK_DT_MS / 1000)


def test_SR_SPEED_3_time_going_backwards_ramps_nothing() -> None:
    rig = running_rig(settle=False)
    before = rig.core.commanded_kmh
    rig.tick(dt_ms=-50)
    assert rig.core.commanded_kmh == before


def test_SR_SPEED_3_a_state_without_a_previous_tick_ramps_nothing() -> None:
    rig = running_rig(settle=False)
    state = replace(rig.core, last_tick_ms=None)
    decision = decide(state, rig.inputs(), DEFAULT_CONFIG, rig.now_ms + 20)
    assert decision.state.commanded_kmh == state.commanded_kmh


def test_SR_SPEED_4_faster_slower_step_and_clamp() -> None:
    rig = running_rig()
    decision = rig.press(Button.FASTER)
    assert decision.state.target_kmh == 0.6
    assert decision.events[0].kind == "target_changed"
    assert decision.events[0].message == "target 0.50 -> 0.60 km/h (faster)"
    rig.press(Button.SLOWER)
    rig.press(Button.SLOWER)
    assert rig.core.target_kmh == 0.4
    rig.tick(SetTarget(2.0))
    decision = rig.press(Button.FASTER)
    assert decision.state.target_kmh == 2.0
    assert decision.events[0].kind == "command_rejected"
    assert "the limit is 2.00 km/h at stage 1" in decision.events[0].message


def test_SR_SPEED_4_set_target_above_the_limit_is_clamped() -> None:
    rig = running_rig()
    decision = rig.tick(SetTarget(9.0))
    assert decision.state.target_kmh == 2.0
    assert decision.events[0].kind == "target_changed"


@pytest.mark.parametrize("bad_kmh", [-0.5, math.nan, math.inf])
def test_SR_SPEED_4_invalid_target_is_rejected(bad_kmh: float) -> None:
    rig = running_rig()
    decision = rig.tick(SetTarget(bad_kmh))
    assert decision.state.target_kmh == 0.5
    assert decision.events[0].kind == "command_rejected"
    assert "is not a speed" in decision.events[0].message


def test_SR_SPEED_4_target_cannot_be_raised_while_stopping_or_faulted() -> None:
    for rig in (stopping_rig(), faulted_rig()):
        before = rig.core.target_kmh
        decision = rig.press(Button.FASTER)
        assert decision.state.target_kmh == before
        assert "cannot be raised while" in decision.events[0].message
        lowered = rig.tick(SetTarget(0.1))
        assert lowered.state.target_kmh == 0.1


def test_SR_SPEED_4_target_unchanged_gives_no_event() -> None:
    for rig in (running_rig(), stopping_rig(), faulted_rig()):
        assert rig.tick(SetTarget(rig.core.target_kmh)).events == ()
    at_limit = running_rig()
    at_limit.tick(SetTarget(2.0))
    assert at_limit.tick(SetTarget(2.0)).events == ()


def test_SR_SPEED_4_targets_are_kept_to_a_millionth_of_a_km_h() -> None:
    rig = running_rig()
    assert rig.tick(SetTarget(1.23456789)).state.target_kmh == 1.234568
    for _ in range(7):
        rig.press(Button.FASTER)
    assert rig.core.target_kmh == 1.934568  # no float noise from repeated 0.1 steps


def test_SR_SPEED_4_faster_in_idle_presets_the_start_target() -> None:
    rig = idle_rig()
    assert rig.press(Button.FASTER).state.target_kmh == 0.6
    assert rig.press(Button.START).state.target_kmh == 0.6


def test_SR_SPEED_5_target_zero_while_running_is_a_controlled_stop() -> None:
    rig = running_rig()
    decision = rig.tick(SetTarget(0.0))
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.stop_reason == "target_zero"
    assert decision.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    rig2 = running_rig()
    for _ in range(5):
        rig2.press(Button.SLOWER)
    assert rig2.core.mode is Mode.STOPPING


def test_SR_SPEED_5_remote_target_zero_stops_too() -> None:
    rig = running_rig()
    decision = rig.tick(remote=(RemoteLowerTarget(0.0),))
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.fault is None


def test_SR_SPEED_1_commanded_ramps_down_to_a_tightened_limit() -> None:
    rig = running_rig(stage_number=3)
    rig.tick(SetTarget(5.0))
    rig.run_ms(15_000)
    assert rig.core.commanded_kmh == 5.0
    rig.stage_cap = 1
    decision = rig.tick()
    assert decision.state.stage == 1
    assert decision.state.target_kmh == 2.0
    # Stage 1's deceleration (0.4 km/h/s) applies from the tick the stage drops.
    assert decision.state.commanded_kmh == pytest.approx(5.0 - 0.4 * 0.020)
    rig.run_ms(10_000)
    assert rig.core.commanded_kmh == 2.0
    assert rig.core.mode is Mode.RUNNING
    assert all(fault is None for fault in (d.state.fault for d in rig.history))


def test_SR_SPEED_1_not_faulted_by_the_ideal_belt_over_a_long_run() -> None:
    rig = running_rig(stage_number=4)
    rig.grip = (False, False)
    for target in (8.0, 3.0, 6.0, 1.0):
        rig.tick(SetTarget(target))
        rig.run_ms(20_000)
        assert rig.core.commanded_kmh == target
    assert rig.core.mode is Mode.RUNNING
    assert rig.events("fault") == []

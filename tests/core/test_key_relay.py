"""SR-MON-*: key-relay (monitor) mode, where the treadmill's own console drives the belt and
the core can only hold or open a relay in series with its safety key."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.config_rules import check_safety_config
from controller.rules.key_relay import relay_start_blockers
from controller.rules.model import (
    Button,
    FaultCode,
    GripLossAction,
    Mode,
    Press,
    RemoteLowerTarget,
    RemoteStop,
    SetTarget,
)
from tests.core.relay_support import CONFIG, RELAY, armed, idle, relay_open, walking
from tests.core.support import TICK_MS, make_config, stage

# --------------------------------------------------------------------------- SR-MON-1


def test_SR_MON_1_relay_held_only_while_running() -> None:
    rig = idle()
    assert relay_open(rig.history[-1])
    rig = walking()
    assert all(d.key_relay for d in rig.run_ms(1000))
    decision = rig.press(Button.STOP)
    assert decision.state.mode is Mode.STOPPING
    assert relay_open(decision)


@pytest.mark.parametrize(
    ("knob", "value", "reason"),
    [
        ("estop", True, "e-stop is pressed"),
        ("key", False, "safety key is out"),
        ("grip", (False, False), "needs one hand"),
        ("belt_kmh", 1.0, "belt is moving"),
        ("sensor_missing", True, "belt sensor gives no reading"),
    ],
)
def test_SR_MON_1_start_closes_the_relay_only_when_every_condition_holds(
    knob: str, value: object, reason: str
) -> None:
    rig = idle()
    setattr(rig, knob, value)
    decision = rig.press(Button.START)
    assert relay_open(decision)
    assert decision.state.mode is not Mode.RUNNING
    events = [e for d in rig.history for e in d.events if e.kind == "start_refused"]
    if decision.state.fault is None:
        assert events
        assert reason in events[-1].message
    blockers = relay_start_blockers(rig.core, rig.inputs(), CONFIG)
    assert blockers


def test_SR_MON_1_no_remote_command_closes_the_relay() -> None:
    rig = idle()
    for command in (RemoteStop(), RemoteLowerTarget(0.5)):
        assert relay_open(rig.tick(remote=(command,)))


# --------------------------------------------------------------------------- SR-MON-2


def test_SR_MON_2_speed_above_the_stage_limit_plus_margin_opens_and_latches() -> None:
    rig = walking(2.0)
    rig.belt_kmh = 2.4  # stage 1 limit 2.0 + max(0.3, 5 %) = 2.3
    decisions = rig.run_ms(600)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.OVERSPEED
    assert relay_open(decisions[-1])
    latched_after_ms = next(i for i, d in enumerate(decisions) if not d.key_relay) * TICK_MS
    # overspeed_ms at the latest; sooner when the jump reads as a runaway (SR-PLAUS-5)
    assert latched_after_ms <= 500 + 2 * TICK_MS


def test_SR_MON_2_within_the_margin_keeps_running() -> None:
    rig = walking(2.0)
    rig.belt_kmh = 2.29
    assert all(d.key_relay for d in rig.run_ms(2000))


@settings(max_examples=100, deadline=None)
@given(speed_kmh=st.floats(1.0, 12.0))  # from 1.0 up: a sudden drop is SR-MON-4
def test_SR_MON_2_property_relay_opens_exactly_above_limit_plus_margin(speed_kmh: float) -> None:
    rig = walking(1.0)
    rig.belt_kmh = speed_kmh
    decisions = rig.run_ms(700)
    limit = 2.0 + 0.3
    assert decisions[-1].key_relay is (speed_kmh <= limit)


# --------------------------------------------------------------------------- SR-MON-3


def test_SR_MON_3_grip_loss_at_a_stop_stage_opens_the_relay_and_latches() -> None:
    rig = walking(1.0)
    rig.grip = (False, False)
    decisions = rig.run_ms(400)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.GRIP_LOST
    assert relay_open(decisions[-1])


def test_SR_MON_3_estop_and_key_open_the_relay_at_once() -> None:
    for knob, value, code in (
        ("estop", True, FaultCode.ESTOP),
        ("key", False, FaultCode.SAFETY_KEY),
    ):
        rig = walking(1.0)
        setattr(rig, knob, value)
        decision = rig.tick()
        assert relay_open(decision)
        assert decision.state.fault is not None
        assert decision.state.fault.code is code


def test_SR_MON_3_reset_at_rest_never_closes_the_relay() -> None:
    rig = walking(1.0)
    rig.estop = True
    rig.tick()
    rig.estop = False
    rig.belt_kmh = 0.0
    rig.tick()
    decision = rig.tick(Press(Button.RESET), Press(Button.START))
    assert decision.state.mode is Mode.IDLE
    assert relay_open(decision)
    assert any("never closes the key relay" in e.message for e in decision.events)


def test_SR_MON_3_reset_refused_while_the_belt_moves() -> None:
    rig = walking(1.0)
    rig.estop = True
    rig.tick()
    rig.estop = False
    decision = rig.press(Button.RESET)
    assert decision.state.mode is Mode.FAULTED
    assert any(e.kind == "reset_refused" for e in decision.events)


# --------------------------------------------------------------------------- SR-MON-4


@pytest.mark.parametrize("reading", [math.nan, -1.0, math.inf])
def test_SR_MON_4_invalid_or_missing_reading_opens_and_latches(reading: float) -> None:
    rig = walking(1.0)
    rig.belt_kmh = reading
    decision = rig.tick()
    assert relay_open(decision)
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.BELT_SENSOR
    rig2 = walking(1.0)
    rig2.sensor_missing = True
    assert relay_open(rig2.tick())


def test_SR_MON_4_a_reading_falling_faster_than_the_belt_can_stop_is_a_failed_sensor() -> None:
    rig = walking(4.0, stage_number=4)
    rig.run_ms(200)
    rig.belt_kmh = 2.0  # 2.0 km/h in at most 120 ms: above 15 km/h/s
    decision = rig.run_ms(120)[-1]
    assert relay_open(decision)
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.BELT_SENSOR
    assert "faster than the belt can stop" in decision.state.fault.message


def test_SR_MON_4_belt_stopped_at_the_console_opens_the_relay() -> None:
    rig = walking(1.0)
    rig.belt_kmh = 0.0
    decision = rig.tick(dt_ms=200)  # 5 km/h/s: a stop, not a failure
    assert decision.state.fault is None
    assert relay_open(decision)
    assert any(e.kind == "key_relay_opened" for e in decision.events)
    assert decision.state.mode is Mode.IDLE  # at rest at once


def test_SR_MON_4_no_motion_within_the_start_window_opens_the_relay() -> None:
    rig = armed()
    decisions = rig.run_ms(RELAY.start_window_ms - TICK_MS)
    assert all(d.key_relay for d in decisions)
    decisions = rig.run_ms(3 * TICK_MS)
    assert relay_open(decisions[-1])
    assert rig.core.fault is None
    assert rig.core.mode is Mode.IDLE


# --------------------------------------------------------------------------- SR-MON-5


def test_SR_MON_5_no_speed_command_from_here() -> None:
    rig = walking(1.0)
    for command in (SetTarget(1.5), Press(Button.FASTER), Press(Button.SLOWER)):
        decision = rig.tick(command)
        assert any(e.kind == "command_rejected" for e in decision.events)
        assert decision.key_relay
    decision = rig.tick(remote=(RemoteLowerTarget(0.5),))
    assert any(e.kind == "command_rejected" for e in decision.events)
    decision = rig.tick(remote=(RemoteStop(),))
    assert relay_open(decision)


def test_SR_MON_5_stage_is_lowered_by_the_cap_at_once() -> None:
    rig = walking(3.0, stage_number=2)
    rig.stage_cap = 1
    decisions = rig.run_ms(600)  # now stage 1: 3.0 > 2.3
    assert rig.core.stage == 1
    assert relay_open(decisions[-1])


# --------------------------------------------------------------------------- SR-CONFIG-10


def test_SR_CONFIG_10_key_relay_mode_needs_the_belt_sensor_and_no_slow_stage() -> None:
    config = make_config(
        stage(1, action=GripLossAction.SLOW, slow_kmh=0.5),
        key_relay=RELAY,
    )
    found = {p.key_path for p in check_safety_config(config)}
    assert "second_channel" in found
    assert "stages[0].on_grip_loss" in found
    assert check_safety_config(CONFIG) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hold_off_ms", 10),
        ("hold_off_ms", 600),
        ("start_window_ms", 100),
        ("max_belt_decel_kmh_s", 1.0),
    ],
)
def test_SR_CONFIG_10_ranges(field: str, value: float) -> None:
    config = replace(CONFIG, key_relay=replace(RELAY, **{field: value}))  # type: ignore[arg-type]  # mixed int/float fields
    assert [p.key_path for p in check_safety_config(config)] == [f"key_relay.{field}"]


def test_SR_MON_5_console_buttons_and_service_stops() -> None:
    from controller.rules.model import RemoteLowerStageCap, RequestStop

    rig = idle()
    assert rig.press(Button.STAGE_UP).state.stage == 2
    assert rig.press(Button.STAGE_DOWN).state.stage == 1
    rig.tick(remote=(RemoteLowerStageCap(1),))  # already 1: rejected, nothing changes
    rig = walking(1.0)
    decision = rig.tick(RequestStop("session_complete"))
    assert decision.state.mode is Mode.STOPPING
    assert relay_open(decision)
    refused = rig.press(Button.START)  # still stopping: the belt has not come to rest
    assert any("belt is stopping" in e.message for e in refused.events)
    rig.belt_kmh = 0.0
    rig.tick(dt_ms=500)
    assert rig.core.mode is Mode.IDLE
    decision = rig.tick(Press(Button.STOP), Press(Button.START))
    assert any("stop was requested in the same tick" in e.message for e in decision.events)
    assert relay_open(decision)


def test_SR_MON_5_reset_in_idle_clears_the_remote_stage_cap() -> None:
    from controller.rules.model import RemoteLowerStageCap

    rig = idle(stage_number=3)
    rig.tick(remote=(RemoteLowerStageCap(2),))
    assert rig.core.remote_stage_cap == 2
    decision = rig.press(Button.RESET)
    assert decision.state.remote_stage_cap is None
    assert relay_open(decision)


def test_SR_MON_1_chattering_grip_sensor_blocks_start() -> None:
    rig = idle()
    for _ in range(12):
        rig.grip = (not rig.grip[0], rig.grip[1])
        rig.tick()
    rig.grip = (True, True)
    decision = rig.press(Button.START)
    assert relay_open(decision)
    assert any("chattering" in e.message for e in decision.events)


def test_SR_MON_1_start_while_running_and_reset_while_running_change_nothing() -> None:
    rig = walking(1.0)
    assert rig.press(Button.START).key_relay
    decision = rig.press(Button.RESET)
    assert decision.key_relay
    assert decision.state.mode is Mode.RUNNING


def test_SR_MON_4_a_belt_stopping_at_the_power_cut_rate_is_not_a_sensor_fault() -> None:
    rig = walking(4.0, stage_number=4)
    rig.run_ms(200)
    while rig.belt_kmh > 0.0:  # 10 km/h/s, with pulse-to-pulse jitter of +-0.2 km/h
        rig.belt_kmh = max(0.0, rig.belt_kmh - 0.2 + (0.2 if rig.now_ms % 40 else -0.2))
        rig.tick()
    rig.run_ms(200)
    assert rig.core.fault is None

"""Rules SR-STAGE-* and SR-GRIP-* of docs/safety.md."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.rules.core import decide
from controller.rules.grip import WARNING_GRIP_STUCK, WARNING_GRIP_SUSPECT, grip_watched
from controller.rules.model import (
    Button,
    FaultCode,
    GripLossAction,
    Mode,
    RemoteLowerStageCap,
    SelectStage,
    SetSpeed,
    SetTarget,
    Stop,
    StopKind,
)
from controller.rules.stages import effective_stage_cap
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    faulted_rig,
    idle_rig,
    make_config,
    running_rig,
    single_stage_config,
    stage,
    stopping_rig,
)

# ---------------------------------------------------------------- stages


def test_SR_STAGE_1_raise_stage_in_idle_up_to_the_cap() -> None:
    rig = idle_rig()
    rig.stage_cap = 2
    decision = rig.press(Button.STAGE_UP)
    assert decision.state.stage == 2
    assert decision.events[0].kind == "stage_changed"
    assert "stage 1 (assisted backward walk) -> stage 2" in decision.events[0].message
    refused = rig.press(Button.STAGE_UP)
    assert refused.state.stage == 2
    assert refused.events[0].kind == "command_rejected"
    assert "stage 3 is above the allowed stage 2" in refused.events[0].message


def test_SR_STAGE_1_raise_stage_refused_unless_idle() -> None:
    for rig in (running_rig(), stopping_rig(), faulted_rig()):
        decision = rig.tick(SelectStage(2))
        assert decision.state.stage == 1
        rejected = [e for e in decision.events if e.kind == "command_rejected"]
        assert "only be raised with the belt idle" in rejected[0].message


def test_SR_STAGE_2_lowering_works_in_every_mode_and_tightens_at_once() -> None:
    for make in (idle_rig, running_rig, stopping_rig, faulted_rig):
        rig = make(DEFAULT_CONFIG, 2)
        decision = rig.press(Button.STAGE_DOWN)
        assert decision.state.stage == 1, make
        assert decision.state.target_kmh <= 2.0
        assert decision.events[0].kind == "stage_changed"


def test_SR_STAGE_2_lowering_while_running_clamps_the_target() -> None:
    rig = running_rig(stage_number=2)
    rig.tick(SetTarget(3.0))
    rig.run_ms(12_000)
    decision = rig.tick(SelectStage(1))
    assert decision.state.target_kmh == 2.0
    assert decision.state.commanded_kmh == pytest.approx(3.0 - 0.4 * 0.020)
    assert isinstance(decision.motion, SetSpeed)
    assert decision.motion.accel_kmh_s == 0.4


def test_SR_STAGE_3_stage_numbers_outside_the_table_are_rejected() -> None:
    rig = idle_rig()
    for number in (0, 5, -1):
        decision = rig.tick(SelectStage(number))
        assert decision.state.stage == 1
        assert "does not exist (1 to 4)" in decision.events[0].message
    assert rig.press(Button.STAGE_DOWN).events[0].kind == "command_rejected"


def test_SR_STAGE_3_selecting_the_current_stage_changes_nothing() -> None:
    rig = idle_rig()
    assert rig.tick(SelectStage(1)).events == ()


def test_SR_STAGE_4_training_cap_below_the_stage_lowers_it_in_every_mode() -> None:
    for make in (idle_rig, running_rig, stopping_rig, faulted_rig):
        rig = make(DEFAULT_CONFIG, 3)
        rig.stage_cap = 2
        decision = rig.tick()
        assert decision.state.stage == 2, make
        changed = [e for e in decision.events if e.kind == "stage_changed"]
        assert changed[0].details["reason"] == "stage cap lowered"


def test_SR_STAGE_4_cap_below_one_counts_as_one() -> None:
    rig = idle_rig(stage_number=2)
    rig.stage_cap = 0
    assert rig.tick().state.stage == 1
    state = replace(rig.core, remote_stage_cap=3)
    assert effective_stage_cap(state, rig.inputs(), DEFAULT_CONFIG) == 1


def test_SR_STAGE_5_stage_change_in_idle_resets_the_target_to_its_start_speed() -> None:
    config = make_config(stage(1, start_kmh=0.4), stage(2, max_kmh=3.0, start_kmh=0.8))
    rig = idle_rig(config)
    rig.tick(SetTarget(1.5))
    rig.tick(SelectStage(2))
    assert rig.core.target_kmh == 0.8
    rig.tick(SelectStage(1))
    assert rig.core.target_kmh == 0.4


# ---------------------------------------------------------------- grip


def test_SR_GRIP_1_grip_is_watched_only_with_hands_required_and_an_action() -> None:
    assert grip_watched(stage(1, hands=1, action=GripLossAction.STOP_LATCH))
    assert not grip_watched(stage(1, hands=0, action=GripLossAction.STOP_LATCH))
    assert not grip_watched(stage(1, hands=2, action=GripLossAction.NONE))


def test_SR_GRIP_1_one_hand_is_enough_at_a_one_hand_stage() -> None:
    rig = running_rig()
    rig.grip = (False, True)
    rig.run_ms(2000)
    assert rig.core.mode is Mode.RUNNING
    assert rig.core.last_grip_ok is True


def test_SR_GRIP_1_grip_is_not_watched_while_idle_or_stopping() -> None:
    rig = stopping_rig()
    rig.grip = (False, False)
    rig.measured_kmh = 0.5  # still slowing down
    rig.run_ms(1000)
    assert rig.core.mode is Mode.STOPPING
    assert rig.core.grip_lost_since_ms is None


def test_SR_GRIP_2_grip_lost_past_grace_latches_with_a_controlled_stop() -> None:
    rig = running_rig()
    rig.grip = (False, False)
    rig.run_ms(280)
    assert rig.core.mode is Mode.RUNNING
    decisions = rig.run_ms(40)
    latched = next(d for d in decisions if d.state.mode is Mode.FAULTED)
    assert latched.motion == Stop(DEFAULT_CONFIG.stop_decel_kmh_s)
    assert latched.state.fault is not None
    assert latched.state.fault.code is FaultCode.GRIP_LOST
    assert latched.state.fault.stop is StopKind.CONTROLLED
    kinds = [e.kind for e in latched.events]
    assert kinds == ["grip_lost", "transition", "fault"]
    message = latched.events[0].message
    assert "Grip released for 300 ms at stage 1" in message
    assert "grace 300 ms" in message
    assert "Hold the rails, then press RESET." in message


def test_SR_GRIP_2_grip_grace_zero_acts_at_the_first_tick() -> None:
    rig = running_rig(single_stage_config(grace_ms=0))
    rig.grip = (False, False)
    assert rig.tick().state.mode is Mode.FAULTED


def test_SR_GRIP_3_slow_ramps_down_and_recovers_without_latching() -> None:
    config = single_stage_config(action=GripLossAction.SLOW, slow_kmh=0.8, clip=True)
    rig = running_rig(config)
    rig.tick(SetTarget(1.8))
    rig.run_ms(8000)
    rig.grip = (False, False)
    rig.run_ms(320)
    assert rig.core.target_kmh == 0.8
    assert len(rig.events("grip_lost")) == 1
    assert "slowing to 0.80 km/h" in rig.events("grip_lost")[0].message
    rig.run_ms(4000)
    assert rig.core.commanded_kmh == 0.8
    assert rig.core.mode is Mode.RUNNING
    assert rig.core.fault is None
    refused = rig.press(Button.FASTER)
    assert refused.state.target_kmh == 0.8
    assert len(rig.events("grip_lost")) == 1
    rig.grip = (True, False)
    touched = rig.tick()
    assert touched.events == ()  # a touch is not yet a hold (SR-GRIP-10)
    rig.run_ms(rig.config.grip_regrip_ms - 2 * TICK_MS)
    assert rig.events("grip_restored") == []
    restored = rig.run_ms(2 * TICK_MS)
    assert [e.kind for d in restored for e in d.events] == ["grip_restored"]
    assert rig.press(Button.FASTER).state.target_kmh == 0.9


def test_SR_GRIP_4_warn_gives_one_warning_per_loss() -> None:
    rig = running_rig(stage_number=3)
    rig.grip = (False, False)
    rig.run_ms(3000)
    assert len(rig.events("grip_warning")) == 1
    assert rig.core.mode is Mode.RUNNING
    rig.grip = (True, True)
    rig.run_ms(rig.config.grip_regrip_ms + TICK_MS)  # held again: the loss is over (SR-GRIP-10)
    rig.grip = (False, False)
    rig.run_ms(600)
    assert len(rig.events("grip_warning")) == 2
    assert rig.events("fault") == []


def test_SR_GRIP_5_grip_back_within_grace_cancels_the_timer() -> None:
    """Back within the grace and held for grip_regrip_ms (SR-GRIP-10): the loss is over."""
    rig = running_rig()
    for _ in range(5):
        rig.grip = (False, False)
        rig.run_ms(260)
        rig.grip = (True, False)
        rig.tick()
        assert rig.core.grip_lost_since_ms is not None  # a touch, not yet a hold
        rig.run_ms(rig.config.grip_regrip_ms + TICK_MS)
        assert rig.core.grip_lost_since_ms is None
    assert rig.core.mode is Mode.RUNNING
    assert rig.events("grip_lost") == []


def test_SR_GRIP_6_chatter_raises_a_warning_once() -> None:
    rig = idle_rig()
    for _ in range(6):
        rig.grip = (False, True)
        rig.tick()
        rig.grip = (True, True)
        rig.tick()
    assert WARNING_GRIP_SUSPECT in rig.core.warnings
    suspect = rig.events("grip_sensor_suspect")
    assert len(suspect) == 1
    assert "changed 10 times within 1000 ms" in suspect[0].message
    assert rig.core.mode is Mode.IDLE
    rig.run_ms(1000)
    assert WARNING_GRIP_SUSPECT not in rig.core.warnings


def test_SR_GRIP_6_edges_older_than_the_window_no_longer_count() -> None:
    rig = idle_rig()
    now = rig.now_ms + 20
    for age_ms, suspect in ((1000, False), (999, True)):
        state = replace(rig.core, grip_edges_ms=(now - age_ms,) * 9)
        decision = decide(state, replace(rig.inputs(), grip_left=False), DEFAULT_CONFIG, now)
        assert (WARNING_GRIP_SUSPECT in decision.state.warnings) is suspect


def test_SR_GRIP_6_chatter_at_a_stop_latch_stage_stops_and_latches() -> None:
    rig = running_rig()
    for _ in range(5):
        rig.grip = (False, True)
        rig.tick()
        rig.grip = (True, True)
        rig.tick()
    assert rig.core.mode is Mode.FAULTED
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.GRIP_SENSOR
    assert rig.core.fault.stop is StopKind.CONTROLLED


def test_SR_GRIP_6_chatter_at_a_warn_stage_only_warns() -> None:
    rig = running_rig(stage_number=3)
    for _ in range(5):
        rig.grip = (False, True)
        rig.tick()
        rig.grip = (True, True)
        rig.tick()
    assert WARNING_GRIP_SUSPECT in rig.core.warnings
    assert rig.core.mode is Mode.RUNNING


def test_SR_GRIP_6_chatter_blocks_start_at_a_watched_stage() -> None:
    rig = idle_rig()
    rig.state = replace(rig.core, warnings=frozenset({WARNING_GRIP_SUSPECT}))
    rig.state = replace(rig.core, grip_edges_ms=(rig.now_ms,) * 10)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.IDLE
    assert "grip sensors are chattering" in decision.events[0].message


def test_SR_GRIP_7_unchanged_reading_while_running_warns_without_stopping() -> None:
    config = make_config(*DEFAULT_CONFIG.stages, grip_stuck_window_ms=10_000)
    rig = idle_rig(config)
    rig.press(Button.START)
    rig.run_ms(9_980)
    assert WARNING_GRIP_STUCK not in rig.core.warnings
    rig.tick()
    assert WARNING_GRIP_STUCK in rig.core.warnings
    stuck = rig.events("grip_sensor_stuck")
    assert len(stuck) == 1
    assert stuck[0].details == {"unchanged_ms": 10_000}
    assert "unchanged for 10 s while running" in stuck[0].message
    assert rig.core.mode is Mode.RUNNING
    rig.grip = (True, False)
    rig.tick()
    assert WARNING_GRIP_STUCK not in rig.core.warnings
    rig.run_ms(9_980)  # one hand changed: the window starts again from that change
    assert WARNING_GRIP_STUCK not in rig.core.warnings


def test_SR_GRIP_7_window_counts_from_the_start_not_from_idle() -> None:
    config = make_config(*DEFAULT_CONFIG.stages, grip_stuck_window_ms=10_000)
    rig = idle_rig(config)
    rig.run_ms(9_000)  # hands resting on the rails before the start
    rig.press(Button.START)
    rig.run_ms(5_000)
    assert WARNING_GRIP_STUCK not in rig.core.warnings


def test_SR_GRIP_7_not_flagged_at_an_unwatched_stage_or_when_idle() -> None:
    config = make_config(*DEFAULT_CONFIG.stages, grip_stuck_window_ms=1000)
    rig = running_rig(config, stage_number=4)
    rig.run_ms(3000)
    idle = idle_rig(config)
    idle.run_ms(3000)
    assert WARNING_GRIP_STUCK not in rig.core.warnings
    assert WARNING_GRIP_STUCK not in idle.core.warnings


def test_SR_GRIP_8_stage_drop_during_a_grip_loss_applies_the_new_policy() -> None:
    rig = running_rig(stage_number=3)
    rig.grip = (False, False)
    rig.run_ms(600)
    assert len(rig.events("grip_warning")) == 1
    rig.tick(SelectStage(2))
    # The loss started 620 ms ago; stage 2's grace is 800 ms, counted from the loss itself.
    assert rig.run_ms(160)[-1].state.mode is Mode.RUNNING
    latched = rig.run_ms(40)[-1].state
    assert latched.mode is Mode.FAULTED
    assert latched.fault is not None
    assert latched.fault.code is FaultCode.GRIP_LOST


def test_SR_GRIP_8_remote_cap_drop_during_a_grip_loss_latches_at_once() -> None:
    rig = running_rig(stage_number=3)
    rig.grip = (False, False)
    rig.run_ms(600)
    decision = rig.tick(remote=(RemoteLowerStageCap(1),))
    assert decision.state.stage == 1
    # Commands run after the grip check: the new policy acts at the next tick.
    assert rig.tick().state.mode is Mode.FAULTED

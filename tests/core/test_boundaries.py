"""Exact boundaries of the plausibility and grip timers: one decide() call per case.

Each case starts from a state the core reached itself, adjusted with ``replace`` so that
exactly one boundary is under test, and compares the numbers at the limit and just past it.
Values are binary fractions so that the comparisons are exact.
"""

from __future__ import annotations

from dataclasses import replace

from controller.rules.core import decide
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    FaultCode,
    GripLossAction,
    Inputs,
    Mode,
    SetTarget,
    StopKind,
)
from tests.core.support import (
    DEFAULT_CONFIG,
    Rig,
    idle_rig,
    make_config,
    running_rig,
    stage,
    status,
)

# Stage 1 with binary-fraction rates; limit 4 km/h keeps overspeed out of the way.
CONFIG = make_config(stage(1, max_kmh=4.0, accel_kmh_s=0.25, decel_kmh_s=0.5))


def _running_at(commanded_kmh: float, target_kmh: float) -> tuple[Rig, CoreState]:
    """RUNNING at ``commanded_kmh``, heading for ``target_kmh``, with a follow timer 2 s old."""
    rig = running_rig(CONFIG, settle=False)
    state = replace(
        rig.core,
        commanded_kmh=commanded_kmh,
        target_kmh=target_kmh,
        follow_since_ms=rig.now_ms + 20 - 2020,
    )
    return rig, state


def _tick(rig: Rig, state: CoreState, measured_kmh: float) -> Decision:
    now = rig.now_ms + 20
    inputs = Inputs(True, True, False, True, status(now, measured_kmh))
    return decide(state, inputs, rig.config, now)


def _not_following(decision: Decision) -> StopKind | None:
    fault = decision.state.fault
    if fault is None:
        return None
    assert fault.code is FaultCode.NOT_FOLLOWING
    return fault.stop


def test_SR_PLAUS_2_boundary_above_the_tolerance() -> None:
    rig, steady = _running_at(2.0, 2.0)  # tolerance max(0.5, 10 % of 2) = 0.5
    assert _not_following(_tick(rig, steady, 2.5)) is None
    assert _not_following(_tick(rig, steady, 2.5 + 2**-20)) is StopKind.EMERGENCY


def test_SR_PLAUS_2_boundary_below_the_tolerance() -> None:
    rig, steady = _running_at(2.0, 2.0)
    assert _not_following(_tick(rig, steady, 1.5)) is None
    assert _not_following(_tick(rig, steady, 1.5 - 2**-20)) is StopKind.CONTROLLED


def test_SR_PLAUS_2_boundary_of_the_relative_tolerance() -> None:
    config = make_config(stage(1, max_kmh=12.0, accel_kmh_s=0.25), follow_rel=0.125)
    rig = running_rig(config, settle=False)
    # At 8 km/h the relative margin, 12.5 % = 1 km/h, exceeds the absolute 0.5 km/h.
    steady = replace(
        rig.core, commanded_kmh=8.0, target_kmh=8.0, follow_since_ms=rig.now_ms + 20 - 2020
    )
    assert _not_following(_tick(rig, steady, 9.0)) is None
    assert _not_following(_tick(rig, steady, 9.0 + 2**-20)) is StopKind.EMERGENCY
    assert _not_following(_tick(rig, steady, 7.0)) is None
    assert _not_following(_tick(rig, steady, 7.0 - 2**-20)) is StopKind.CONTROLLED


def test_SR_PLAUS_2_boundary_of_the_ramp_lag_allowance() -> None:
    rig, ramping = _running_at(1.0, 2.0)  # rising at 0.25 km/h/s: + 0.25 x 1 s of lag
    assert _not_following(_tick(rig, ramping, 1.75)) is None
    assert _not_following(_tick(rig, ramping, 1.75 + 2**-20)) is StopKind.EMERGENCY
    rig, falling = _running_at(2.0, 1.0)  # falling at 0.5 km/h/s: + 0.5 x 1 s of lag
    assert _not_following(_tick(rig, falling, 1.0)) is None
    assert _not_following(_tick(rig, falling, 1.0 - 2**-20)) is StopKind.CONTROLLED


def test_SR_PLAUS_2_boundary_of_the_stall_rule() -> None:
    # Stalled: commanded above 2 x standstill (0.2 km/h) while measured at or below 0.1.
    rig, at_twice_standstill = _running_at(0.2, 0.5)
    assert _not_following(_tick(rig, at_twice_standstill, 0.0)) is None
    rig, above = _running_at(0.25, 0.5)
    assert _not_following(_tick(rig, above, 0.1)) is StopKind.CONTROLLED
    assert _not_following(_tick(rig, above, 0.1 + 2**-20)) is None


def test_SR_PLAUS_2_not_watched_at_rest_or_after_an_emergency_stop() -> None:
    rig = idle_rig()
    rig.measured_kmh = 0.3
    rig.run_ms(200)
    assert rig.core.follow_since_ms is None  # IDLE: the moving-at-rest rule applies
    running = running_rig()
    running.measured_kmh = 0.0
    running.run_ms(1000)
    assert running.core.follow_since_ms is not None
    running.estop = True
    assert running.tick().state.follow_since_ms is None
    running.estop = False
    running.measured_kmh = 2.0  # an emergency stop is the last word: no upgrade to wait for
    running.run_ms(3000)
    assert running.core.follow_since_ms is None


def test_SR_PLAUS_3_timer_restarts_after_a_gap_in_the_readings() -> None:
    rig = idle_rig()
    rig.measured_kmh = 0.3
    rig.run_ms(200)
    assert rig.core.moving_at_rest_since_ms is not None
    rig.link = "stale"
    assert rig.tick().state.moving_at_rest_since_ms is None


def test_SR_GRIP_1_grip_timer_and_action_are_cleared_when_running_ends() -> None:
    config = make_config(stage(1, action=GripLossAction.SLOW, slow_kmh=0.3, grace_ms=100))
    rig = running_rig(config)
    rig.grip = (False, False)
    rig.run_ms(200)
    assert rig.core.grip_lost_since_ms is not None
    assert rig.core.grip_action_taken
    assert rig.press(Button.STOP).state.mode is Mode.STOPPING
    decision = rig.tick()  # the grip check of the next tick sees the belt no longer running
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.grip_lost_since_ms is None
    assert decision.state.grip_action_taken is False


def test_SR_SPEED_5_target_exactly_at_standstill_stops_the_belt() -> None:
    rig = running_rig(DEFAULT_CONFIG)
    decision = rig.tick(SetTarget(DEFAULT_CONFIG.standstill_kmh))
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.stop_reason == "target_zero"

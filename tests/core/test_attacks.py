"""Attacks on the safety rules from the outside: timing edges, repeated blips, two faults at
once, odd but valid configurations, values at the wire's resolution and remote commands.

Each test names the rule it tries to defeat. The rules held against every attack here except
the first (SR-MOTION-2 with a lagging firmware set-point), which was fixed in the core.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.model import (
    GripLossAction,
    Mode,
    RemoteLowerTarget,
    SetSpeed,
    SetTarget,
)
from controller.rules.motion import WIRE_SPEED_RESOLUTION_KMH, wire_speed_kmh
from tests.core.support import TICK_MS, running_rig, single_stage_config

#: The shipped firmware ceilings (config/treadmill.yaml): 1.0 km/h/s up, 3.6 km/h/s down.
FW_MAX_ACCEL_KMH_S = 1.0
FW_MAX_DECEL_KMH_S = 3.6


def _fw4_accepts(speed_kmh: float, rate_kmh_s: float, setpoint_kmh: float) -> bool:
    """FW-4 as the firmware judges a SET_SPEED: against its *present* set-point, at the
    wire's resolution; a speed equal to it is holding, within either ceiling."""
    wire_kmh = wire_speed_kmh(speed_kmh)
    present_kmh = wire_speed_kmh(setpoint_kmh)
    if wire_kmh < present_kmh:
        return rate_kmh_s <= FW_MAX_DECEL_KMH_S
    if wire_kmh > present_kmh:
        return rate_kmh_s <= FW_MAX_ACCEL_KMH_S
    return rate_kmh_s <= max(FW_MAX_ACCEL_KMH_S, FW_MAX_DECEL_KMH_S)


def _wire_steps(low_kmh: float, high_kmh: float) -> list[float]:
    """Every wire value from ``low_kmh`` to ``high_kmh`` (both rounded to the wire)."""
    low = round(wire_speed_kmh(low_kmh) / WIRE_SPEED_RESOLUTION_KMH)
    high = round(wire_speed_kmh(high_kmh) / WIRE_SPEED_RESOLUTION_KMH)
    return [n * WIRE_SPEED_RESOLUTION_KMH for n in range(min(low, high), max(low, high) + 1)]


# ---------------------------------------------------------------- SR-MOTION-2


@settings(max_examples=300, deadline=None)
@given(
    accel_kmh_s=st.sampled_from([0.2, 0.5, 1.0]),
    sent_kmh=st.floats(min_value=0.6, max_value=2.9),
    lag_kmh=st.floats(min_value=-0.1, max_value=0.1),
    lower_by_kmh=st.floats(min_value=0.0, max_value=0.2),
    remote=st.booleans(),
)
def test_SR_MOTION_2_property_a_lagging_firmware_set_point_never_sees_the_decel_as_an_accel(
    accel_kmh_s: float, sent_kmh: float, lag_kmh: float, lower_by_kmh: float, remote: bool
) -> None:
    """The firmware's set-point lags behind the speed last sent while it ramps (by one tick
    at least, by 0.05 km/h after one late tick at 0.5 km/h/s). A target lowered to just
    below the speed last sent must not go out with the deceleration rate while the speed is
    still above the firmware's set-point: FW-4 would take 3.6 km/h/s for an acceleration
    above its 1.0 km/h/s ceiling and latch ACCEL_ABOVE_CEILING (the shipped stages decelerate
    at 3.6 km/h/s). Found by this attack: the core compared with its own last speed only.

    The present set-point lies between the one last reported and the speed last sent: every
    wire value in that range must accept the SET_SPEED.
    """
    config = single_stage_config(
        max_kmh=3.0, accel_kmh_s=accel_kmh_s, decel_kmh_s=FW_MAX_DECEL_KMH_S, hands=0,
        action=GripLossAction.NONE, grace_ms=0,
    )  # fmt: skip
    rig = running_rig(config)
    reported_kmh = max(0.0, sent_kmh - lag_kmh)
    rig.state = replace(rig.core, target_kmh=3.0, commanded_kmh=sent_kmh)
    rig.fw_commanded_kmh = reported_kmh
    rig.measured_kmh = reported_kmh
    target_kmh = sent_kmh - lower_by_kmh
    if remote:
        decision = rig.tick(remote=(RemoteLowerTarget(target_kmh),))
    else:
        decision = rig.tick(SetTarget(target_kmh))
    motion = decision.motion
    assert isinstance(motion, SetSpeed)
    for present_kmh in _wire_steps(reported_kmh, sent_kmh):
        assert _fw4_accepts(motion.speed_kmh, motion.accel_kmh_s, present_kmh), (
            motion,
            present_kmh,
            reported_kmh,
        )


def test_SR_MOTION_2_falling_below_the_set_point_still_decelerates_at_the_stage_rate() -> None:
    """The fix takes nothing away: a speed below both the speed last sent and the reported
    set-point goes out with the stage's deceleration, so a lowered target slows the belt at
    once, as before."""
    config = single_stage_config(max_kmh=3.0, accel_kmh_s=0.5, decel_kmh_s=3.6)
    rig = running_rig(config)
    rig.state = replace(rig.core, target_kmh=3.0, commanded_kmh=2.0)
    rig.fw_commanded_kmh = 1.99
    decision = rig.tick(SetTarget(1.0))
    assert isinstance(decision.motion, SetSpeed)
    assert wire_speed_kmh(decision.motion.speed_kmh) < 1.99
    assert decision.motion.accel_kmh_s == 3.6
    rig.fw_commanded_kmh = None  # the firmware follows again
    decisions = rig.run_ms(13 * TICK_MS)  # 1.928 -> 1.0 at 0.072 km/h a tick
    assert all(isinstance(d.motion, SetSpeed) and d.motion.accel_kmh_s == 3.6 for d in decisions)
    assert rig.core.commanded_kmh == 1.0
    assert rig.core.mode is Mode.RUNNING

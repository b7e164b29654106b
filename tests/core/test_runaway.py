"""Rule SR-PLAUS-5: a belt above the limit plus margin and accelerating faster than any
command allows is a runaway: EStop at once, without waiting out ``overspeed_ms``."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.model import EStop, FaultCode, Mode, SetTarget, StopKind
from controller.rules.plausibility import measured_accel_kmh_s, runaway_seen
from tests.core.support import DEFAULT_CONFIG, TICK_MS, running_rig, single_stage_config

WINDOW_MS = DEFAULT_CONFIG.runaway_window_ms


def _feed(speeds: list[float], window_ms: int = WINDOW_MS, dt_ms: int = TICK_MS) -> float:
    samples: tuple[tuple[int, float], ...] = ()
    accel = 0.0
    for index, speed in enumerate(speeds):
        samples, accel = measured_accel_kmh_s(samples, speed, index * dt_ms, window_ms)
    return accel


@given(
    start_kmh=st.floats(min_value=0.0, max_value=20.0),
    rate_kmh_s=st.floats(min_value=-10.0, max_value=10.0),
    ticks=st.integers(min_value=15, max_value=100),
)
def test_SR_PLAUS_5_property_a_steady_ramp_measures_its_rate(
    start_kmh: float, rate_kmh_s: float, ticks: int
) -> None:
    speeds = [start_kmh + rate_kmh_s * i * TICK_MS / 1000.0 for i in range(ticks)]
    assert _feed(speeds) == pytest.approx(rate_kmh_s, abs=1e-6)


@settings(deadline=None, max_examples=60)
@given(
    glitch_kmh=st.floats(min_value=0.5, max_value=5.0),
    glitch_ms=st.integers(min_value=TICK_MS, max_value=WINDOW_MS // 2),
)
def test_SR_PLAUS_5_property_a_glitch_no_longer_than_half_a_window_never_trips(
    glitch_kmh: float, glitch_ms: int
) -> None:
    """One glitching sensor pulse disturbs one 100 ms reading: above the limit and 'rising'
    for up to half a window, then back. Left to SR-PLAUS-1, whose 500 ms it never lasts."""
    config = replace(single_stage_config(max_kmh=8.0, accel_kmh_s=1.0), machine_max_kmh=8.0)
    rig = running_rig(config)
    rig.tick(SetTarget(8.0))
    rig.run_ms(9000)
    rig.measured_kmh = 8.0 + glitch_kmh
    rig.run_ms(glitch_ms)
    rig.measured_kmh = 8.0
    rig.run_ms(1000)
    assert rig.core.mode is Mode.RUNNING


def test_SR_PLAUS_5_time_going_backwards_starts_again() -> None:
    samples, accel = measured_accel_kmh_s(((1000, 1.0), (1100, 2.0)), 3.0, 900, WINDOW_MS)
    assert samples == ((900, 3.0),)
    assert accel == 0.0


def test_SR_PLAUS_5_a_foot_strike_does_not_reset_a_suspected_runaway() -> None:
    """Once suspected, the runaway stays suspected while the belt stays above the allowed
    speed, even if a dip flattens the acceleration for a tick."""
    config = replace(single_stage_config(max_kmh=8.0, accel_kmh_s=1.0), machine_max_kmh=8.0)
    rig = running_rig(config)
    rig.tick(SetTarget(8.0))
    rig.run_ms(9000)
    speeds = [8.0 + 0.05 * i for i in range(1, 12)]  # 2.5 km/h/s
    speeds[9] = speeds[8]  # one flat reading: a foot strike
    for speed in speeds:
        rig.measured_kmh = speed
        rig.tick()
    for speed in (8.6, 8.6, 8.6, 8.6):
        rig.measured_kmh = speed
        if rig.tick().state.mode is Mode.FAULTED:
            break
    assert rig.core.mode is Mode.FAULTED
    assert rig.core.fault is not None
    assert "runaway" in rig.core.fault.message


@pytest.mark.parametrize("above", [False, True])
@pytest.mark.parametrize("fast", [False, True])
def test_SR_PLAUS_5_exhaustive_both_conditions_are_needed(above: bool, fast: bool) -> None:
    allowed_kmh = 8.4
    measured_kmh = allowed_kmh + (0.01 if above else 0.0)
    accel = DEFAULT_CONFIG.runaway_accel_kmh_s + (0.01 if fast else 0.0)
    assert runaway_seen(measured_kmh, accel, allowed_kmh, DEFAULT_CONFIG) == (above and fast)


def _runaway_rig(rate_kmh_s: float) -> tuple[int, float]:
    """Stage max = machine max = 8.0; the belt runs away at ``rate_kmh_s`` from 8.0.

    Returns (ms from the start of the runaway to the EStop, measured speed then)."""
    config = replace(single_stage_config(max_kmh=8.0, accel_kmh_s=1.0), machine_max_kmh=8.0)
    rig = running_rig(config)
    rig.tick(SetTarget(8.0))
    rig.run_ms(9000)
    assert rig.core.commanded_kmh == 8.0
    speed = 8.0
    for tick in range(1, 200):
        speed += rate_kmh_s * TICK_MS / 1000.0
        rig.measured_kmh = speed
        decision = rig.tick()
        if decision.state.mode is Mode.FAULTED:
            assert isinstance(decision.motion, EStop)
            assert decision.state.fault is not None
            assert decision.state.fault.code is FaultCode.OVERSPEED
            assert decision.state.fault.stop is StopKind.EMERGENCY
            return tick * TICK_MS, speed
    raise AssertionError("no overspeed fault within 4 s")


def test_SR_PLAUS_5_runaway_at_machine_max_is_caught_within_half_a_km_h() -> None:
    """The figure of docs/faults.md on an ideal sensor: 2 km/h/s from 8.0 km/h."""
    took_ms, speed = _runaway_rig(2.0)
    margin_kmh = max(DEFAULT_CONFIG.overspeed_abs_kmh, DEFAULT_CONFIG.overspeed_rel * 8.0)
    # Past the margin, then confirmed within half a window (100 ms).
    assert speed <= 8.0 + margin_kmh + 2.0 * (WINDOW_MS / 2 + 2 * TICK_MS) / 1000.0
    assert took_ms <= 360


@settings(deadline=None, max_examples=60)
@given(rate_kmh_s=st.floats(min_value=1.1, max_value=10.0))
def test_SR_PLAUS_5_property_any_fast_runaway_trips_just_past_the_margin(
    rate_kmh_s: float,
) -> None:
    _, speed = _runaway_rig(rate_kmh_s)
    margin_kmh = max(DEFAULT_CONFIG.overspeed_abs_kmh, DEFAULT_CONFIG.overspeed_rel * 8.0)
    # Past the margin, plus what the rate adds while the runaway is confirmed (half a window).
    assert speed <= 8.0 + margin_kmh + rate_kmh_s * (WINDOW_MS / 2 + 2 * TICK_MS) / 1000.0


def test_SR_PLAUS_5_slow_creep_is_left_to_the_overspeed_window() -> None:
    """At 0.5 km/h/s nothing accelerates faster than a command could: SR-PLAUS-1 decides."""
    took_ms, _ = _runaway_rig(0.5)
    margin_kmh = max(DEFAULT_CONFIG.overspeed_abs_kmh, DEFAULT_CONFIG.overspeed_rel * 8.0)
    crossed_ms = margin_kmh / 0.5 * 1000
    assert took_ms > crossed_ms + DEFAULT_CONFIG.overspeed_ms - TICK_MS


def test_SR_PLAUS_5_a_reading_that_jumps_once_and_holds_is_left_to_the_overspeed_window() -> None:
    """Above the limit and 'accelerating' for one window, but no longer rising when the
    runaway would be confirmed: not a runaway; SR-PLAUS-1 decides after overspeed_ms."""
    config = replace(single_stage_config(max_kmh=8.0, accel_kmh_s=1.0), machine_max_kmh=8.0)
    rig = running_rig(config)
    rig.tick(SetTarget(8.0))
    rig.run_ms(9000)
    rig.measured_kmh = 8.6
    decisions = rig.run_ms(DEFAULT_CONFIG.overspeed_ms)
    assert all(d.state.mode is Mode.RUNNING for d in decisions)
    assert rig.core.runaway_suspect is not None  # seen, never confirmed
    rig.run_ms(2 * TICK_MS)
    assert rig.core.fault is not None
    assert "runaway" not in rig.core.fault.message
    assert f"for {DEFAULT_CONFIG.overspeed_ms + TICK_MS} ms" in rig.core.fault.message


def test_SR_PLAUS_5_samples_are_taken_half_a_window_apart() -> None:
    """A window of 201 ms: a new sample, and an acceleration, from 100 ms on, not before."""
    samples, accel = measured_accel_kmh_s((), 1.0, 0, 201)
    assert samples == ((0, 1.0),)
    samples, accel = measured_accel_kmh_s(samples, 2.0, 99, 201)
    assert (samples, accel) == (((0, 1.0),), 0.0)
    samples, accel = measured_accel_kmh_s(samples, 2.0, 100, 201)
    assert samples == ((0, 1.0), (100, 2.0))
    assert accel == pytest.approx(10.0)  # 1 km/h in 100 ms


def test_SR_PLAUS_5_a_second_tick_in_the_same_millisecond_keeps_the_samples() -> None:
    samples = ((0, 1.0), (100, 2.0))
    kept, accel = measured_accel_kmh_s(samples, 2.5, 100, WINDOW_MS)
    assert kept == samples
    assert accel == pytest.approx(15.0)  # 1.5 km/h in 100 ms

"""Belt, motor board and speed sensor model, driven with explicit times."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from firmware_bridge.sim.physics import BeltPhysics, PhysicsParams
from tests.sim.helpers import quiet_physics


def make(params: PhysicsParams | None = None, seed: int = 1) -> BeltPhysics:
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
    belt = BeltPhysics(params if params is not None else quiet_physics(), rng)
    belt.set_motor_power(True)
    return belt


def run(belt: BeltPhysics, until_ms: int, step_ms: int = 5) -> list[tuple[int, float, float]]:
    """Advance in steps; return (t, true, measured) samples."""
    samples = []
    t = int(belt.now_ms)
    while t < until_ms:
        t = min(until_ms, t + step_ms)
        belt.advance(t)
        samples.append((t, belt.true_speed_kmh, belt.measured_kmh))
    return samples


def test_belt_follows_the_setpoint_with_a_first_order_lag() -> None:
    # A motor ramp far above the step keeps the board out of the way: the lag alone shows.
    belt = make(quiet_physics(motor_ramp_kmh_s=1000.0, belt_time_constant_ms=150.0))
    belt.set_setpoint(4.0)
    samples = run(belt, 2000, step_ms=1)
    at_tau = next(v for t, v, _ in samples if t == 150)
    assert at_tau == pytest.approx(4.0 * (1 - math.exp(-1)), abs=0.05)
    assert samples[-1][1] == pytest.approx(4.0, abs=1e-3)
    # A first-order lag never overshoots.
    assert max(v for _, v, _ in samples) <= 4.0 + 1e-9


def test_motor_board_ramp_limits_the_belt_acceleration() -> None:
    belt = make(quiet_physics(motor_ramp_kmh_s=2.0))
    belt.set_setpoint(6.0)
    samples = run(belt, 5000, step_ms=10)
    assert belt.motor_output_kmh == pytest.approx(6.0)
    for (_, v0, _), (_, v1, _) in itertools.pairwise(samples):
        assert (v1 - v0) / 0.010 <= 2.0 + 1e-6
    # 6 km/h at 2 km/h/s takes 3 s, plus the belt lag.
    assert next(t for t, v, _ in samples if v >= 5.9) <= 3000 + 600


@pytest.mark.parametrize("speed_kmh", [1.0, 3.0, 8.0, 16.0])
def test_measured_speed_matches_true_speed_at_steady_state(speed_kmh: float) -> None:
    belt = make(PhysicsParams(walker_on_belt=False))  # with jitter and noise
    belt.set_setpoint(speed_kmh)
    run(belt, 4000)
    samples = run(belt, 10000, step_ms=20)
    mean_measured = statistics.fmean(m for _, _, m in samples)
    assert mean_measured == pytest.approx(speed_kmh, rel=0.02)
    assert all(abs(v - speed_kmh) < 1e-6 for _, v, _ in samples)


def test_pulse_count_follows_the_distance_per_pulse() -> None:
    belt = make(quiet_physics(distance_per_pulse_mm=152.0))  # Sole F85
    belt.set_setpoint(5.0)
    run(belt, 20_000, step_ms=20)
    assert belt.pulses == math.floor(belt.distance_m * 1000.0 / 152.0)
    # 5 km/h at 152 mm per pulse: one pulse every 109.4 ms.
    assert PhysicsParams(distance_per_pulse_mm=152.0).pulse_period_ms(5.0) == pytest.approx(
        109.44, abs=0.01
    )


def test_default_sensor_resolution_meets_FW_15() -> None:
    params = PhysicsParams()
    assert params.distance_per_pulse_mm == 12.5
    # FW-15: a 0.5 km/h belt pulses at least every 100 ms.
    assert params.pulse_period_ms(0.5) == pytest.approx(90.0, abs=0.1)


def test_taurus_pulse_periods_match_the_domain_figures() -> None:
    params = PhysicsParams(distance_per_pulse_mm=250.9)  # one pulse per roller turn
    assert params.pulse_period_ms(1.0) == pytest.approx(903.2, abs=0.1)
    assert params.pulse_period_ms(2.0) == pytest.approx(451.6, abs=0.1)
    assert params.pulse_period_ms(22.0) == pytest.approx(41.06, abs=0.01)
    assert params.pulse_period_ms(0.0) == math.inf


def test_reading_after_the_belt_stops_decays_and_goes_stale() -> None:
    belt = make(quiet_physics())
    belt.set_setpoint(2.0)
    run(belt, 6000)
    belt.set_motor_power(False)
    samples = run(belt, 12_000)
    stopped_at = next(t for t, v, _ in samples if v == 0.0)
    # The reading never rises once the pulses stop, ...
    last_pulse_readings = [m for t, _, m in samples if t > stopped_at]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(last_pulse_readings))
    # ... and reads 0 at most 3 periods (capped at 2 s) after the belt stopped.
    zero_at = next(t for t, _, m in samples if t > stopped_at and m == 0.0)
    assert zero_at - stopped_at <= 2000
    assert samples[-1][2] == 0.0


def test_stale_reading_needs_two_fresh_pulses() -> None:
    belt = make(quiet_physics())
    belt.set_setpoint(3.0)
    run(belt, 3000)
    belt.set_setpoint(0.0)
    run(belt, 8000)
    assert belt.measured_kmh == 0.0
    pulses_at_rest = belt.pulses
    belt.set_setpoint(3.0)
    first_reading_ms = None
    second_pulse_ms = None
    t = 8000
    while first_reading_ms is None:
        t += 1
        belt.advance(t)
        if second_pulse_ms is None and belt.pulses >= pulses_at_rest + 2:
            second_pulse_ms = t
        if belt.measured_kmh > 0:
            first_reading_ms = t
    assert first_reading_ms == second_pulse_ms


def test_sensor_is_quiet_only_after_a_pulse_free_window() -> None:
    belt = make(quiet_physics())
    assert belt.sensor_quiet  # never moved
    belt.set_setpoint(2.0)
    t = 0
    while belt.pulses < 1:
        t += 1
        belt.advance(t)
    assert belt.measured_kmh == 0.0  # one pulse: no period yet ...
    assert not belt.sensor_quiet  # ... but not quiet either
    belt.set_motor_power(False)
    run(belt, t + 1999)
    assert not belt.sensor_quiet
    run(belt, t + 2001)
    assert belt.sensor_quiet
    belt.set_sensor_frozen(True)
    assert belt.sensor_quiet  # frozen at 0


def test_power_cut_brakes_the_belt_whatever_the_setpoint() -> None:
    params = quiet_physics(power_cut_decel_kmh_s=10.0)
    belt = make(params)
    belt.set_setpoint(8.0)
    run(belt, 6000)
    belt.set_motor_power(False)
    samples = run(belt, 8000, step_ms=10)
    for (_, v0, _), (_, v1, _) in itertools.pairwise(samples):
        assert v1 <= v0 + 1e-9
    stopped_at = next(t for t, v, _ in samples if v == 0.0)
    assert stopped_at - 6000 <= 8.0 / 10.0 * 1000 + 200
    assert belt.setpoint_kmh == 8.0  # the set-point was never touched


def test_runaway_board_accelerates_on_its_own_until_power_is_cut() -> None:
    belt = make(quiet_physics())
    belt.set_setpoint(3.0)
    run(belt, 3000)
    belt.set_runaway(0.5)
    run(belt, 7000)
    assert belt.true_speed_kmh == pytest.approx(3.0 + 0.5 * 4.0, abs=0.15)
    belt.set_motor_power(False)
    run(belt, 9000)
    assert belt.true_speed_kmh == 0.0
    assert belt.runaway


def test_stuck_board_holds_its_output_until_power_is_cut() -> None:
    belt = make(quiet_physics())
    belt.set_setpoint(4.0)
    run(belt, 3000)
    belt.set_stuck(True)
    belt.set_setpoint(1.0)
    run(belt, 6000)
    assert belt.true_speed_kmh == pytest.approx(4.0, abs=1e-3)
    belt.set_motor_power(False)
    run(belt, 8000)
    assert belt.true_speed_kmh == 0.0


def test_frozen_sensor_keeps_its_reading_while_the_belt_changes() -> None:
    belt = make(quiet_physics())
    belt.set_setpoint(3.0)
    run(belt, 4000)
    frozen = belt.measured_kmh
    belt.set_sensor_frozen(True)
    belt.set_setpoint(6.0)
    samples = run(belt, 8000)
    assert all(m == frozen for _, _, m in samples)
    assert belt.true_speed_kmh == pytest.approx(6.0, abs=0.01)
    belt.set_sensor_frozen(False)
    run(belt, 9000)
    assert belt.measured_kmh == pytest.approx(6.0, rel=0.02)


def test_walker_load_dips_the_belt_at_each_foot_strike() -> None:
    params = quiet_physics(walker_on_belt=True, walker_dip_frac=0.05, walker_step_period_ms=650.0)
    belt = make(params)
    belt.set_setpoint(4.0)
    run(belt, 3000)
    samples = run(belt, 6000, step_ms=1)
    low = min(v for _, v, _ in samples)
    high = max(v for _, v, _ in samples)
    assert 4.0 * (1 - 0.05) <= low < 4.0 * 0.985  # a real dip, bounded by the load
    assert high <= 4.0 + 1e-9
    # One dip per step period.
    dips = [t for (t, v, _), (_, v_next, _) in itertools.pairwise(samples) if v < 3.95 <= v_next]
    assert len(dips) == pytest.approx(3000 / 650, abs=1)


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    def readings(seed: int) -> list[float]:
        belt = make(PhysicsParams(), seed=seed)
        belt.set_setpoint(5.0)
        return [m for _, _, m in run(belt, 5000, step_ms=20)]

    assert readings(3) == readings(3)
    assert readings(3) != readings(4)


def test_time_never_runs_back() -> None:
    belt = make()
    belt.set_setpoint(3.0)
    belt.advance(1000)
    speed = belt.true_speed_kmh
    belt.advance(500)
    assert belt.now_ms == 1000
    assert belt.true_speed_kmh == speed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("belt_time_constant_ms", 0.0),
        ("distance_per_pulse_mm", -1.0),
        ("walker_dip_frac", 1.0),
        ("pulse_jitter_ms", -0.1),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"PhysicsParams.{field}"):
        PhysicsParams(**{field: value})  # type: ignore[arg-type] # one float field at a time

"""SR-PLAUS-1, 3 and 5 at their exact edges: the allowed speed, the runaway's confirmation
rise, the acceleration estimate's two samples, and what a tick without a reading forgets.

The config makes the edges exact in binary floating point: stage 1 limit 2.0 km/h, margin
0.5 km/h (so 2.5 km/h is allowed), runaway 2.0 km/h/s over a 250 ms window (confirmed after
125 ms by a rise of 2.0 x 125 / 2000 = 0.125 km/h).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.rules.model import FaultCode, FirmwareState, Mode, SafetyConfig
from controller.rules.plausibility import measured_accel_kmh_s, runaway_confirm_ms
from tests.core.support import DEFAULT_STAGES, Rig, is_estop, make_config

CONFIG = make_config(
    *DEFAULT_STAGES,
    overspeed_abs_kmh=0.5,
    overspeed_rel=0.0,
    overspeed_ms=100,
    runaway_accel_kmh_s=2.0,
    runaway_window_ms=250,
    moving_at_rest_ms=60_000,
    stale_ms=60_000,
)
ALLOWED_KMH = 2.5
CONFIRM_RISE_KMH = 0.125


def idle_rig(config: SafetyConfig = CONFIG) -> Rig:
    rig = Rig(config=config)
    rig.tick()
    assert rig.core.mode is Mode.IDLE
    return rig


def test_the_edges_of_this_config_are_exact() -> None:
    assert runaway_confirm_ms(CONFIG) == 125
    assert CONFIG.runaway_accel_kmh_s * runaway_confirm_ms(CONFIG) / 2000.0 == CONFIRM_RISE_KMH


@pytest.mark.parametrize(("reading_kmh", "latches"), [(ALLOWED_KMH, False), (2.51, True)])
def test_SR_PLAUS_1_a_reading_at_the_allowed_speed_is_not_overspeed(
    reading_kmh: float, latches: bool
) -> None:
    rig = idle_rig()
    rig.measured_kmh = reading_kmh
    rig.run_ms(400)
    assert (rig.core.fault is not None) is latches
    if latches:
        assert rig.core.fault is not None
        assert rig.core.fault.code is FaultCode.OVERSPEED


@pytest.mark.parametrize(
    ("rise_kmh", "latches"),
    [
        (CONFIRM_RISE_KMH, True),  # exactly the confirmation rise
        (0.12495, False),  # just below it (and above 2,000/2,001 of it)
        (0.05, False),
        (0.0, False),
    ],
)
def test_SR_PLAUS_5_runaway_confirmed_by_a_rise_of_exactly_the_confirmation(
    rise_kmh: float, latches: bool
) -> None:
    rig = idle_rig()
    suspect_kmh = 3.0
    rig.state = replace(rig.core, runaway_suspect=(rig.now_ms, suspect_kmh))
    rig.measured_kmh = suspect_kmh + rise_kmh
    decision = rig.tick(dt_ms=runaway_confirm_ms(CONFIG) + 1)
    runaway = decision.state.fault is not None and "runaway" in decision.state.fault.message
    assert runaway is latches
    if latches:
        assert is_estop(decision)


@pytest.mark.parametrize(
    "reading_kmh",
    [ALLOWED_KMH, ALLOWED_KMH - 0.05],  # exactly the allowed speed; under it, above the limit
)
def test_SR_PLAUS_5_suspect_dropped_once_the_reading_is_allowed_again(reading_kmh: float) -> None:
    rig = idle_rig()
    rig.state = replace(rig.core, runaway_suspect=(rig.now_ms, 3.0))
    rig.measured_kmh = reading_kmh
    decision = rig.tick()
    assert decision.state.runaway_suspect is None
    assert decision.state.overspeed_since_ms is None


def test_SR_PLAUS_5_a_tick_without_a_reading_forgets_samples_suspect_and_timer() -> None:
    rig = idle_rig()
    rig.state = replace(
        rig.core,
        runaway_suspect=(rig.now_ms, 3.0),
        speed_samples=((rig.now_ms - 100, 2.0), (rig.now_ms, 3.0)),
        overspeed_since_ms=rig.now_ms,
    )
    rig.link = "none"
    decision = rig.tick()
    assert decision.state.speed_samples == ()
    assert decision.state.runaway_suspect is None
    assert decision.state.overspeed_since_ms is None


def test_SR_PLAUS_5_acceleration_from_the_sample_half_a_window_old() -> None:
    """Two samples are kept, half a window apart; the slope is taken from the older one."""
    samples, accel = measured_accel_kmh_s(((0, 0.0), (50, 0.0)), 1.0, 100, 100)
    assert samples == ((50, 0.0), (100, 1.0))
    assert accel == pytest.approx(20.0)
    # Within half a window of the last sample, nothing is added; the slope runs from the older.
    samples, accel = measured_accel_kmh_s(((0, 0.0), (50, 0.5)), 1.0, 90, 100)
    assert samples == ((0, 0.0), (50, 0.5))
    assert accel == pytest.approx(1.0 * 1000 / 90)
    # Time going backwards starts again: no slope until half a window has passed.
    samples, accel = measured_accel_kmh_s(((100, 0.0),), 1.0, 40, 100)
    assert samples == ((40, 1.0),)
    assert accel == 0.0


def test_SR_PLAUS_3_moving_at_rest_after_a_faulted_rest_sends_estop_again() -> None:
    """A FAULTED belt that reached rest and then moves: the rest is forgotten (False, as
    recorded in the state) and the stop goes back to ESTOP."""
    config = replace(CONFIG, moving_at_rest_ms=100)
    rig = idle_rig(config)
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 5
    rig.tick()
    rig.fw_state, rig.fw_fault = FirmwareState.IDLE, 0
    rig.run_ms(100)
    assert rig.core.mode is Mode.FAULTED
    assert rig.core.fault_rest_reached is True
    rig.measured_kmh = 0.5
    rig.run_ms(200)
    assert rig.core.fault_rest_reached is False
    assert is_estop(rig.history[-1])
    assert FaultCode.MOVING_AT_REST in rig.core.secondary_faults

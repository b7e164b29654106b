"""The Pi's belt sensor adapter (SR-CHAN-*): edge timing on gpiozero mock pins."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.adapters.gpio.beltsensor import BeltSensor, BeltSensorError, PulseSpeedEstimator
from controller.adapters.gpio.inputs import TimedMockPin, mock_pin_factory

MM = 62.7


def kmh(period_s: float) -> float:
    return MM / 1000.0 / period_s * 3.6


def estimator(debounce_ms: float = 2.0, stale_ms: int = 1000) -> PulseSpeedEstimator:
    return PulseSpeedEstimator(distance_per_pulse_mm=MM, debounce_ms=debounce_ms, stale_ms=stale_ms)


def test_SR_CHAN_speed_from_the_last_period() -> None:
    est = estimator()
    assert est.speed_kmh(0.0) == 0.0
    est.pulse(10.0)
    assert est.speed_kmh(10.01) == 0.0  # one pulse: no period yet
    est.pulse(10.1)
    assert est.speed_kmh(10.11) == pytest.approx(kmh(0.1))
    assert est.pulses == 2


def test_SR_CHAN_reading_bounded_by_the_time_since_the_last_pulse() -> None:
    est = estimator()
    est.pulse(0.0)
    est.pulse(0.1)
    assert est.speed_kmh(0.4) == pytest.approx(kmh(0.3))  # silent: the bound falls
    assert est.speed_kmh(1.11) == 0.0  # stale after 1000 ms
    est.pulse(1.2)
    assert est.speed_kmh(1.21) == 0.0  # two fresh pulses needed after stale
    est.pulse(1.3)
    assert est.speed_kmh(1.31) == pytest.approx(kmh(0.1))


def test_SR_CHAN_debounce_drops_contact_bounce() -> None:
    est = estimator(debounce_ms=2.0)
    est.pulse(0.0)
    est.pulse(0.0003)  # bounce
    est.pulse(0.1)
    est.pulse(0.1005)  # bounce
    assert est.bounces == 2
    assert est.speed_kmh(0.101) == pytest.approx(kmh(0.1))


@settings(max_examples=200, deadline=None)
@given(
    period_s=st.floats(0.005, 0.99),
    count=st.integers(2, 20),
    wait_s=st.floats(0.0, 2.0),
)
def test_SR_CHAN_property_reading_never_above_distance_over_elapsed_time(
    period_s: float, count: int, wait_s: float
) -> None:
    """A steady pulse train at one period reads that speed, and never more than one
    distance per pulse over the time since the last pulse."""
    est = estimator(debounce_ms=1.0)
    for i in range(count):
        est.pulse(i * period_s)
    now = (count - 1) * period_s + wait_s
    reading = est.speed_kmh(now)
    assert reading <= kmh(period_s) * (1 + 1e-9)
    if wait_s > 0:
        assert reading <= kmh(wait_s) * (1 + 1e-9) or reading == 0.0
    if wait_s > 1.0:
        assert reading == 0.0


def test_SR_CHAN_sensor_on_mock_pins_counts_the_active_edge_only() -> None:
    factory = mock_pin_factory()
    sensor = BeltSensor(
        19,
        pin_factory=factory,
        active_high=False,
        pull="up",
        distance_per_pulse_mm=MM,
        debounce_ms=2.0,
        stale_ms=1000,
    )
    try:
        pin = sensor.pin
        assert isinstance(pin, TimedMockPin)
        base = factory.ticks() - 1.0  # pulses stamped in the past, delivered now
        for t in (base, base + 0.1, base + 0.2):
            pin.drive_at(False, t)  # magnet at the reed: pulled low
            pin.drive_at(True, t + 0.0005)
        reading = sensor.read()
        assert reading.pulses == 3
        # The period comes from the stamps, not from when the edges were delivered.
        assert reading.speed_kmh == pytest.approx(kmh(0.1))
        assert reading.since_pulse_ms is not None
        assert 0 <= reading.since_pulse_ms < 100
    finally:
        sensor.close()
        sensor.close()  # idempotent


def test_SR_CHAN_sensor_with_plain_mock_pins_uses_the_factory_clock() -> None:
    factory = MockFactory()
    sensor = BeltSensor(
        19,
        pin_factory=factory,
        active_high=True,
        pull="down",
        distance_per_pulse_mm=MM,
        debounce_ms=0.0,
        stale_ms=3000,
    )
    try:
        sensor.pin.drive_high()
        sensor.pin.drive_low()
        sensor.pin.drive_high()
        reading = sensor.read()
        assert reading.pulses == 2
        assert reading.speed_kmh > 0.0
    finally:
        sensor.close()


def test_SR_CHAN_sensor_pin_error_names_the_pin() -> None:
    with pytest.raises(BeltSensorError, match="BCM pin 99"):
        BeltSensor(
            99,
            pin_factory=MockFactory(),
            active_high=False,
            pull="up",
            distance_per_pulse_mm=MM,
            debounce_ms=2.0,
            stale_ms=1000,
        )


def test_SR_CHAN_pulses_delivered_late_are_seen_as_old() -> None:
    """A batch of pulses delivered 2 s late (a busy or hung process) reads as what it is:
    pulses of 2 s ago, not a belt moving now. The time since the last pulse is taken from
    the edge stamps, corrected by the smallest delivery offset seen."""
    est = estimator()
    for i in range(5):  # prompt delivery: 1 ms after each edge
        est.pulse(10.0 + i * 0.1, arrived_s=10.001 + i * 0.1)
    assert est.speed_kmh(10.41) == pytest.approx(kmh(0.1))
    for i in range(5):  # the next pulses, stamped 10.5..10.9, all delivered at 12.9
        est.pulse(10.5 + i * 0.1, arrived_s=12.9)
    assert est.speed_kmh(12.9) == 0.0  # the last pulse is 2 s old: stale
    assert est.since_pulse_ms(12.9) == 1999


def test_SR_CHAN_edge_clock_offset_is_learned() -> None:
    """Edges stamped on another clock (1000 s ahead): periods and ages still come out right."""
    est = estimator()
    for i in range(3):
        est.pulse(1010.0 + i * 0.1, arrived_s=10.0005 + i * 0.1)
    assert est.speed_kmh(10.25) == pytest.approx(kmh(0.1))
    assert est.since_pulse_ms(10.25) in (49, 50)  # 49.5 ms: the 0.5 ms delivery is learned too

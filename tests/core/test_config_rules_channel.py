"""SR-CONFIG-9: the second speed channel's thresholds and a sensor fine enough for them."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller.rules.config_rules import check_safety_config, pulse_period_ms, sensor_floor_kmh
from controller.rules.model import ChannelConfig
from tests.core.support import make_config

CHANNEL = ChannelConfig()


def problems(channel: ChannelConfig, **overrides: object) -> list[str]:
    config = make_config(second_channel=channel, **overrides)
    return [p.key_path for p in check_safety_config(config)]


def test_SR_CONFIG_9_the_default_sensor_passes() -> None:
    assert problems(CHANNEL) == []
    assert sensor_floor_kmh(CHANNEL) == pytest.approx(0.2257, abs=1e-4)
    assert pulse_period_ms(CHANNEL, 0.5) == pytest.approx(451.4, abs=0.1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agree_abs_kmh", 0.05),
        ("agree_abs_kmh", 2.5),
        ("agree_rel", -0.1),
        ("agree_rel", 0.6),
        ("agree_lag_ms", 2500),
        ("disagree_ms", 50),
        ("disagree_ms", 4000),
        ("distance_per_pulse_mm", 1.0),
        ("distance_per_pulse_mm", math.nan),
        ("debounce_ms", 25.0),
        ("stale_ms", 50),
        ("agree_abs_kmh", math.inf),
    ],
)
def test_SR_CONFIG_9_out_of_range_values_are_refused(field: str, value: float) -> None:
    changed = replace(CHANNEL, **{field: value})  # type: ignore[arg-type]  # mixed int/float fields
    assert problems(changed) == [f"second_channel.{field}"]


def test_SR_CONFIG_9_a_sensor_floor_above_the_tolerance_is_refused() -> None:
    # One magnet on a 250.9 mm roller and 1 s stale: a belt under 0.9 km/h reads 0.
    coarse = replace(CHANNEL, distance_per_pulse_mm=250.9, disagree_ms=3000)
    found = problems(coarse)
    assert "second_channel.stale_ms" in found


def test_SR_CONFIG_9_each_stage_start_speed_must_be_resolved_in_time() -> None:
    coarse = replace(CHANNEL, distance_per_pulse_mm=125.0, stale_ms=1200, agree_abs_kmh=0.4)
    found = problems(coarse)
    # 2 x 125 mm at 0.5 km/h = 1800 ms > 1000 ms at every default stage (start 0.5 km/h).
    assert "stages[0].start_kmh" in found
    message = next(
        p.message
        for p in check_safety_config(make_config(second_channel=coarse))
        if p.key_path == "stages[0].start_kmh"
    )
    assert "1800 ms" in message
    assert "disagree_ms 1000" in message


def test_SR_CONFIG_9_debounce_must_pass_twice_the_machine_maximum() -> None:
    # machine max 16 km/h -> 32 km/h: a pulse every 7.05 ms with 62.7 mm.
    assert problems(replace(CHANNEL, debounce_ms=7.0)) == []
    assert problems(replace(CHANNEL, debounce_ms=7.1)) == ["second_channel.debounce_ms"]


def test_SR_CONFIG_9_no_second_channel_no_checks() -> None:
    assert [p.key_path for p in check_safety_config(make_config())] == []


def test_SR_CONFIG_9_invalid_start_speed_or_machine_max_left_to_SR_CONFIG_2() -> None:
    from tests.core.support import stage

    config = make_config(stage(1, start_kmh=0.0), second_channel=CHANNEL, machine_max_kmh=0.0)
    found = [p.key_path for p in check_safety_config(config)]
    assert not any(key.startswith("second_channel") for key in found)
    assert "stages[0].start_kmh" in found  # from SR-CONFIG-2 only

"""Rules SR-CONFIG-* of docs/safety.md: check_safety_config refuses unsafe settings."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller.rules.config_rules import (
    STAGE_RATE_BOUND_KMH_S,
    STOP_DECEL_MAX_KMH_S,
    WIRE_RATE_MIN_KMH_S,
    ConfigProblem,
    check_safety_config,
)
from controller.rules.model import GripLossAction, SafetyConfig
from firmware_bridge.wire.messages import SetSpeed, Stop, field_bounds
from tests.core.support import DEFAULT_CONFIG, make_config, stage


def _paths(config: SafetyConfig) -> list[str]:
    return [problem.key_path for problem in check_safety_config(config)]


def _only_problem(config: SafetyConfig) -> ConfigProblem:
    problems = check_safety_config(config)
    assert len(problems) == 1, problems
    return problems[0]


def test_SR_CONFIG_1_the_default_table_passes() -> None:
    assert check_safety_config(DEFAULT_CONFIG) == []


def test_SR_CONFIG_1_no_stages_is_refused() -> None:
    problem = _only_problem(make_config(stages=()))
    assert problem == ConfigProblem("stages", "at least one stage is required: configure stage 1")


def test_SR_CONFIG_1_stage_numbers_must_run_1_to_n_in_order() -> None:
    config = make_config(stage(1), stage(3, max_kmh=3.0), stage(2, max_kmh=4.0))
    problems = check_safety_config(config)
    assert [p.key_path for p in problems] == ["stages[1].number", "stages[2].number"]
    assert "is 3, expected 2" in problems[0].message


def test_SR_CONFIG_1_stage_names_must_be_unique_and_not_empty() -> None:
    config = make_config(stage(1, name="walk"), stage(2, name=" walk "), stage(3, name="  "))
    problems = check_safety_config(config)
    assert [p.key_path for p in problems] == ["stages[1].name", "stages[2].name"]
    assert "'walk' is already the name of stages[0]" in problems[0].message
    assert problems[1].message == "must not be empty"


@pytest.mark.parametrize("max_kmh", [16.5, 0.0, -1.0, math.nan, math.inf])
def test_SR_CONFIG_2_stage_max_within_machine_max(max_kmh: float) -> None:
    config = make_config(stage(1, max_kmh=max_kmh, start_kmh=0.5))
    assert "stages[0].max_kmh" in _paths(config)


def test_SR_CONFIG_2_stage_max_message_names_the_range() -> None:
    problems = check_safety_config(make_config(stage(1, max_kmh=20.0)))
    assert problems == [
        ConfigProblem(
            "stages[0].max_kmh", "must be in (0, 16] km/h (up to machine_max_kmh), got 20.0"
        )
    ]


@pytest.mark.parametrize("start_kmh", [0.0, 0.1, -0.5, 2.01, math.nan])
def test_SR_CONFIG_2_start_above_standstill_and_at_most_max(start_kmh: float) -> None:
    problem = _only_problem(make_config(stage(1, start_kmh=start_kmh)))
    assert problem.key_path == "stages[0].start_kmh"
    assert "above standstill_kmh, up to the stage's max_kmh" in problem.message


def test_SR_CONFIG_2_start_equal_to_max_is_allowed() -> None:
    assert check_safety_config(make_config(stage(1, start_kmh=2.0))) == []


def test_SR_CONFIG_2_stage_max_never_decreases_with_the_stage_number() -> None:
    config = make_config(stage(1, max_kmh=3.0), stage(2, max_kmh=2.0), stage(3, max_kmh=3.0))
    problem = _only_problem(config)
    assert problem.key_path == "stages[1].max_kmh"
    assert "below the previous stage's 3.0 km/h" in problem.message
    assert check_safety_config(make_config(stage(1), stage(2))) == []


@pytest.mark.parametrize("machine_max_kmh", [0.0, -3.0, 25.5, math.nan])
def test_SR_CONFIG_2_machine_max_within_bounds(machine_max_kmh: float) -> None:
    config = make_config(stage(1, max_kmh=0.4, start_kmh=0.3), machine_max_kmh=machine_max_kmh)
    assert "machine_max_kmh" in _paths(config)


@pytest.mark.parametrize("field", ["accel_kmh_s", "decel_kmh_s"])
@pytest.mark.parametrize("value", [0.0, -0.2, 0.001, 0.005, 0.0099, 3.7, math.nan])
def test_SR_CONFIG_3_stage_rates_on_the_wire_and_bounded(field: str, value: float) -> None:
    problem = _only_problem(make_config(stage(1, **{field: value})))  # type: ignore[arg-type]  # parametrized keyword
    assert problem.key_path == f"stages[0].{field}"
    assert "must be in [0.01, 3.6] km/h/s" in problem.message


@pytest.mark.parametrize("field", ["accel_kmh_s", "decel_kmh_s"])
@pytest.mark.parametrize("value", [0.01, 0.014, 3.6])
def test_SR_CONFIG_3_rates_the_wire_can_carry_are_accepted(field: str, value: float) -> None:
    assert check_safety_config(make_config(stage(1, **{field: value}))) == []  # type: ignore[arg-type]  # parametrized keyword


def test_SR_CONFIG_3_bounds_come_from_the_wire_field_table() -> None:
    lowest, highest = field_bounds(SetSpeed, "accel_kmh_s")
    assert WIRE_RATE_MIN_KMH_S == lowest == field_bounds(Stop, "decel_kmh_s")[0]
    assert highest >= STAGE_RATE_BOUND_KMH_S
    assert field_bounds(Stop, "decel_kmh_s")[1] >= STOP_DECEL_MAX_KMH_S


@pytest.mark.parametrize("value", [0.0, -1.0, 0.9, 10.9, math.inf])
def test_SR_CONFIG_4_stop_deceleration_bounded(value: float) -> None:
    problem = _only_problem(make_config(stop_decel_kmh_s=value))
    assert problem.key_path == "stop_decel_kmh_s"
    assert "must be in [1, 10.8] km/h/s" in problem.message


def test_SR_CONFIG_5_lease_not_longer_than_stale() -> None:
    problem = _only_problem(make_config(lease_ms=600, stale_ms=500))
    assert problem.key_path == "lease_ms"
    assert "longer than stale_ms (500 ms)" in problem.message


def test_SR_CONFIG_5_lease_at_least_50_ms() -> None:
    problem = _only_problem(make_config(lease_ms=49))
    assert problem == ConfigProblem("lease_ms", "must be in [50, 2000] ms, got 49")


@pytest.mark.parametrize("stale_ms", [0, 2001])
def test_SR_CONFIG_5_stale_within_bounds(stale_ms: int) -> None:
    config = make_config(stale_ms=stale_ms, lease_ms=50)
    assert "stale_ms" in _paths(config)


@pytest.mark.parametrize("hands", [-1, 3])
def test_SR_CONFIG_6_hands_required_0_1_or_2(hands: int) -> None:
    problem = _only_problem(make_config(stage(1, hands=hands)))
    assert problem.key_path == "stages[0].grip_hands_required"
    assert "must be 0, 1 or 2 hands" in problem.message


@pytest.mark.parametrize("grace_ms", [-1, 2001])
def test_SR_CONFIG_6_grace_within_max_grip_grace(grace_ms: int) -> None:
    problem = _only_problem(make_config(stage(1, grace_ms=grace_ms)))
    assert problem.key_path == "stages[0].grip_grace_ms"
    assert "up to max_grip_grace_ms" in problem.message


@pytest.mark.parametrize("slow_kmh", [-0.1, 2.0, 2.5, math.nan])
def test_SR_CONFIG_6_grip_slow_speed_below_the_stage_max(slow_kmh: float) -> None:
    config = make_config(stage(1, action=GripLossAction.SLOW, slow_kmh=slow_kmh))
    problem = _only_problem(config)
    assert problem.key_path == "stages[0].grip_slow_kmh"
    assert "below the stage's max_kmh" in problem.message


def test_SR_CONFIG_6_grip_slow_speed_ignored_unless_slow() -> None:
    assert check_safety_config(make_config(stage(1, slow_kmh=-5.0))) == []


@pytest.mark.parametrize(
    ("hands", "action"),
    [
        (0, GripLossAction.STOP_LATCH),
        (1, GripLossAction.WARN),
        (2, GripLossAction.NONE),
        (1, GripLossAction.SLOW),
    ],
)
def test_SR_CONFIG_7_clip_required_unless_grip_loss_stops_the_belt(
    hands: int, action: GripLossAction
) -> None:
    problem = _only_problem(make_config(stage(1, hands=hands, action=action, clip=False)))
    assert problem.key_path == "stages[0].clip_required"
    assert "safety key cord must be clipped on" in problem.message


def test_SR_CONFIG_7_clip_optional_at_a_grip_stop_stage() -> None:
    config = make_config(stage(1, hands=1, action=GripLossAction.STOP_LATCH, clip=False))
    assert check_safety_config(config) == []


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("standstill_kmh", 0.0),
        ("standstill_kmh", 0.6),
        ("speed_step_kmh", 0.0),
        ("speed_step_kmh", 1.5),
        ("overspeed_abs_kmh", 0.0),
        ("overspeed_abs_kmh", 2.5),
        ("overspeed_rel", -0.1),
        ("overspeed_rel", 0.6),
        ("overspeed_ms", 0),
        ("overspeed_ms", 2001),
        ("follow_tol_kmh", 0.0),
        ("follow_tol_kmh", 3.5),
        ("follow_rel", -0.01),
        ("follow_rel", 0.51),
        ("follow_ms", 0),
        ("follow_ms", 10_001),
        ("follow_lag_ms", -1),
        ("follow_lag_ms", 5001),
        ("moving_at_rest_ms", 0),
        ("moving_at_rest_ms", 2001),
        ("grip_chatter_edges", 1),
        ("grip_chatter_edges", 1001),
        ("grip_chatter_window_ms", 0),
        ("grip_chatter_window_ms", 60_001),
        ("grip_stuck_window_ms", 0),
        ("grip_stuck_window_ms", 86_400_001),
        ("max_grip_grace_ms", -1),
        ("max_grip_grace_ms", 5001),
        ("grip_regrip_ms", -1),
        ("grip_regrip_ms", 0),
        ("grip_regrip_ms", 199),
        ("grip_regrip_ms", 2001),
    ],
)
def test_SR_CONFIG_8_monitoring_thresholds_within_bounds(key: str, bad: object) -> None:
    config = replace(DEFAULT_CONFIG, **{key: bad})  # type: ignore[arg-type]  # parametrized keyword
    # Machine-wide keys are checked first; a bad standstill or grace bound also fails stages.
    problem = check_safety_config(config)[0]
    assert problem.key_path == key
    assert problem.message.startswith("must be in ")


def test_SR_CONFIG_8_bounds_are_inclusive_where_documented() -> None:
    edges = make_config(
        standstill_kmh=0.5,
        overspeed_rel=0.0,
        follow_lag_ms=0,
        max_grip_grace_ms=5000,
        lease_ms=2000,
        stale_ms=2000,
        stop_decel_kmh_s=10.8,
        grip_chatter_edges=2,
        grip_regrip_ms=200,
        stages=(stage(1, max_kmh=2.0, start_kmh=0.6, accel_kmh_s=3.6, grace_ms=5000),),
    )
    assert check_safety_config(edges) == []


def test_SR_CONFIG_1_every_problem_is_reported_at_once() -> None:
    config = make_config(
        stage(2, max_kmh=99.0, start_kmh=0.0, accel_kmh_s=0.0, hands=5, clip=False),
        lease_ms=10,
    )
    assert _paths(config) == [
        "lease_ms",
        "stages[0].number",
        "stages[0].max_kmh",
        "stages[0].start_kmh",
        "stages[0].accel_kmh_s",
        "stages[0].grip_hands_required",
    ]

"""SR-RELOAD-1: a reload while the belt moves applies only what is stricter.

Every field of :class:`SafetyConfig` and :class:`StageConfig` is classified below: merged as
the smaller value, the larger value, either flag, or kept from the running config until the
belt is at rest (with the reason). The classification is checked against the dataclasses both
ways, so a new setting cannot be added without deciding how a running reload treats it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar

import pytest

from controller.rules.model import (
    ChannelConfig,
    GripLossAction,
    KeyRelayConfig,
    SafetyConfig,
    StageConfig,
)
from controller.rules.reload import merge_for_running
from tests.core.support import make_config, stage

MIN: Final = "min"  # the smaller value is the stricter one
MAX: Final = "max"  # the larger value is the stricter one
OLD: Final = "old"  # kept from the running config until the belt is at rest

#: field -> (how a running reload merges it, why)
CONFIG_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "stages": ("stages", "merged stage by stage, see STAGE_FIELDS"),
    "machine_max_kmh": (MIN, "a lower ceiling"),
    "stop_decel_kmh_s": (OLD, "a steeper or softer stop ramp is not safer on a moving belt"),
    "lease_ms": (MIN, "a shorter lease stops sooner"),
    "stale_ms": (MIN, "older status is refused sooner"),
    "standstill_kmh": (MIN, "a stricter notion of at rest"),
    "speed_step_kmh": (MIN, "smaller button steps"),
    "overspeed_abs_kmh": (MIN, "a tighter overspeed margin"),
    "overspeed_rel": (MIN, "a tighter overspeed margin"),
    "overspeed_ms": (MIN, "overspeed trips sooner"),
    "follow_tol_kmh": (MIN, "a tighter following margin"),
    "follow_rel": (MIN, "a tighter following margin"),
    "follow_ms": (MIN, "not-following trips sooner"),
    "moving_at_rest_ms": (MIN, "moving-at-rest trips sooner"),
    "grip_chatter_edges": (MIN, "fewer edges flag a chattering sensor"),
    "grip_chatter_window_ms": (MAX, "a longer window counts more edges"),
    "grip_stuck_window_ms": (MIN, "a stuck grip sensor is flagged sooner"),
    "max_grip_grace_ms": (MIN, "a lower bound on every stage's grace"),
    "follow_lag_ms": (OLD, "the belt's lag is a property of the machine, judged at rest"),
    "second_channel": (OLD, "the belt sensor's adapter and tolerances change only at rest"),
    "link_settle_ms": (MAX, "a START needs a longer settled link"),
    "link_window_ms": (OLD, "changing the window mid-run would reset the link judgement"),
    "link_loss_max": (MIN, "less frame loss is tolerated"),
    "link_window_min_frames": (MIN, "windows with fewer frames are judged"),
    "grip_regrip_ms": (MAX, "a touch must be held longer to count as a grip"),
    "runaway_accel_kmh_s": (MIN, "a runaway is recognised at a lower acceleration"),
    "runaway_window_ms": (OLD, "a shorter window is faster but trips on glitches: at rest"),
    "key_relay": (OLD, "the drive mode cannot change while the belt moves"),
}

#: stage field -> (how a running reload merges it, why)
STAGE_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "number": (OLD, "the stage's position; equal in both tables"),
    "name": ("new", "a label only"),
    "max_kmh": (MIN, "a lower stage limit"),
    "start_kmh": ("start", "the lower start speed, never above either limit"),
    "accel_kmh_s": (MIN, "a gentler ramp up"),
    "decel_kmh_s": (OLD, "a gentler deceleration is not safer on a moving belt"),
    "grip_hands_required": (MAX, "more hands required"),
    "on_grip_loss": ("action", "the stricter action: none < warn < slow < stop_latch"),
    "grip_grace_ms": (MIN, "grip loss acts sooner"),
    "grip_slow_kmh": (MIN, "a lower slow-down speed"),
    "clip_required": ("or", "the key is required if either config requires it"),
}


_T = TypeVar("_T")


def _with(obj: _T, name: str, value: object) -> _T:
    """``obj`` with one field replaced, the field named at run time."""
    changes: dict[str, Any] = {name: value}
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # obj is a dataclass instance


def _changed(value: object) -> object:
    """A different value of the same type, valid for the merge (the merge does not validate)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2 + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    raise AssertionError(f"no changed value for {value!r}")


def test_SR_RELOAD_1_every_config_field_is_classified() -> None:
    names = {f.name for f in dataclasses.fields(SafetyConfig)}
    assert names == set(CONFIG_FIELDS)


def test_SR_RELOAD_1_every_stage_field_is_classified() -> None:
    names = {f.name for f in dataclasses.fields(StageConfig)}
    assert names == set(STAGE_FIELDS)


NUMERIC_CONFIG_FIELDS = [name for name, (how, _) in CONFIG_FIELDS.items() if how in (MIN, MAX)]


@pytest.mark.parametrize("name", NUMERIC_CONFIG_FIELDS)
@pytest.mark.parametrize("new_is_larger", [False, True])
def test_SR_RELOAD_1_numeric_fields_merge_to_the_stricter_value(
    name: str, new_is_larger: bool
) -> None:
    base = make_config()
    low = getattr(base, name)
    high = _changed(low)
    old = _with(base, name, low if new_is_larger else high)
    new = _with(base, name, high if new_is_larger else low)
    merged = merge_for_running(old, new)
    expected = min(low, high) if CONFIG_FIELDS[name][0] == MIN else max(low, high)
    assert getattr(merged, name) == expected
    # Every other field is untouched by this one's change.
    for other in NUMERIC_CONFIG_FIELDS:
        if other != name:
            assert getattr(merged, other) == getattr(base, other), other


OLD_CONFIG_VALUES: Final[dict[str, tuple[object, object]]] = {
    "stop_decel_kmh_s": (3.6, 2.0),
    "follow_lag_ms": (1000, 200),
    "second_channel": (ChannelConfig(), None),
    "link_window_ms": (1000, 400),
    "runaway_window_ms": (200, 100),
    "key_relay": (None, KeyRelayConfig()),
}


def test_SR_RELOAD_1_kept_fields_are_listed_with_values() -> None:
    kept = {name for name, (how, _) in CONFIG_FIELDS.items() if how == OLD}
    assert kept == set(OLD_CONFIG_VALUES)


@pytest.mark.parametrize("name", sorted(OLD_CONFIG_VALUES))
@pytest.mark.parametrize("swap", [False, True])
def test_SR_RELOAD_1_kept_fields_stay_as_running_until_rest(name: str, swap: bool) -> None:
    a, b = OLD_CONFIG_VALUES[name]
    if swap:
        a, b = b, a
    old = _with(make_config(), name, a)
    new = _with(make_config(), name, b)
    assert getattr(merge_for_running(old, new), name) == a


_ACTIONS = (
    GripLossAction.NONE,
    GripLossAction.WARN,
    GripLossAction.SLOW,
    GripLossAction.STOP_LATCH,
)


@pytest.mark.parametrize("old_action", _ACTIONS)
@pytest.mark.parametrize("new_action", _ACTIONS)
@pytest.mark.parametrize("old_clip", [False, True])
@pytest.mark.parametrize("new_clip", [False, True])
def test_SR_RELOAD_1_stage_flags_and_actions_merge_to_the_stricter(
    old_action: GripLossAction, new_action: GripLossAction, old_clip: bool, new_clip: bool
) -> None:
    old = make_config(stage(1, action=old_action, clip=old_clip))
    new = make_config(stage(1, action=new_action, clip=new_clip))
    merged = merge_for_running(old, new).stages[0]
    assert merged.on_grip_loss is max(old_action, new_action, key=_ACTIONS.index)
    assert merged.clip_required is (old_clip or new_clip)


NUMERIC_STAGE_FIELDS = [name for name, (how, _) in STAGE_FIELDS.items() if how in (MIN, MAX)]


@pytest.mark.parametrize("name", NUMERIC_STAGE_FIELDS)
@pytest.mark.parametrize("new_is_larger", [False, True])
def test_SR_RELOAD_1_numeric_stage_fields_merge_to_the_stricter_value(
    name: str, new_is_larger: bool
) -> None:
    base = stage(1, hands=1)
    low = getattr(base, name)
    high = 2 if name == "grip_hands_required" else _changed(low)
    old_stage = _with(base, name, low if new_is_larger else high)
    new_stage = _with(base, name, high if new_is_larger else low)
    merged = merge_for_running(make_config(old_stage), make_config(new_stage)).stages[0]
    expected = min(low, high) if STAGE_FIELDS[name][0] == MIN else max(low, high)
    assert getattr(merged, name) == expected


@pytest.mark.parametrize(
    ("old_start", "old_max", "new_start", "new_max", "expected_start"),
    [
        (1.0, 2.0, 0.5, 2.0, 0.5),  # the lower start
        (0.5, 2.0, 1.0, 2.0, 0.5),
        (1.0, 2.0, 1.0, 0.8, 0.8),  # never above the new, lower limit
        (1.5, 1.5, 1.2, 3.0, 1.2),
    ],
)
def test_SR_RELOAD_1_start_speed_is_the_lowest_of_starts_and_limits(
    old_start: float, old_max: float, new_start: float, new_max: float, expected_start: float
) -> None:
    old = make_config(stage(1, start_kmh=old_start, max_kmh=old_max))
    new = make_config(stage(1, start_kmh=new_start, max_kmh=new_max))
    merged = merge_for_running(old, new).stages[0]
    assert merged.start_kmh == expected_start
    assert merged.max_kmh == min(old_max, new_max)


def test_SR_RELOAD_1_stage_name_and_decel_follow_their_classification() -> None:
    old = make_config(stage(1, name="old", decel_kmh_s=2.0))
    new = make_config(stage(1, name="new", decel_kmh_s=1.0))
    merged = merge_for_running(old, new).stages[0]
    assert merged.name == "new"
    assert merged.decel_kmh_s == 2.0


def test_SR_RELOAD_1_a_different_stage_count_keeps_the_running_table() -> None:
    old = make_config(stage(1), stage(2))
    new = make_config(stage(1, max_kmh=1.0))
    assert merge_for_running(old, new).stages == old.stages

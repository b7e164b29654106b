"""Rule SR-GRIP-10: touches that do not amount to holding the rail do not end a grip loss.

During a grip loss the grace keeps running until the required grip has been held without a
break for ``grip_regrip_ms``; the stage's action is taken at the first tick at which the
grace has passed and the rail is not held. Both sides are shown: a tapping hand is stopped,
a hand that lets go briefly to adjust its hold is not.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.model import FaultCode, GripLossAction, Mode, SafetyConfig
from tests.core.support import (
    MUTATION_QUICK,
    QUICK_STRIDE,
    TICK_MS,
    Rig,
    running_rig,
    single_stage_config,
)

SLOT_MS = 100
SLOTS = 10


def _reference_latch_ms(pattern: tuple[bool, ...], grace_ms: int, regrip_ms: int) -> int | None:
    """When the rule says the belt stops, from the whole tick sequence (not incrementally).

    ``pattern`` holds the grip per tick (True: held), the belt starts held. A loss starts at
    the first released tick after a hold of at least ``regrip_ms`` (or after the start); the
    action falls on the first released tick at least ``grace_ms`` after the loss began.
    """
    loss_start: int | None = None
    hold_start: int | None = 0  # held since the start
    for index, held in enumerate(pattern):
        t = index * TICK_MS
        if held:
            if hold_start is None:
                hold_start = t
            if loss_start is not None and t - hold_start >= regrip_ms:
                loss_start = None
            continue
        hold_start = None
        if loss_start is None:
            loss_start = t
        if t - loss_start >= grace_ms:
            return t
    return None


def _ticks(slots: tuple[bool, ...]) -> tuple[bool, ...]:
    per_slot = SLOT_MS // TICK_MS
    # Hold for 600 ms (past the regrip time) before the pattern, release for 1 s after it.
    return (True,) * 30 + tuple(held for held in slots for _ in range(per_slot)) + (False,) * 50


def _run(rig: Rig, ticks: tuple[bool, ...]) -> int | None:
    start_ms = rig.now_ms + TICK_MS
    for held in ticks:
        rig.grip = (held, False)
        rig.tick()
        if rig.core.mode is Mode.FAULTED:
            assert rig.core.fault is not None
            assert rig.core.fault.code is FaultCode.GRIP_LOST
            return rig.now_ms - start_ms
    return None


def _config(grace_ms: int, regrip_ms: int | None = None) -> SafetyConfig:
    """One stop-latch stage; the chatter rule (SR-GRIP-6) out of the way of fast patterns."""
    config = replace(
        single_stage_config(grace_ms=grace_ms), grip_chatter_edges=1000, max_grip_grace_ms=2000
    )
    return config if regrip_ms is None else replace(config, grip_regrip_ms=regrip_ms)


@pytest.mark.parametrize("grace_ms", [300, 800])
def test_SR_GRIP_10_exhaustive_every_grip_pattern_matches_the_rule(grace_ms: int) -> None:
    """All 2^10 patterns of 100 ms slots, at the stage 1 and stage 2 grace times."""
    config = _config(grace_ms)
    base = running_rig(config)
    regrip_ms = config.grip_regrip_ms
    patterns = list(itertools.product((False, True), repeat=SLOTS))
    for slots in patterns[:: QUICK_STRIDE if MUTATION_QUICK else 1]:
        ticks = _ticks(slots)
        rig = Rig(config=config, state=base.core, now_ms=base.now_ms)
        latched_ms = _run(rig, ticks)
        assert latched_ms == _reference_latch_ms(ticks, grace_ms, regrip_ms), slots
        # Safety: the belt always stops at the end (a second without a hand).
        assert latched_ms is not None
        assert rig.core.fault is not None


def _tapping(grace_ms: int, touch_ms: int, period_ms: int) -> int | None:
    config = single_stage_config(grace_ms=grace_ms)
    rig = running_rig(config)
    start_ms = rig.now_ms
    for t in range(0, 6000, TICK_MS):
        held = t % period_ms >= period_ms - touch_ms  # released first, then the touch
        rig.grip = (held, False)
        rig.tick()
        if rig.core.mode is Mode.FAULTED:
            return rig.now_ms - start_ms
    return None


@pytest.mark.parametrize(
    ("grace_ms", "touch_ms", "period_ms"),
    [(300, 100, 300), (800, 100, 750), (300, 200, 300), (800, 400, 750)],
)
def test_SR_GRIP_10_a_tapping_hand_is_stopped(grace_ms: int, touch_ms: int, period_ms: int) -> None:
    latched_ms = _tapping(grace_ms, touch_ms, period_ms)
    assert latched_ms is not None
    # Never later than the grace plus one touch after the first release.
    assert latched_ms <= grace_ms + touch_ms + 2 * TICK_MS


@pytest.mark.parametrize("grace_ms", [300, 800])
def test_SR_GRIP_10_letting_go_to_adjust_the_hand_is_not_stopped(grace_ms: int) -> None:
    """Released for most of the grace, then held for the regrip time, again and again."""
    config = single_stage_config(grace_ms=grace_ms)
    rig = running_rig(config)
    for _ in range(10):
        rig.grip = (False, False)
        rig.run_ms(grace_ms - 2 * TICK_MS)
        rig.grip = (False, True)  # the other hand, even
        rig.run_ms(config.grip_regrip_ms + TICK_MS)
    assert rig.core.mode is Mode.RUNNING
    assert rig.events("grip_lost") == []


@settings(max_examples=150, deadline=None)
@given(
    grace_ms=st.integers(min_value=0, max_value=2000),
    regrip_ms=st.integers(min_value=0, max_value=2000),
    touches=st.lists(
        st.tuples(st.integers(min_value=20, max_value=1500), st.integers(20, 1500)),
        min_size=1,
        max_size=8,
    ),
)
def test_SR_GRIP_10_property_matches_the_rule_for_any_timing(
    grace_ms: int, regrip_ms: int, touches: list[tuple[int, int]]
) -> None:
    """Any sequence of (released ms, held ms) ends in the rule's verdict, at the rule's time."""
    rig = running_rig(_config(grace_ms, regrip_ms))
    ticks: list[bool] = [True] * 5
    for released_ms, held_ms in touches:
        ticks += [False] * max(1, released_ms // TICK_MS) + [True] * max(1, held_ms // TICK_MS)
    latched_ms = _run(rig, tuple(ticks))
    assert latched_ms == _reference_latch_ms(tuple(ticks), grace_ms, regrip_ms)


def test_SR_GRIP_10_slow_stage_restores_only_after_a_hold() -> None:
    config = single_stage_config(action=GripLossAction.SLOW, slow_kmh=0.3, clip=True)
    rig = running_rig(config)
    rig.grip = (False, False)
    rig.run_ms(400)
    assert len(rig.events("grip_lost")) == 1
    for _ in range(5):  # taps do not restore the grip
        rig.grip = (True, False)
        rig.run_ms(100)
        rig.grip = (False, False)
        rig.run_ms(200)
    assert rig.events("grip_restored") == []
    rig.grip = (True, False)
    rig.run_ms(config.grip_regrip_ms + TICK_MS)
    assert len(rig.events("grip_restored")) == 1
    assert len(rig.events("grip_lost")) == 1

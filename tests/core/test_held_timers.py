"""The duration timers of SR-PLAUS-1..3 and SR-CHAN-2 hold through short dips.

A reading that drops back inside the margin for a tick or a few (a belt sensor missing one
pulse per roller turn) must not restart a rule's timer: the timer restarts only after the
condition has been clear for ``CLEAR_HOLD_MS`` continuously (``tick.held_timer``). Attacked
here with dips of 1..4 ticks at any period: the fault latches at the latest ``(dip_ticks + 1)``
ticks after the rule's time has run out, counted from the first bad reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.rules.model import Button, FaultCode, Mode, SafetyConfig, SetTarget, StopKind
from controller.rules.tick import CLEAR_HOLD_MS, held_timer
from tests.core.support import TICK_MS, Rig, idle_rig, make_config, running_rig, tick_while
from tests.core.test_channels import CHANNEL, ChannelRig, at_speed

ATTACK_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# The runaway rule (SR-PLAUS-5) out of the way: the overspeed timer alone must catch the dips.
NO_RUNAWAY = make_config(runaway_accel_kmh_s=1000.0)
CHANNELS_ONLY = make_config(
    second_channel=CHANNEL, runaway_accel_kmh_s=1000.0, overspeed_ms=2000, follow_ms=10_000
)


# ------------------------------------------------------------------ the helper, by model


def reference_timer(
    conditions: list[bool], times_ms: list[int]
) -> list[tuple[int | None, int | None]]:
    """The rule written out: the start of the current run of the condition, kept through
    clear spells shorter than CLEAR_HOLD_MS (measured from the first clear tick)."""
    out: list[tuple[int | None, int | None]] = []
    since: int | None = None
    clear: int | None = None
    for condition, now in zip(conditions, times_ms, strict=True):
        if condition:
            since = now if since is None else since
            clear = None
        elif since is not None:
            clear = now if clear is None else clear
            if now - clear >= CLEAR_HOLD_MS:
                since = clear = None
        out.append((since, clear))
    return out


@settings(max_examples=300, deadline=None)
@given(
    ticks=st.lists(st.tuples(st.booleans(), st.integers(1, 150)), min_size=1, max_size=40),
)
def test_SR_PLAUS_1_held_timer_matches_its_model(ticks: list[tuple[bool, int]]) -> None:
    times_ms = []
    now = 0
    for _, dt in ticks:
        now += dt
        times_ms.append(now)
    conditions = [c for c, _ in ticks]
    since: int | None = None
    clear: int | None = None
    got = []
    for condition, now_ms in zip(conditions, times_ms, strict=True):
        since, clear = held_timer(since, clear, condition, now_ms)
        got.append((since, clear))
    assert got == reference_timer(conditions, times_ms)


@pytest.mark.parametrize("clear_ticks", range(1, 9))
def test_SR_PLAUS_1_held_timer_restarts_only_after_the_hold(clear_ticks: int) -> None:
    since, clear = held_timer(None, None, True, 0)
    now = 0
    for _ in range(clear_ticks):
        now += TICK_MS
        since, clear = held_timer(since, clear, False, now)
    # Clear at 20 ms, ..., now: clear for now - 20 ms.
    held = now - TICK_MS < CLEAR_HOLD_MS
    assert (since == 0) is held
    assert (since is None) is not held
    since, clear = held_timer(since, clear, True, now + TICK_MS)
    assert since == (0 if held else now + TICK_MS)
    assert clear is None


# ------------------------------------------------------------------ the attack, rule by rule


@dataclass(frozen=True)
class Attack:
    """One rule under attack: a rig, what the belt reads when bad and during a dip."""

    rig: Callable[[], Rig]
    bad: Callable[[Rig, float], None]
    dip: Callable[[Rig], None]
    since: Callable[[Rig], int | None]
    limit_ms: Callable[[SafetyConfig], int]
    code: FaultCode


def _steady_stage_1(config: SafetyConfig) -> Rig:
    """RUNNING at stage 1, commanded at its 2.0 km/h limit (as a long ramp would leave it)."""
    rig = running_rig(config, settle=False)
    rig.state = replace(rig.core, target_kmh=2.0, commanded_kmh=2.0)
    rig.fw_commanded_kmh = 2.0
    rig.measured_kmh = 2.0
    rig.tick()
    return rig


def _set_measured(rig: Rig, kmh: float) -> None:
    rig.measured_kmh = kmh


def _set_sensor(rig: Rig, kmh: float) -> None:
    assert isinstance(rig, ChannelRig)
    rig.sensor_kmh = kmh


def _sensor_agrees(rig: Rig) -> None:
    assert isinstance(rig, ChannelRig)
    rig.sensor_kmh = None


def _channels_rig() -> Rig:
    return at_speed(2.0, config=CHANNELS_ONLY)


ATTACKS = {
    # Stage 1 limit 2.0 km/h, margin 0.3: the dips read the limit itself.
    "SR-PLAUS-1": Attack(
        rig=lambda: _steady_stage_1(NO_RUNAWAY),
        bad=_set_measured,
        dip=lambda rig: _set_measured(rig, 2.0),
        since=lambda rig: rig.core.overspeed_since_ms,
        limit_ms=lambda config: config.overspeed_ms,
        code=FaultCode.OVERSPEED,
    ),
    # Commanded 2.0 km/h, tolerance 0.5: a belt too slow, its dips read the command.
    "SR-PLAUS-2": Attack(
        rig=lambda: _steady_stage_1(NO_RUNAWAY),
        bad=_set_measured,
        dip=lambda rig: _set_measured(rig, 2.0),
        since=lambda rig: rig.core.follow_since_ms,
        limit_ms=lambda config: config.follow_ms,
        code=FaultCode.NOT_FOLLOWING,
    ),
    # IDLE, standstill 0.1 km/h: a creeping belt whose dips read 0.
    "SR-PLAUS-3": Attack(
        rig=lambda: idle_rig(NO_RUNAWAY),
        bad=_set_measured,
        dip=lambda rig: _set_measured(rig, 0.0),
        since=lambda rig: rig.core.moving_at_rest_since_ms,
        limit_ms=lambda config: config.moving_at_rest_ms,
        code=FaultCode.MOVING_AT_REST,
    ),
    # Firmware 2.0 km/h, the Pi's sensor 3.0 (tolerance 0.4); during a dip they agree.
    "SR-CHAN-2": Attack(
        rig=_channels_rig,
        bad=_set_sensor,
        dip=_sensor_agrees,
        since=lambda rig: rig.core.disagree_since_ms,
        limit_ms=lambda config: CHANNEL.disagree_ms,
        code=FaultCode.CHANNELS_DISAGREE,
    ),
}

# The bad readings drawn for each rule: up to twice limit + margin for the overspeed
# (half-speed dips from there still read inside the margin).
BAD_KMH = {
    "SR-PLAUS-1": st.floats(2.31, 4.6),
    "SR-PLAUS-2": st.floats(0.0, 1.49),
    "SR-PLAUS-3": st.floats(0.11, 2.0),
    "SR-CHAN-2": st.floats(2.41, 4.0),
}


def _codes(rig: Rig) -> set[FaultCode]:
    fault = rig.core.fault
    return set() if fault is None else {fault.code, *rig.core.secondary_faults}


def _attack(rule: str, bad_kmh: float, dip_ticks: int, period_ticks: int) -> tuple[int, int]:
    """Bad readings with ``dip_ticks`` clear ticks every ``period_ticks`` ticks, until the
    rule latches; returns (first bad tick's time, latch time)."""
    attack = ATTACKS[rule]
    rig = attack.rig()
    assert rig.core.fault is None
    limit_ms = attack.limit_ms(rig.config)
    attack.bad(rig, bad_kmh)
    rig.tick()
    since_ms = attack.since(rig)
    assert since_ms == rig.now_ms
    tick = 1
    while attack.code not in _codes(rig):
        assert rig.now_ms - since_ms <= limit_ms + (dip_ticks + 1) * TICK_MS, (
            f"{rule} hidden by {dip_ticks}-tick dips every {period_ticks} ticks"
        )
        if tick % period_ticks < dip_ticks:
            attack.dip(rig)
        else:
            attack.bad(rig, bad_kmh)
        rig.tick()
        tick += 1
    return since_ms, rig.now_ms


def _check_attack(rule: str, bad_kmh: float, dip_ticks: int, period_ticks: int) -> None:
    since_ms, latched_ms = _attack(rule, bad_kmh, dip_ticks, period_ticks)
    limit_ms = ATTACKS[rule].limit_ms(ATTACKS[rule].rig().config)
    # Not before the rule's time, and at most dip_ticks + 1 ticks after it.
    assert limit_ms < latched_ms - since_ms <= limit_ms + (dip_ticks + 1) * TICK_MS


@ATTACK_SETTINGS
@given(
    bad_kmh=BAD_KMH["SR-PLAUS-1"],
    dip_ticks=st.integers(1, 4),
    period_ticks=st.integers(5, 26),
)
def test_SR_PLAUS_1_attack_dips_do_not_hide_an_overspeed(
    bad_kmh: float, dip_ticks: int, period_ticks: int
) -> None:
    _check_attack("SR-PLAUS-1", bad_kmh, dip_ticks, period_ticks)


@ATTACK_SETTINGS
@given(
    bad_kmh=BAD_KMH["SR-PLAUS-2"],
    dip_ticks=st.integers(1, 4),
    period_ticks=st.integers(5, 26),
)
def test_SR_PLAUS_2_attack_dips_do_not_hide_a_belt_not_following(
    bad_kmh: float, dip_ticks: int, period_ticks: int
) -> None:
    _check_attack("SR-PLAUS-2", bad_kmh, dip_ticks, period_ticks)


@ATTACK_SETTINGS
@given(
    bad_kmh=BAD_KMH["SR-PLAUS-3"],
    dip_ticks=st.integers(1, 4),
    period_ticks=st.integers(5, 26),
)
def test_SR_PLAUS_3_attack_dips_do_not_hide_a_belt_moving_at_rest(
    bad_kmh: float, dip_ticks: int, period_ticks: int
) -> None:
    _check_attack("SR-PLAUS-3", bad_kmh, dip_ticks, period_ticks)


@ATTACK_SETTINGS
@given(
    bad_kmh=BAD_KMH["SR-CHAN-2"],
    dip_ticks=st.integers(1, 4),
    period_ticks=st.integers(5, 26),
)
def test_SR_CHAN_2_attack_dips_do_not_hide_disagreeing_channels(
    bad_kmh: float, dip_ticks: int, period_ticks: int
) -> None:
    _check_attack("SR-CHAN-2", bad_kmh, dip_ticks, period_ticks)


@pytest.mark.parametrize("bad_kmh", [2.5, 2.8, 3.5, 5.0])
def test_SR_PLAUS_1_attack_one_tick_dips_every_300_ms_latch_the_overspeed(bad_kmh: float) -> None:
    """The attack as first found: one tick at the limit every 300 ms (5.0 km/h is beyond
    twice limit + margin, and half of it still reads above the margin)."""
    since_ms, latched_ms = _attack("SR-PLAUS-1", bad_kmh, 1, 15)
    assert latched_ms - since_ms <= NO_RUNAWAY.overspeed_ms + 2 * TICK_MS


@pytest.mark.parametrize("rule", sorted(ATTACKS))
@pytest.mark.parametrize("clear_ticks", range(1, 8))
def test_SR_PLAUS_1_2_3_SR_CHAN_2_timer_restarts_only_after_clear_for_the_hold(
    rule: str, clear_ticks: int
) -> None:
    attack = ATTACKS[rule]
    rig = attack.rig()
    bad_kmh = {"SR-PLAUS-1": 2.5, "SR-PLAUS-2": 1.0, "SR-PLAUS-3": 0.5, "SR-CHAN-2": 3.0}[rule]
    attack.bad(rig, bad_kmh)
    rig.tick()
    since_ms = rig.now_ms
    rig.tick()
    attack.dip(rig)
    for _ in range(clear_ticks):
        rig.tick()
        assert rig.core.fault is None
    clear_ms = (clear_ticks - 1) * TICK_MS  # from the first clear tick to the last
    restarted = clear_ms >= CLEAR_HOLD_MS
    assert (attack.since(rig) is None) is restarted
    attack.bad(rig, bad_kmh)
    rig.tick()
    assert attack.since(rig) == (rig.now_ms if restarted else since_ms)


# ------------------------------------------------------------------ what is judged changes


def test_SR_PLAUS_2_a_too_slow_timer_does_not_carry_into_a_stop() -> None:
    """Too slow is judged only while RUNNING: after STOP a clear tick restarts the timer at
    once, so a stale too-slow start cannot make a later too-fast reading latch early."""
    rig = _steady_stage_1(NO_RUNAWAY)
    rig.measured_kmh = 1.0  # too slow for 1.9 s of the 2 s
    rig.run_ms(NO_RUNAWAY.follow_ms - 100)
    assert rig.core.follow_since_ms is not None
    assert not rig.core.follow_too_fast
    rig.measured_kmh = 2.0
    decision = rig.press(Button.STOP)
    assert decision.state.mode is Mode.STOPPING
    assert rig.core.follow_since_ms is not None  # RUNNING at the check: still held
    rig.tick()
    assert rig.core.follow_since_ms is None  # STOPPING, not too fast: restarted at once
    assert rig.core.fault is None


def test_SR_PLAUS_2_a_too_fast_timer_holds_into_a_stop() -> None:
    """Too fast is judged while RUNNING and STOPPING alike: a dip across STOP keeps the
    start, and the belt still too fast latches with an emergency stop."""
    # No lag allowance: the stop ramp's faster rate leaves the follow tolerance as it was.
    rig = _steady_stage_1(make_config(runaway_accel_kmh_s=1000.0, follow_lag_ms=0))
    rig.tick(SetTarget(0.5))  # commanded ramps down from 2.0 at stage 1's deceleration
    rig.measured_kmh = 2.25  # within the overspeed margin, too fast for the falling command
    tick_while(rig, lambda: rig.core.follow_since_ms is None)
    since_ms = rig.core.follow_since_ms
    assert since_ms is not None
    assert rig.core.follow_too_fast
    rig.measured_kmh = rig.core.commanded_kmh  # a dip of two ticks, across the STOP
    rig.press(Button.STOP)
    assert rig.core.mode is Mode.STOPPING
    rig.tick()
    assert rig.core.follow_since_ms == since_ms
    assert rig.core.fault is None
    rig.measured_kmh = 2.25
    tick_while(rig, lambda: rig.core.fault is None)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.NOT_FOLLOWING
    assert rig.core.fault.stop is StopKind.EMERGENCY
    assert rig.now_ms - since_ms <= rig.config.follow_ms + TICK_MS


@pytest.mark.parametrize("link", ["stale", "none"])
def test_SR_PLAUS_1_2_3_no_usable_reading_restarts_the_timers_and_latches(link: str) -> None:
    """A missing reading restarts every timer at once: it is a fault of its own
    (SR-STALE-1), never a clear reading that would hold a timer."""
    rig = _steady_stage_1(NO_RUNAWAY)
    rig.measured_kmh = 2.5
    rig.run_ms(200)
    rig.measured_kmh = 2.0
    rig.tick()
    assert rig.core.overspeed_clear_since_ms is not None
    rig.link = link
    rig.tick()
    state = rig.core
    assert (state.overspeed_since_ms, state.overspeed_clear_since_ms) == (None, None)
    assert (state.follow_since_ms, state.follow_clear_since_ms) == (None, None)
    assert state.fault is not None
    assert state.fault.code is FaultCode.LINK_STALE


BAD_AT = {"SR-PLAUS-1": 2.5, "SR-PLAUS-2": 1.0, "SR-PLAUS-3": 0.5, "SR-CHAN-2": 3.0}


@pytest.mark.parametrize("rule", sorted(ATTACKS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.tuples(st.booleans(), st.integers(1, 8)), min_size=1, max_size=40))
def test_SR_PLAUS_1_2_3_SR_CHAN_2_property_latch_exactly_when_the_held_timer_runs_out(
    rule: str, runs: list[tuple[bool, int]]
) -> None:
    """Any pattern of bad and clear ticks: the rule latches on the first bad tick more than
    its limit after the start of the timer written out in :func:`reference_timer`, and not
    before."""
    attack = ATTACKS[rule]
    rig = attack.rig()
    limit_ms = attack.limit_ms(rig.config)
    conditions = [bad for bad, ticks in runs for _ in range(ticks)]
    times_ms = [rig.now_ms + TICK_MS * (i + 1) for i in range(len(conditions))]
    expected_ms = next(
        (
            now
            for (since, _), bad, now in zip(
                reference_timer(conditions, times_ms), conditions, times_ms, strict=True
            )
            if bad and since is not None and now - since > limit_ms
        ),
        None,
    )
    latched_ms = None
    for bad in conditions:
        if bad:
            attack.bad(rig, BAD_AT[rule])
        else:
            attack.dip(rig)
        rig.tick()
        if attack.code in _codes(rig):
            latched_ms = rig.now_ms
            break
    assert latched_ms == expected_ms


# ------------------------------------------------------------------ a rule no longer judged


def _sensor_missing(rig: Rig) -> None:
    assert isinstance(rig, ChannelRig)
    rig.sensor_missing = True


def _firmware_stale(rig: Rig) -> None:
    rig.link = "stale"


CLEAR_SINCE: dict[str, Callable[[Rig], int | None]] = {
    "SR-PLAUS-3": lambda rig: rig.core.moving_at_rest_clear_since_ms,
    "SR-CHAN-2": lambda rig: rig.core.disagree_clear_since_ms,
}


@ATTACK_SETTINGS
@given(data=st.data())
@pytest.mark.parametrize(
    ("rule", "unjudged"),
    [
        ("SR-PLAUS-3", _firmware_stale),
        ("SR-CHAN-2", _sensor_missing),
        ("SR-CHAN-2", _firmware_stale),
    ],
)
def test_SR_PLAUS_3_SR_CHAN_2_a_timer_no_longer_judged_starts_fresh_with_no_clear_time(
    rule: str, unjudged: Callable[[Rig], None], data: st.DataObject
) -> None:
    """A rule that stops judging (no usable reading) during a dip drops its whole timer: no
    start and no clear time left behind, so the next bad reading starts a fresh timer."""
    attack = ATTACKS[rule]
    rig = attack.rig()
    attack.bad(rig, data.draw(BAD_KMH[rule]))
    rig.tick()
    attack.dip(rig)
    rig.tick()
    assert attack.since(rig) is not None
    assert CLEAR_SINCE[rule](rig) == rig.now_ms
    unjudged(rig)
    rig.tick()
    assert (attack.since(rig), CLEAR_SINCE[rule](rig)) == (None, None)


@ATTACK_SETTINGS
@given(bad_kmh=st.one_of(BAD_KMH["SR-PLAUS-2"], st.floats(3.0, 4.0)))
def test_SR_PLAUS_2_a_follow_timer_no_longer_judged_starts_fresh_with_no_clear_time(
    bad_kmh: float,
) -> None:
    """The not-following timer, too slow or too fast, dropped as a whole when the status
    becomes unusable during a dip: no start, no clear time, and not marked too fast."""
    attack = ATTACKS["SR-PLAUS-2"]
    rig = attack.rig()
    attack.bad(rig, bad_kmh)
    rig.tick()
    assert rig.core.follow_too_fast is (bad_kmh > 2.0)
    attack.dip(rig)
    rig.tick()
    assert attack.since(rig) is not None
    assert rig.core.follow_clear_since_ms == rig.now_ms
    _firmware_stale(rig)
    rig.tick()
    core = rig.core
    assert (core.follow_since_ms, core.follow_clear_since_ms, core.follow_too_fast) == (
        None,
        None,
        False,
    )

"""Rules SR-LINK-1..3: a lost or renewed link latches, START waits for a settled link, and a
link that loses too many frames in a window latches, whatever the gaps look like."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.rules.core import decide
from controller.rules.link import link_settled
from controller.rules.model import (
    Button,
    FaultCode,
    LinkHealth,
    Mode,
    SafetyConfig,
    Stop,
    StopKind,
)
from controller.rules.readiness import start_blockers
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    Rig,
    faulted_rig,
    idle_rig,
    running_rig,
    stopping_rig,
)

UP = LinkHealth(up=True, session=1)


def _rig_in(mode: Mode) -> Rig:
    rig = {
        Mode.IDLE: idle_rig,
        Mode.RUNNING: running_rig,
        Mode.STOPPING: stopping_rig,
        Mode.FAULTED: faulted_rig,
    }[mode]()
    rig.link_health = UP
    # A stopping belt comes to rest within a few ticks: adopt the session in one tick there.
    rig.run_ms(TICK_MS if mode is Mode.STOPPING else DEFAULT_CONFIG.link_settle_ms + TICK_MS)
    assert rig.core.mode is mode
    assert rig.core.link_session == 1
    return rig


# ---------------------------------------------------------------- SR-LINK-1


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("up", [True, False])
@pytest.mark.parametrize("new_session", [False, True])
def test_SR_LINK_1_exhaustive_link_down_or_renewed_latches_unless_idle(
    mode: Mode, up: bool, new_session: bool
) -> None:
    rig = _rig_in(mode)
    first_fault = rig.core.fault
    rig.link_health = LinkHealth(up=up, session=2 if new_session else 1)
    decision = rig.tick()
    lost = not up or new_session
    if not lost:
        assert decision.state.mode is mode
        assert decision.state.fault == first_fault
        return
    if mode is Mode.IDLE:
        # Nothing moves in IDLE: no fault, but a START must wait (SR-LINK-2).
        assert decision.state.mode is Mode.IDLE
        assert decision.state.fault is None
        assert decision.state.link_session == rig.link_health.session
        assert not link_settled(decision.state, rig.inputs(), DEFAULT_CONFIG, rig.now_ms)
        return
    assert decision.state.mode is Mode.FAULTED
    if mode is Mode.FAULTED:
        assert decision.state.fault == first_fault
        assert FaultCode.LINK_STALE in decision.state.secondary_faults
    else:
        assert decision.state.fault is not None
        assert decision.state.fault.code is FaultCode.LINK_STALE
        assert decision.state.fault.stop is StopKind.CONTROLLED
        assert "Firmware link lost" in decision.state.fault.message
        assert isinstance(decision.motion, Stop)


def test_SR_LINK_1_a_blip_between_two_ticks_is_caught_by_the_session() -> None:
    """The link went down and came back between two ticks: only the session tells."""
    rig = _rig_in(Mode.RUNNING)
    rig.link_health = LinkHealth(up=True, session=2)
    decision = rig.tick()
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    assert "session 1 -> 2" in decision.state.fault.message


def test_SR_LINK_1_nothing_moves_after_the_reconnect_until_reset_and_start() -> None:
    rig = _rig_in(Mode.RUNNING)
    rig.link_health = LinkHealth(up=False, session=1)
    rig.tick()
    rig.link_health = LinkHealth(up=True, session=2)
    for decision in rig.run_ms(3000):
        assert not isinstance(decision.motion, type(None))
        assert decision.state.mode is Mode.FAULTED
    rig.press(Button.RESET)
    assert rig.core.mode is Mode.IDLE
    assert rig.core.link_session == 2  # a reset adopts the new session
    assert rig.core.commanded_kmh == 0.0
    refused = rig.press(Button.START)  # the settle time starts again after the reset
    assert refused.state.mode is Mode.IDLE
    rig.run_ms(DEFAULT_CONFIG.link_settle_ms)
    assert rig.press(Button.START).state.mode is Mode.RUNNING


# ---------------------------------------------------------------- SR-LINK-2


def test_SR_LINK_2_start_refused_while_the_link_is_down() -> None:
    rig = _rig_in(Mode.IDLE)
    rig.link_health = LinkHealth(up=False, session=1)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.IDLE
    (refused,) = [e for e in decision.events if e.kind == "start_refused"]
    assert "the firmware link is down" in refused.message


@settings(deadline=None)
@given(
    settle_ms=st.integers(min_value=0, max_value=2000),
    press_after_ms=st.integers(min_value=0, max_value=3000),
)
def test_SR_LINK_2_property_start_only_once_the_link_has_settled(
    settle_ms: int, press_after_ms: int
) -> None:
    config = DEFAULT_CONFIG.__class__(**{**DEFAULT_CONFIG.__dict__, "link_settle_ms": settle_ms})
    rig = Rig(config=config, link_health=LinkHealth(up=True, session=5))
    first = rig.tick()  # the first tick in which the link is up and fresh
    settled_from = rig.now_ms
    assert first.state.link_settled_since_ms == settled_from
    rig.now_ms += press_after_ms - TICK_MS
    decision = rig.press(Button.START)
    waited_ms = rig.now_ms - settled_from
    assert (decision.state.mode is Mode.RUNNING) == (waited_ms >= settle_ms), (
        waited_ms,
        settle_ms,
        decision.events,
    )


def test_SR_LINK_2_blockers_name_the_link_and_are_empty_without_a_bridge() -> None:
    rig = idle_rig()
    assert rig.link_health is None
    assert start_blockers(rig.core, rig.inputs(), DEFAULT_CONFIG, rig.now_ms) == ()
    rig.link_health = LinkHealth(up=True, session=1)
    blockers = start_blockers(rig.core, rig.inputs(), DEFAULT_CONFIG, rig.now_ms)
    assert blockers == ("the firmware link has just been set up again: wait a moment",)
    rig.tick()
    rig.tick()
    (blocker,) = start_blockers(rig.core, rig.inputs(), DEFAULT_CONFIG, rig.now_ms)
    assert blocker.startswith("the firmware link has been up for 20 ms, less than 500 ms")


# ---------------------------------------------------------------- SR-LINK-3


def _quality_rig(mode: Mode) -> Rig:
    rig = _rig_in(mode)
    rig.link_health = LinkHealth(up=True, session=1, frames_received=0, frames_missed=0)
    rig.tick()  # the window starts here
    return rig


@settings(deadline=None)
@given(
    received=st.integers(min_value=0, max_value=200),
    missed=st.integers(min_value=0, max_value=200),
    window_ms=st.integers(min_value=100, max_value=3000),
    loss_max=st.floats(min_value=0.01, max_value=0.9),
)
def test_SR_LINK_3_property_fault_exactly_when_the_window_loses_too_much(
    received: int, missed: int, window_ms: int, loss_max: float
) -> None:
    config = DEFAULT_CONFIG.__class__(
        **{**DEFAULT_CONFIG.__dict__, "link_window_ms": window_ms, "link_loss_max": loss_max}
    )
    rig = Rig(
        config=config,
        link_health=LinkHealth(up=True, session=1, frames_received=0, frames_missed=0),
    )
    rig.tick()
    rig.now_ms += window_ms - TICK_MS
    rig.link_health = LinkHealth(up=True, session=1, frames_received=received, frames_missed=missed)
    decision = rig.tick()
    sent = received + missed
    expected = sent >= config.link_window_min_frames and missed > loss_max * sent
    assert (decision.state.fault is not None) == expected
    if expected:
        assert decision.state.fault is not None
        assert decision.state.fault.code is FaultCode.LINK_STALE
        assert f"{missed} of {sent} frames" in decision.state.fault.message


@pytest.mark.parametrize("mode", [Mode.IDLE, Mode.RUNNING, Mode.STOPPING])
def test_SR_LINK_3_four_frames_in_five_lost_latches_in_every_mode(mode: Mode) -> None:
    rig = _quality_rig(mode)
    received = missed = 0
    for tick in itertools.count():
        # Lose four frames in five, evenly: no gap ever comes near stale_ms.
        if tick % 5 == 0:
            received += 1
        else:
            missed += 1
        rig.link_health = LinkHealth(
            up=True, session=1, frames_received=received, frames_missed=missed
        )
        rig.tick()
        if rig.core.fault is not None or tick > 200:
            break
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.LINK_STALE
    assert "Firmware link degraded" in rig.core.fault.message
    assert tick * TICK_MS <= 2 * DEFAULT_CONFIG.link_window_ms


def test_SR_LINK_3_a_clean_link_never_faults() -> None:
    rig = _quality_rig(Mode.RUNNING)
    for n in range(1, 500):
        rig.link_health = LinkHealth(up=True, session=1, frames_received=2 * n, frames_missed=0)
        rig.tick()
    assert rig.core.mode is Mode.RUNNING


def test_SR_LINK_3_counters_going_back_start_a_new_window() -> None:
    rig = _quality_rig(Mode.RUNNING)
    rig.link_health = LinkHealth(up=True, session=1, frames_received=100, frames_missed=0)
    rig.run_ms(DEFAULT_CONFIG.link_window_ms + TICK_MS)
    assert rig.core.link_window is not None
    assert rig.core.link_window[1] == 100
    rig.link_health = LinkHealth(up=True, session=1, frames_received=5, frames_missed=0)
    decision = rig.tick()
    assert decision.state.link_window == (rig.now_ms, 5, 0)
    assert decision.state.mode is Mode.RUNNING


def _fresh_window(config: SafetyConfig = DEFAULT_CONFIG, received: int = 0, missed: int = 0) -> Rig:
    """An IDLE rig whose first link-quality window starts now at the given counters."""
    rig = Rig(
        config=config,
        link_health=LinkHealth(up=True, session=1, frames_received=received, frames_missed=missed),
    )
    rig.tick()
    assert rig.core.link_window == (rig.now_ms, received, missed)
    return rig


def _counters(rig: Rig, received: int, missed: int) -> None:
    rig.link_health = LinkHealth(up=True, session=1, frames_received=received, frames_missed=missed)


@pytest.mark.parametrize("extra", [-1, 0])
def test_SR_LINK_3_boundary_at_exactly_link_window_min_frames(extra: int) -> None:
    """Every frame lost: a window with exactly ``link_window_min_frames`` frames is judged,
    one frame fewer is not."""
    rig = _fresh_window()
    sent = DEFAULT_CONFIG.link_window_min_frames + extra
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - TICK_MS
    _counters(rig, 0, sent)
    decision = rig.tick()
    assert (decision.state.fault is not None) == (extra == 0)


@pytest.mark.parametrize("missed", [10, 11])
def test_SR_LINK_3_boundary_at_exactly_link_loss_max(missed: int) -> None:
    """Half of 20 frames lost is exactly the limit (0.5): no fault; one more lost: fault."""
    assert DEFAULT_CONFIG.link_loss_max == 0.5
    rig = _fresh_window()
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - TICK_MS
    _counters(rig, 20 - missed, missed)
    decision = rig.tick()
    assert (decision.state.fault is not None) == (missed == 11)


def test_SR_LINK_3_fault_message_names_the_measured_and_limit_percentages() -> None:
    config = DEFAULT_CONFIG.__class__(**{**DEFAULT_CONFIG.__dict__, "link_loss_max": 0.6})
    rig = _fresh_window(config)
    rig.now_ms += config.link_window_ms - TICK_MS
    _counters(rig, 2, 8)
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.message.startswith(
        "Firmware link degraded: 8 of 10 frames from the motor controller lost in the last "
        f"{config.link_window_ms} ms (80 %, limit 60 %)."
    )


@settings(deadline=None)
@given(
    start_received=st.integers(min_value=0, max_value=100_000),
    start_missed=st.integers(min_value=0, max_value=100_000),
    received=st.integers(min_value=0, max_value=200),
    missed=st.integers(min_value=0, max_value=200),
)
@example(start_received=1000, start_missed=0, received=0, missed=20)
@example(start_received=0, start_missed=1000, received=20, missed=0)
@example(start_received=0, start_missed=100, received=100, missed=100)
def test_SR_LINK_3_property_only_frames_since_the_window_start_count(
    start_received: int, start_missed: int, received: int, missed: int
) -> None:
    """The counters run from the link's start: a window judges their growth only."""
    rig = _fresh_window(received=start_received, missed=start_missed)
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - TICK_MS
    _counters(rig, start_received + received, start_missed + missed)
    decision = rig.tick()
    sent = received + missed
    expected = (
        sent >= DEFAULT_CONFIG.link_window_min_frames
        and missed > DEFAULT_CONFIG.link_loss_max * sent
    )
    assert (decision.state.fault is not None) == expected
    if expected:
        assert decision.state.fault is not None
        assert f"{missed} of {sent} frames" in decision.state.fault.message


def test_SR_LINK_3_a_second_tick_in_the_same_millisecond_keeps_the_window() -> None:
    rig = _fresh_window()
    start_ms = rig.now_ms
    _counters(rig, 0, 20)
    assert rig.tick(dt_ms=0).state.link_window == (start_ms, 0, 0)
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - TICK_MS
    decision = rig.tick()
    assert decision.state.fault is not None
    assert "20 of 20 frames" in decision.state.fault.message


def test_SR_LINK_3_time_going_back_starts_a_new_window() -> None:
    rig = _fresh_window()
    back_ms = rig.now_ms - 500
    decision = rig.tick(dt_ms=-500)
    assert decision.state.link_window == (back_ms, 0, 0)
    # The new window is judged a full window after its own start.
    rig.now_ms = back_ms + DEFAULT_CONFIG.link_window_ms - TICK_MS
    _counters(rig, 0, 20)
    decision = rig.tick()
    assert decision.state.fault is not None
    assert "20 of 20 frames" in decision.state.fault.message


def test_SR_LINK_3_a_burst_at_the_end_is_judged_with_the_whole_window() -> None:
    """Ticks in which no frame is lost keep the window: a burst of losses at its end counts."""
    rig = _fresh_window()
    start_ms = rig.now_ms
    received = 0
    while rig.now_ms + TICK_MS < start_ms + DEFAULT_CONFIG.link_window_ms:
        received += 1
        _counters(rig, received, 0)
        assert rig.tick().state.link_window == (start_ms, 0, 0)
    _counters(rig, received, 2 * received)
    decision = rig.tick()
    assert decision.state.fault is not None
    assert f"{2 * received} of {3 * received} frames" in decision.state.fault.message


def test_SR_LINK_3_the_next_window_starts_where_the_last_one_ended() -> None:
    """Frames lost in the tick right after a judged window count in the next window."""
    rig = _fresh_window()
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - TICK_MS
    _counters(rig, 50, 0)
    judged = rig.tick()
    assert judged.state.fault is None
    assert judged.state.link_window == (rig.now_ms, 50, 0)
    _counters(rig, 50, 60)
    rig.tick()
    rig.now_ms += DEFAULT_CONFIG.link_window_ms - 2 * TICK_MS
    decision = rig.tick()
    assert decision.state.fault is not None
    assert "60 of 60 frames" in decision.state.fault.message


def test_SR_LINK_no_bridge_no_link_rules() -> None:
    """Without a LinkHealth only the status age is judged (SR-STALE-1)."""
    rig = running_rig()
    state = rig.core
    decision = decide(state, rig.inputs(), DEFAULT_CONFIG, rig.now_ms + TICK_MS)
    assert decision.state.mode is Mode.RUNNING
    assert decision.state.link_session is None


@pytest.mark.parametrize("mode", [Mode.IDLE, Mode.RUNNING])
def test_SR_FW_2_a_reboot_announced_by_hello_is_the_cause_not_the_link_loss(mode: Mode) -> None:
    """The bridge drops the link when a new boot's HELLO arrives: the reboot is latched as the
    cause, before any STATUS of the new boot, and the link loss is not reported on top."""
    rig = _rig_in(mode)
    rig.link_health = LinkHealth(up=False, session=1, boot_id=rig.core.boot_id)
    if mode is Mode.IDLE:
        assert rig.tick().state.mode is Mode.IDLE  # IDLE: a plain link loss only waits
    rig.link_health = LinkHealth(up=False, session=1, boot_id=99)
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.FIRMWARE_REBOOT
    assert decision.state.secondary_faults == ()
    assert f"boot id {rig.boot_id} -> 99" in decision.state.fault.message
    assert isinstance(decision.motion, Stop)

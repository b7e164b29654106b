"""The link session (protocol.md §7-8, SR-LINK-1): every phase against every input, and its
timing rules with Hypothesis, on explicit times; no port, no clock, no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import MessageError
from firmware_bridge.port.bridge import FirmwareBridge
from firmware_bridge.wire.codec import encode_frame
from firmware_bridge.wire.link_phases import LinkPhase, is_allowed
from firmware_bridge.wire.messages import (
    PROTOCOL_VERSION,
    Configure,
    EStop,
    FwState,
    Hello,
    NakReason,
    SetSpeed,
    Stop,
)
from firmware_bridge.wire.session import LinkSession
from firmware_bridge.wire.session_actions import (
    DEBUG,
    JITTER_RANGE,
    WARNING,
    EndSession,
    LinkReport,
    NewBoot,
    Note,
    Send,
    backoff_s,
)
from tests.codec.session_driver import (
    BOOT_A,
    BOOT_B,
    HANDSHAKE_TIMEOUT_MS,
    LIMITS,
    LINK_TIMEOUT_MS,
    OTHER_CHECKSUM,
    OUR_CHECKSUM,
    Driver,
    sent_messages,
)

P = LinkPhase
END = "end"  # the session ends (EndSession): the bridge closes the port and reconnects


def _poll_silent(driver: Driver) -> object:
    driver.advance(LINK_TIMEOUT_MS + 1)
    return driver.poll()


def _phase(driver: Driver) -> LinkPhase:
    return driver.session.phase


#: Every discrete input of the session, as a step on a driver.
EVENTS: dict[str, Callable[[Driver], object]] = {
    "port_opened": lambda d: d.open(),
    "port_closed": lambda d: d.close(),
    "hello_same_boot": lambda d: d.hello(BOOT_A),
    "hello_new_boot": lambda d: d.hello(BOOT_B),
    "hello_other_version": lambda d: d.hello(BOOT_A, PROTOCOL_VERSION + 1),
    "ack_hello": lambda d: d.ack(d.hello_seq),
    "ack_configure": lambda d: d.ack(d.configure_seq),
    "ack_unknown": lambda d: d.ack(None),
    "nak_configure_refused": lambda d: d.nak(d.configure_seq, NakReason.REFUSED_IN_STATE),
    "nak_configure_moving": lambda d: d.nak(d.configure_seq, NakReason.BELT_MOVING),
    "nak_configure_ceiling": lambda d: d.nak(d.configure_seq, NakReason.ABOVE_CEILING),
    "nak_hello": lambda d: d.nak(d.hello_seq, NakReason.NO_HANDSHAKE),
    "status_idle_ours": lambda d: d.status(FwState.IDLE, OUR_CHECKSUM),
    "status_idle_other": lambda d: d.status(FwState.IDLE, OTHER_CHECKSUM),
    "status_fault_ours": lambda d: d.status(FwState.FAULT, OUR_CHECKSUM),
    "status_fault_other": lambda d: d.status(FwState.FAULT, OTHER_CHECKSUM),
    "status_running_ours": lambda d: d.status(FwState.RUNNING, OUR_CHECKSUM),
    "status_uptime_back": lambda d: d.status(FwState.FAULT, OTHER_CHECKSUM, uptime_ms=5),
    "fault_report": lambda d: d.fault_report(),
    "poll_in_time": lambda d: d.poll(),
    "poll_silent": _poll_silent,
}

#: Where each phase goes on each input; an input missing from a phase's row leaves it where
#: it is. Reached on a reconnect to a known boot (Driver.reach).
EXPECTED: dict[LinkPhase, dict[str, LinkPhase | str]] = {
    P.CLOSED: {"port_opened": P.HELLO},  # frames and polls without a port change nothing
    P.HELLO: {
        "port_closed": P.CLOSED,
        "hello_other_version": P.MISMATCH,
        "nak_hello": END,
        "poll_silent": END,
    },
    P.FIRST_STATUS: {
        "port_closed": P.CLOSED,
        "hello_new_boot": P.HELLO,
        "hello_other_version": P.MISMATCH,
        "status_idle_ours": P.CONFIGURE,
        "status_idle_other": P.CONFIGURE,
        "status_fault_ours": P.READY,
        "status_running_ours": P.READY,
        "status_fault_other": P.WAIT_IDLE,
        "status_uptime_back": P.WAIT_IDLE,  # no STATUS yet in this session: nothing went back
        "poll_silent": END,
    },
    P.WAIT_IDLE: {
        "port_closed": P.CLOSED,
        "hello_new_boot": P.HELLO,
        "hello_other_version": P.MISMATCH,
        "status_idle_ours": P.READY,
        "status_idle_other": P.CONFIGURE,
        "status_fault_ours": P.READY,
        "status_running_ours": P.READY,
        "status_uptime_back": P.HELLO,
        "poll_silent": END,
    },
    P.CONFIGURE: {
        "port_closed": P.CLOSED,
        "hello_new_boot": P.HELLO,
        "hello_other_version": P.MISMATCH,
        "ack_configure": P.CHECKSUM,
        "nak_configure_refused": P.WAIT_IDLE,
        "nak_configure_moving": P.WAIT_IDLE,
        "nak_configure_ceiling": END,
        "status_uptime_back": P.HELLO,
        "poll_silent": END,
    },
    P.CHECKSUM: {
        "port_closed": P.CLOSED,
        "hello_new_boot": P.HELLO,
        "hello_other_version": P.MISMATCH,
        "status_idle_ours": P.READY,
        "status_fault_ours": P.READY,
        "status_running_ours": P.READY,
        "status_uptime_back": P.HELLO,
        "poll_silent": END,
    },
    P.READY: {
        "port_closed": P.CLOSED,
        "hello_new_boot": P.HELLO,
        "hello_other_version": P.MISMATCH,
        "status_uptime_back": P.HELLO,
        "poll_silent": END,
    },
    P.MISMATCH: {
        "port_closed": P.CLOSED,
        "hello_same_boot": P.HELLO,  # the boot now speaks our version: handshake again
        "hello_new_boot": P.HELLO,
        "poll_silent": END,
    },
}

#: Inputs that only make sense with the port closed, and the ones that need it open.
CLOSED_ONLY = {"port_opened"}

CELLS = [
    (phase, event)
    for phase in LinkPhase
    for event in EVENTS
    if (event in CLOSED_ONLY) == (phase is P.CLOSED) or event not in CLOSED_ONLY
]


def _cell_id(cell: tuple[LinkPhase, str]) -> str:
    return f"{cell[0].name}-{cell[1]}"


def test_every_phase_is_reachable_and_the_table_covers_every_phase() -> None:
    assert set(EXPECTED) == set(LinkPhase)
    for phase in LinkPhase:
        driver = Driver()
        driver.reach(phase)
        assert driver.session.phase is phase
    assert all(event in EVENTS for row in EXPECTED.values() for event in row)


@pytest.mark.parametrize(("phase", "event"), CELLS, ids=[_cell_id(c) for c in CELLS])
def test_protocol_8_exhaustive_phase_by_input(phase: LinkPhase, event: str) -> None:
    """protocol.md §8, every phase against every input: the next phase is the table's; every
    change is in the link-phase table; the link is reported up exactly when the handshake
    completes (SR-LINK-1: a new session each time) and down exactly when it stops being
    complete; the session never sends motion on its own; SET_SPEED goes out only when ready."""
    driver = Driver()
    driver.reach(phase)
    session = driver.session
    before_count = session.session
    before_connected = session.connected

    EVENTS[event](driver)
    actions = list(driver.actions)

    expected = EXPECTED[phase].get(event, phase)
    after = session.phase
    if expected == END:
        assert driver.ended(), f"{phase.name} + {event}: the session should end"
        assert after is phase  # the bridge closes the port: port_closed follows
        actions += driver.close("session ended")
        assert session.phase is P.CLOSED
    else:
        assert not driver.ended()
        assert after is expected, f"{phase.name} + {event}: {after.name}, not {expected}"
        assert is_allowed(phase, after)

    reports = [a for a in actions if isinstance(a, LinkReport)]
    went_up = [r for r in reports if r.up]
    went_down = [r for r in reports if not r.up]
    completed = session.phase is P.READY and not before_connected
    assert len(went_up) == (1 if completed else 0)
    assert session.session == before_count + (1 if completed else 0)
    lost = before_connected and not session.connected
    assert len(went_down) == (1 if lost else 0)
    assert all(r.reason for r in reports)

    assert session.connected is (session.phase is P.READY)
    for _, msg in sent_messages(driver.log):
        assert isinstance(msg, Hello | Configure), f"the session sent {msg!r} on its own"
    frame = session.set_speed(SetSpeed(1.0, 0.3, 300))
    assert (frame is not None) is (session.phase is P.READY)


@pytest.mark.parametrize("phase", list(LinkPhase), ids=lambda p: p.name)
def test_protocol_7_stop_and_estop_go_out_whenever_the_port_is_open(phase: LinkPhase) -> None:
    """protocol.md §7: STOP and ESTOP in every phase with a port, handshake or not, tracked
    until ACKed; nothing without a port (the firmware's lease stops the belt then)."""
    driver = Driver()
    driver.reach(phase)
    session = driver.session
    dropped = session.motion_dropped
    for msg in (Stop(3.6), EStop()):
        frame = session.stop(msg, driver.now_ms)
        assert (frame is not None) is (phase is not P.CLOSED)
    assert session.motion_dropped == dropped + (2 if phase is P.CLOSED else 0)
    clear = session.clear_fault(driver.now_ms)
    assert (clear is not None) is (phase in (P.READY, P.WAIT_IDLE))
    assert (session.request_status() is not None) is (phase is P.READY)


def test_SR_LINK_1_reconnect_to_the_same_boot_counts_a_new_session() -> None:
    """§8 step 7: a replug to the same boot whose STATUS echoes our checksum comes up without
    CONFIGURE, even from FAULT, and as a new session (the controller latches on it)."""
    driver = Driver()
    driver.handshake(BOOT_A)
    assert driver.session.session == 1
    driver.close("cable pulled")
    driver.open()
    driver.ack(driver.hello_seq)
    driver.hello(BOOT_A)
    driver.status(FwState.FAULT, OUR_CHECKSUM)
    assert driver.session.connected
    assert driver.session.session == 2
    assert not any(isinstance(m, Configure) for _, m in sent_messages(driver.actions))


def test_protocol_8_step_4_new_boot_is_announced_once_and_the_link_goes_down() -> None:
    driver = Driver()
    driver.handshake(BOOT_A)
    actions = driver.hello(BOOT_B)
    assert [a.hello.boot_id for a in actions if isinstance(a, NewBoot)] == [BOOT_B]
    assert [r.up for r in driver.reports()] == [False]
    assert "firmware rebooted" in driver.reports()[0].reason
    assert driver.session.boot_id == BOOT_B
    assert driver.session.phase is P.HELLO
    assert [type(m) for _, m in sent_messages(actions)] == [Hello]


def test_protocol_8_first_hello_only_sets_the_reference() -> None:
    driver = Driver()
    driver.open()
    actions = driver.hello(BOOT_A)
    assert not any(isinstance(a, NewBoot) for a in actions)
    assert any(isinstance(a, Note) and "boot_id 0x11112222" in a.text for a in actions)


def test_protocol_8_step_3_mismatch_sends_nothing_but_stop_and_names_the_versions() -> None:
    driver = Driver()
    driver.handshake(BOOT_A)
    driver.hello(BOOT_A, PROTOCOL_VERSION + 1)
    session = driver.session
    assert [r.up for r in driver.reports()] == [False]
    assert f"controller needs v{PROTOCOL_VERSION}" in (session.last_error or "")
    assert session.set_speed(SetSpeed(1.0, 0.3, 300)) is None
    assert session.clear_fault(driver.now_ms) is None
    assert session.stop(Stop(3.6), driver.now_ms) is not None
    reason, _ = session.port_closed("serial port closed")
    assert reason.startswith("firmware speaks protocol")
    assert reason.endswith("(serial port closed)")


def test_protocol_8_step_6_configure_above_the_ceiling_names_limits_and_ceilings() -> None:
    driver = Driver()
    driver.reach(P.CONFIGURE)
    driver.nak(driver.configure_seq, NakReason.ABOVE_CEILING)
    end = [a for a in driver.actions if isinstance(a, EndSession)]
    assert len(end) == 1
    assert f"max_speed {LIMITS.max_speed_kmh} km/h" in end[0].reason
    assert "compiled-in ceilings are 12.0 km/h" in end[0].reason


def test_protocol_8_configure_refused_three_times_while_idle_ends_the_session() -> None:
    driver = Driver()
    driver.reach(P.CONFIGURE)
    for _ in range(2):
        driver.nak(driver.configure_seq, NakReason.REFUSED_IN_STATE)
        assert _phase(driver) is P.WAIT_IDLE
        driver.status(FwState.IDLE, OTHER_CHECKSUM)
        assert _phase(driver) is P.CONFIGURE
    driver.nak(driver.configure_seq, NakReason.REFUSED_IN_STATE)
    driver.status(FwState.IDLE, OTHER_CHECKSUM)
    assert driver.ended()
    assert "refused CONFIGURE 3 times" in driver.actions[-1].reason  # type: ignore[union-attr]


def test_protocol_8_checksum_never_echoed_ends_at_the_handshake_deadline() -> None:
    driver = Driver()
    driver.reach(P.CHECKSUM)
    for _ in range(HANDSHAKE_TIMEOUT_MS // 20 + 2):
        driver.advance(20)
        driver.status(FwState.IDLE, OTHER_CHECKSUM)
        driver.poll()
        if driver.ended():
            break
    assert driver.ended()
    reason = driver.actions[-1].reason  # type: ignore[union-attr]
    assert f"echoes config checksum {OTHER_CHECKSUM:#06x}" in reason


def test_protocol_7_hello_unanswered_is_retransmitted_three_times_then_fails() -> None:
    driver = Driver()
    driver.open()
    sent_at = driver.now_ms
    resent: list[int] = []
    while not driver.ended():
        driver.advance(10)
        # The firmware never answers HELLO but keeps talking (STATUS, ignored before its
        # HELLO), so the link is not silent.
        driver.status(FwState.IDLE, OTHER_CHECKSUM)
        actions = driver.poll()
        resent.extend(driver.now_ms - sent_at for a in actions if isinstance(a, Send))
    assert resent == [100, 200, 300]
    assert driver.now_ms - sent_at == 400
    assert "no answer from the firmware to HELLO" in driver.actions[-1].reason  # type: ignore[union-attr]


def test_reconnect_backoff_starts_afresh_after_a_session_that_linked() -> None:
    driver = Driver()
    session = driver.session
    delays = [session.retry("cannot open serial port", 1.0)[0] for _ in range(7)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    notes = [session.retry("cannot open serial port", 1.0)[1] for _ in range(2)]
    assert [n.level for n in notes] == [DEBUG, DEBUG]  # the same reason: said once already
    driver.handshake(BOOT_A)
    reason, _ = session.port_closed("cable pulled")
    delay, note = session.retry(reason, 1.0)
    assert delay == 0.2
    assert note.level == DEBUG  # the link-down report said it
    assert session.retry("cannot open serial port", 1.0)[1].level == WARNING
    assert session.last_error == "cannot open serial port"


# ---------------------------------------------------------------------- properties over time

STEPS = st.lists(
    st.tuples(
        st.sampled_from(sorted(EVENTS)),
        st.integers(min_value=0, max_value=700),  # ms before the step
    ),
    max_size=40,
)


def _run_steps(driver: Driver, steps: list[tuple[str, int]]) -> None:
    for event, gap_ms in steps:
        driver.advance(gap_ms)
        if event == "port_opened" and driver.session.port_open:
            continue  # the bridge opens a port only after the last one closed
        if event == "port_closed" and not driver.session.port_open:
            continue
        EVENTS[event](driver)
        if driver.ended():
            driver.close("session ended")


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_SR_LINK_1_property_link_up_only_after_a_fresh_handshake(
    steps: list[tuple[str, int]],
) -> None:
    """Reconnect at any time, with any input at any gap: the link is never reported up
    without a complete handshake in the same port session (host HELLO sent and ACKed, the
    firmware's HELLO, a STATUS echoing our checksum), each up report is a new session, and
    there is never an up report while the port is closed."""
    driver = Driver()
    driver.reach(P.CLOSED)
    session = driver.session
    seen_hello_acked = seen_fw_hello = False
    last_count = session.session
    for event, gap_ms in steps:
        before = len(driver.log)
        _run_steps(driver, [(event, gap_ms)])
        new = driver.log[before:]
        if event == "port_opened":
            seen_hello_acked = seen_fw_hello = False
        if event == "ack_hello" and session.port_open:
            seen_hello_acked = True
        if event in ("hello_same_boot", "hello_new_boot") and session.port_open:
            seen_fw_hello = True
        ups = [a for a in new if isinstance(a, LinkReport) and a.up]
        if ups:
            assert len(ups) == 1
            assert session.port_open
            assert seen_hello_acked
            assert seen_fw_hello
            assert event in ("status_idle_ours", "status_fault_ours", "status_running_ours")
            assert session.session == last_count + 1
        else:
            assert session.session == last_count
        last_count = session.session
        if not session.port_open:
            assert not session.connected


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, at=st.integers(min_value=0, max_value=40))
def test_SR_LINK_1_property_a_new_boot_always_reports_a_new_session(
    steps: list[tuple[str, int]], at: int
) -> None:
    """A HELLO with another boot id, at any point of any history: the link is not up right
    after it (reported down if it was up), and the next time it is up the session count has
    moved on, so the controller sees a new session whatever happened in between."""
    driver = Driver()
    driver.handshake(BOOT_A)
    session = driver.session
    _run_steps(driver, steps[:at])
    if not session.port_open:
        driver.open()
    was_up = session.connected
    count = session.session
    actions = driver.hello(0x5555_0000 + at)
    assert not session.connected
    assert session.boot_id == 0x5555_0000 + at
    downs = [a for a in actions if isinstance(a, LinkReport) and not a.up]
    assert len(downs) == (1 if was_up else 0)
    before = len(driver.log)
    _run_steps(driver, steps[at:])
    ups = [a for a in driver.log[before:] if isinstance(a, LinkReport) and a.up]
    if session.connected:
        assert ups, "linked again without reporting it"
        assert session.session > count
    assert session.session == count + len(ups)


@settings(max_examples=200, deadline=None)
@given(
    phase=st.sampled_from([p for p in LinkPhase if p is not P.CLOSED]),
    silent_ms=st.integers(min_value=0, max_value=3 * LINK_TIMEOUT_MS),
)
def test_protocol_7_property_silence_ends_the_session_exactly_after_the_link_timeout(
    phase: LinkPhase, silent_ms: int
) -> None:
    """No valid frame for more than ``link_timeout_ms``: link down, in every open phase
    (the silence is checked before the handshake deadline)."""
    driver = Driver()
    driver.reach(phase)
    driver.advance(silent_ms)
    driver.poll()
    ended_by_silence = any(
        isinstance(a, EndSession) and "no valid frame" in a.reason for a in driver.actions
    )
    assert ended_by_silence is (silent_ms > LINK_TIMEOUT_MS)


@settings(max_examples=200, deadline=None)
@given(
    phase=st.sampled_from(list(LinkPhase)),
    after_ms=st.integers(min_value=0, max_value=2000),
)
def test_protocol_7_property_next_poll_is_never_after_a_deadline(
    phase: LinkPhase, after_ms: int
) -> None:
    """The bridge sleeps until next_poll_ms (at least 1 ms): never more than POLL_MAX_MS
    ahead, and never after the link-silence deadline or a retransmit."""
    driver = Driver()
    driver.reach(phase)
    if phase is not P.CLOSED:
        driver.session.stop(Stop(3.6), driver.now_ms)  # a frame waiting for its ACK
    last_rx = driver.now_ms
    stop_sent = driver.now_ms
    driver.advance(after_ms)
    now = driver.now_ms
    nxt = driver.session.next_poll_ms(now)
    assert nxt <= now + 100
    assert nxt <= last_rx + LINK_TIMEOUT_MS + 1
    if phase is not P.CLOSED:
        assert nxt <= stop_sent + 100


@given(
    failures=st.integers(min_value=1, max_value=60),
    jitter=st.floats(min_value=JITTER_RANGE[0], max_value=JITTER_RANGE[1]),
)
def test_reconnect_property_backoff_stays_in_bounds_and_never_shrinks(
    failures: int, jitter: float
) -> None:
    delay = backoff_s(failures, 0.2, 5.0, jitter)
    assert 0.1 <= delay <= 5.0
    assert backoff_s(failures + 1, 0.2, 5.0, jitter) >= delay


def test_commands_before_any_port_are_refused_and_counted() -> None:
    session = LinkSession(LIMITS, port="/dev/ttyTEST")
    assert session.set_speed(SetSpeed(1.0, 0.3, 300)) is None
    assert session.stop(Stop(3.6), 0) is None
    assert session.motion_dropped == 2
    assert session.poll(0) == []
    assert session.next_poll_ms(0) > 0


def test_the_session_rejects_bad_timeouts_and_backoff() -> None:
    with pytest.raises(ValueError, match="must be > 0 ms"):
        LinkSession(LIMITS, port="p", link_timeout_ms=0)
    with pytest.raises(ValueError, match="reconnect backoff"):
        LinkSession(LIMITS, port="p", reconnect_min_s=2.0, reconnect_max_s=1.0)


def test_protocol_7_set_speed_every_tick_carries_a_new_seq_and_the_current_values() -> None:
    """A steady belt sends the same SET_SPEED every tick (it renews the lease, FW-3): each
    frame is exactly what encoding it afresh gives, with the next SEQ; a new value is sent
    as soon as it is asked for."""
    driver = Driver()
    driver.reach(P.READY)
    session = driver.session
    steady = SetSpeed(1.0, 0.3, 300)
    asked = [steady, steady, SetSpeed(1.0, 0.3, 300), SetSpeed(1.5, 0.3, 300), steady]
    frames = [session.set_speed(msg) for msg in asked]
    assert all(frame is not None for frame in frames)
    decoded = sent_messages([Send(frame) for frame in frames if frame is not None])
    seqs = [seq for seq, _ in decoded]
    assert seqs == [(seqs[0] + i) % 256 for i in range(len(asked))]
    assert [msg for _, msg in decoded] == asked
    assert frames == [encode_frame(seq, msg) for seq, msg in zip(seqs, asked, strict=True)]


def test_the_bridge_checks_every_new_set_speed_value_even_after_a_steady_run() -> None:
    """The bridge reuses the SET_SPEED of unchanged arguments; a new value is range-checked
    (a controller bug raises, it is never sent)."""
    bridge = FirmwareBridge("/dev/null-port", baud=115200, limits=LIMITS, clock_ms=lambda: 0)
    assert bridge.set_speed(1.0, 0.3, 300) is False  # no link: nothing sent, counted
    assert bridge.set_speed(1.0, 0.3, 300) is False
    with pytest.raises(MessageError, match="speed_kmh"):
        bridge.set_speed(99.0, 0.3, 300)
    with pytest.raises(MessageError, match="lease_ms"):
        bridge.set_speed(1.0, 0.3, 70_000)
    assert bridge.stats.motion_dropped_link_down == 2

"""Sequence numbers, acknowledged frames and receive-side sequence checks, on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.wire.codec import encode_frame
from firmware_bridge.wire.link import (
    ACKED_MESSAGE_IDS,
    DEFAULT_ACK_TIMEOUT_MS,
    DEFAULT_MAX_RETRIES,
    LINK_SILENCE_MS,
    ReliableSender,
    RxSeqStats,
    RxSequenceChecker,
    SenderStats,
    SeqKind,
    SequenceCounter,
    SeqVerdict,
    needs_ack,
)
from firmware_bridge.wire.messages import (
    ClearFault,
    Configure,
    EStop,
    GetStatus,
    MsgId,
    SetSpeed,
    Stop,
    host_hello,
)

# --------------------------------------------------------------------------
# Policy constants
# --------------------------------------------------------------------------


def test_policy_defaults_match_the_protocol_document() -> None:
    assert DEFAULT_ACK_TIMEOUT_MS == 100
    assert DEFAULT_MAX_RETRIES == 3
    assert LINK_SILENCE_MS == 500
    assert {
        MsgId.HELLO,
        MsgId.CONFIGURE,
        MsgId.STOP,
        MsgId.ESTOP,
        MsgId.CLEAR_FAULT,
    } == ACKED_MESSAGE_IDS


def test_set_speed_and_get_status_are_not_acked_the_rest_are() -> None:
    assert not needs_ack(SetSpeed(1.0, 0.3, 300))
    assert not needs_ack(GetStatus())
    for msg in (host_hello(), Configure.with_checksum(8, 0.5, 3.6, 300), Stop(3.6), EStop()):
        assert needs_ack(msg)
    assert needs_ack(ClearFault())


# --------------------------------------------------------------------------
# SequenceCounter
# --------------------------------------------------------------------------


def test_sequence_counter_counts_and_wraps_at_255() -> None:
    counter = SequenceCounter(start=254)
    assert [counter.next() for _ in range(4)] == [254, 255, 0, 1]
    assert counter.peek() == 2


def test_sequence_counter_starts_at_zero_and_covers_every_byte() -> None:
    counter = SequenceCounter()
    assert [counter.next() for _ in range(256)] == list(range(256))
    assert counter.next() == 0


@pytest.mark.parametrize("start", [-1, 256, True])
def test_sequence_counter_refuses_a_start_outside_a_byte(start: int) -> None:
    with pytest.raises(ValueError, match=r"start = .* allowed 0\.\.255"):
        SequenceCounter(start)


# --------------------------------------------------------------------------
# ReliableSender timeline (ack timeout 100 ms, 3 retries)
# --------------------------------------------------------------------------

FRAME = encode_frame(5, Stop(3.6))


def test_unanswered_frame_is_retransmitted_three_times_then_fails_at_400_ms() -> None:
    sender = ReliableSender()
    sender.track(seq=5, frame=FRAME, now_ms=1000)
    timeline: list[tuple[int, str, object]] = []
    for now_ms in range(1000, 1501, 10):
        for frame in sender.due(now_ms):
            timeline.append((now_ms, "resend", frame))
        for seq in sender.failed(now_ms):
            timeline.append((now_ms, "failed", seq))
    assert timeline == [
        (1100, "resend", FRAME),
        (1200, "resend", FRAME),
        (1300, "resend", FRAME),
        (1400, "failed", 5),
    ]
    assert sender.pending == 0
    assert sender.stats == SenderStats(tracked=1, retransmits=3, failed=1)


def test_nothing_is_due_before_the_timeout() -> None:
    sender = ReliableSender(ack_timeout_ms=100, max_retries=3)
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.due(99) == []
    assert sender.failed(99) == []
    assert sender.due(100) == [FRAME]
    assert sender.due(199) == []  # the timeout restarts at each retransmission


def test_ack_stops_retransmission() -> None:
    sender = ReliableSender()
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.due(100) == [FRAME]
    assert sender.on_ack(1) is True
    assert sender.pending == 0
    assert sender.due(1000) == []
    assert sender.failed(1000) == []
    assert sender.stats == SenderStats(tracked=1, acked=1, retransmits=1)


def test_nak_is_an_answer_and_stops_retransmission() -> None:
    sender = ReliableSender()
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.on_nak(1) is True
    assert sender.due(500) == []
    assert sender.failed(500) == []
    assert sender.stats == SenderStats(tracked=1, naked=1)


def test_answer_for_an_unknown_seq_is_counted_and_ignored() -> None:
    sender = ReliableSender()
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.on_ack(2) is False
    assert sender.on_nak(3) is False
    assert sender.pending == 1
    assert sender.stats.unexpected_answers == 2
    assert sender.on_ack(1) is True
    assert sender.on_ack(1) is False  # a duplicate ACK (after our retransmission)


def test_late_ack_after_failure_does_not_resurrect_the_frame() -> None:
    sender = ReliableSender(ack_timeout_ms=100, max_retries=0)
    sender.track(seq=9, frame=FRAME, now_ms=0)
    assert sender.failed(100) == [9]
    assert sender.on_ack(9) is False
    assert sender.stats == SenderStats(tracked=1, failed=1, unexpected_answers=1)


def test_failure_is_reported_once_whichever_method_sees_it_first() -> None:
    sender = ReliableSender(ack_timeout_ms=100, max_retries=1)
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.due(100) == [FRAME]
    assert sender.due(200) == []  # expired here, not retransmitted
    assert sender.failed(200) == [1]
    assert sender.failed(300) == []


def test_several_frames_keep_their_own_timelines() -> None:
    sender = ReliableSender(ack_timeout_ms=100, max_retries=2)
    a, b = encode_frame(1, Stop(3.6)), encode_frame(2, ClearFault())
    sender.track(seq=1, frame=a, now_ms=0)
    sender.track(seq=2, frame=b, now_ms=50)
    assert sender.pending_seqs == (1, 2)
    assert sender.due(100) == [a]
    assert sender.due(150) == [b]
    assert sender.on_ack(2)
    assert sender.due(200) == [a]
    assert sender.failed(299) == []
    assert sender.failed(300) == [1]
    assert sender.stats == SenderStats(tracked=2, acked=1, retransmits=3, failed=1)


def test_a_late_tick_sends_one_copy_not_a_burst() -> None:
    sender = ReliableSender(ack_timeout_ms=100, max_retries=3)
    sender.track(seq=1, frame=FRAME, now_ms=0)
    assert sender.due(350) == [FRAME]  # three timeouts passed, one retransmission
    assert sender.stats.retransmits == 1


def test_reusing_a_pending_seq_is_refused() -> None:
    sender = ReliableSender()
    sender.track(seq=1, frame=FRAME, now_ms=0)
    with pytest.raises(ValueError, match="seq 1 is still waiting for its ACK"):
        sender.track(seq=1, frame=FRAME, now_ms=10)


def test_clear_forgets_everything_pending() -> None:
    sender = ReliableSender()
    sender.track(seq=1, frame=FRAME, now_ms=0)
    sender.track(seq=2, frame=FRAME, now_ms=0)
    assert sender.clear() == [1, 2]
    assert sender.pending == 0
    assert sender.due(1000) == []
    assert sender.failed(1000) == []


@pytest.mark.parametrize(("timeout", "retries"), [(0, 3), (-1, 3), (100, -1)])
def test_sender_refuses_nonsense_settings(timeout: int, retries: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        ReliableSender(ack_timeout_ms=timeout, max_retries=retries)


@given(st.integers(1, 500), st.integers(0, 6), st.integers(0, 10**9))
def test_failure_time_is_timeout_times_retries_plus_one(
    timeout: int, retries: int, start_ms: int
) -> None:
    sender = ReliableSender(ack_timeout_ms=timeout, max_retries=retries)
    sender.track(seq=0, frame=FRAME, now_ms=start_ms)
    fail_ms = start_ms + timeout * (retries + 1)
    for k in range(1, retries + 1):
        assert sender.due(start_ms + k * timeout - 1) == []
        assert sender.due(start_ms + k * timeout) == [FRAME]
    assert sender.failed(fail_ms - 1) == []
    assert sender.failed(fail_ms) == [0]
    assert sender.stats.retransmits == retries


# --------------------------------------------------------------------------
# RxSequenceChecker
# --------------------------------------------------------------------------


def kinds(checker: RxSequenceChecker, seqs: list[int]) -> list[SeqVerdict]:
    return [checker.check(s) for s in seqs]


def test_consecutive_numbers_are_new_including_the_wrap_255_to_0() -> None:
    checker = RxSequenceChecker()
    assert kinds(checker, [253, 254, 255, 0, 1]) == [SeqVerdict(SeqKind.NEW)] * 5
    assert checker.stats == RxSeqStats(received=5)
    assert checker.last_seq == 1


def test_duplicate_is_reported_and_not_new() -> None:
    checker = RxSequenceChecker()
    verdicts = kinds(checker, [10, 11, 11, 12])
    assert [v.kind for v in verdicts] == [SeqKind.NEW, SeqKind.NEW, SeqKind.DUPLICATE, SeqKind.NEW]
    assert not verdicts[2].is_new
    assert verdicts[3].is_new
    assert checker.stats == RxSeqStats(received=4, duplicates=1)


def test_gap_reports_how_many_frames_were_missed_across_the_wrap() -> None:
    checker = RxSequenceChecker()
    assert kinds(checker, [250, 2]) == [SeqVerdict(SeqKind.NEW), SeqVerdict(SeqKind.GAP, 7)]
    assert checker.check(3) == SeqVerdict(SeqKind.NEW)
    assert checker.stats == RxSeqStats(received=3, gaps=1, missed=7)


def test_largest_gap_and_out_of_order() -> None:
    checker = RxSequenceChecker()
    checker.check(0)
    assert checker.check(128) == SeqVerdict(SeqKind.GAP, 127)
    assert checker.check(127) == SeqVerdict(SeqKind.OUT_OF_ORDER)
    assert checker.check(128) == SeqVerdict(SeqKind.NEW)  # re-anchored on 127
    assert checker.stats == RxSeqStats(received=4, gaps=1, missed=127, out_of_order=1)


def test_sender_restart_is_followed_after_one_frame() -> None:
    checker = RxSequenceChecker()
    kinds(checker, [100, 101])
    assert checker.check(0).kind is SeqKind.OUT_OF_ORDER  # firmware rebooted, counter restarted
    assert checker.check(1).kind is SeqKind.NEW


def test_reset_forgets_the_reference_but_keeps_counters() -> None:
    checker = RxSequenceChecker()
    kinds(checker, [5, 5])
    checker.reset()
    assert checker.last_seq is None
    assert checker.check(100) == SeqVerdict(SeqKind.NEW)
    assert checker.stats == RxSeqStats(received=3, duplicates=1)


@pytest.mark.parametrize("seq", [-1, 256])
def test_checker_refuses_a_seq_outside_a_byte(seq: int) -> None:
    with pytest.raises(ValueError, match=r"allowed 0\.\.255"):
        RxSequenceChecker().check(seq)


@given(st.integers(0, 255), st.lists(st.integers(0, 3), max_size=300))
def test_missed_count_equals_frames_dropped(start: int, drops: list[int]) -> None:
    """Dropping k frames (k <= 3) between received ones gives GAP(k), and the sum matches."""
    checker = RxSequenceChecker()
    seq = start
    checker.check(seq)
    for k in drops:
        seq = (seq + 1 + k) % 256
        verdict = checker.check(seq)
        assert verdict == (SeqVerdict(SeqKind.GAP, k) if k else SeqVerdict(SeqKind.NEW))
    assert checker.stats.missed == sum(drops)
    assert checker.stats.gaps == sum(1 for k in drops if k)


@given(
    sends=st.lists(st.integers(0, 500), min_size=0, max_size=5, unique=True),
    timeout_ms=st.integers(1, 300),
    retries=st.integers(0, 3),
)
def test_next_due_is_the_first_time_due_or_failed_has_news(
    sends: list[int], timeout_ms: int, retries: int
) -> None:
    sender = ReliableSender(ack_timeout_ms=timeout_ms, max_retries=retries)
    for seq, sent_ms in enumerate(sorted(sends)):
        sender.track(seq, b"frame", sent_ms)
    due_ms = sender.next_due_ms()
    if not sends:
        assert due_ms is None
        return
    assert due_ms == min(sends) + timeout_ms
    probe = ReliableSender(ack_timeout_ms=timeout_ms, max_retries=retries)
    for seq, sent_ms in enumerate(sorted(sends)):
        probe.track(seq, b"frame", sent_ms)
    assert probe.due(due_ms - 1) == []
    assert probe.failed(due_ms - 1) == []
    assert sender.due(due_ms) or sender.failed(due_ms)

"""Sequence and acknowledgement bookkeeping of the firmware link (pure: time comes in as now_ms).

Reliability policy (docs/protocol.md, "Reliability"):

- HELLO, CONFIGURE, STOP, ESTOP and CLEAR_FAULT need an ACK (or a NAK). The host keeps the
  encoded frame and sends the identical bytes again (same SEQ) every ``ack_timeout_ms``
  without an answer, at most ``max_retries`` times. A frame still unanswered
  ``ack_timeout_ms`` after its last retransmission has failed, and the link counts as down.
- SET_SPEED is never acknowledged or retransmitted: the next tick's SET_SPEED supersedes it,
  and STATUS ``last_applied_seq`` confirms which one the firmware applied.
- GET_STATUS is answered by a STATUS; STATUS, FAULT, ACK and NAK are never acknowledged.

With the defaults (100 ms, 3 retries) a frame sent at t is retransmitted at t+100, t+200 and
t+300 and reported failed at t+400.

>>> sender = ReliableSender(ack_timeout_ms=100, max_retries=1)
>>> sender.track(seq=5, frame=b"frame-5", now_ms=0)
>>> sender.due(now_ms=99), sender.due(now_ms=100), sender.failed(now_ms=150)
([], [b'frame-5'], [])
>>> sender.failed(now_ms=200), sender.pending
([5], 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from firmware_bridge.wire.messages import Message, MsgId

SEQ_MODULO: Final = 256
DEFAULT_ACK_TIMEOUT_MS: Final = 100
DEFAULT_MAX_RETRIES: Final = 3
LINK_SILENCE_MS: Final = 500  # no valid frame for this long: the link is down

ACKED_MESSAGE_IDS: Final = frozenset(
    {MsgId.HELLO, MsgId.CONFIGURE, MsgId.STOP, MsgId.ESTOP, MsgId.CLEAR_FAULT}
)


def needs_ack(msg: Message) -> bool:
    """True for the host-to-firmware messages that are ACKed and retransmitted."""
    return msg.MSG_ID in ACKED_MESSAGE_IDS


class SequenceCounter:
    """Sender sequence numbers: 0, 1, ..., 255, 0, ... (one per frame sent)."""

    def __init__(self, start: int = 0) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < SEQ_MODULO:
            raise ValueError(f"SequenceCounter start = {start!r} is out of range: allowed 0..255")
        self._next = start

    def next(self) -> int:
        """Return the sequence number for the next frame and advance (wrapping 255 -> 0)."""
        seq = self._next
        self._next = (seq + 1) % SEQ_MODULO
        return seq

    def peek(self) -> int:
        """The number :meth:`next` will return, without advancing."""
        return self._next


# --------------------------------------------------------------------------
# Host side: acknowledged frames
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderStats:
    """Counters of a :class:`ReliableSender` since it was created."""

    tracked: int = 0
    acked: int = 0
    naked: int = 0
    retransmits: int = 0
    failed: int = 0
    unexpected_answers: int = 0  # ACK/NAK for a SEQ that was not pending


@dataclass(frozen=True)
class _Pending:
    frame: bytes
    sent_ms: int  # time of the last (re)transmission
    retries: int  # retransmissions so far


class ReliableSender:
    """Tracks frames that need an ACK, says when to retransmit them and when they failed.

    The caller sends the frame itself, then calls :meth:`track`. It calls :meth:`due` and
    :meth:`failed` every tick with the current ``now_ms``, sends what :meth:`due` returns and
    treats anything :meth:`failed` returns as a link failure.
    """

    def __init__(
        self,
        ack_timeout_ms: int = DEFAULT_ACK_TIMEOUT_MS,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if ack_timeout_ms <= 0:
            raise ValueError(f"ack_timeout_ms = {ack_timeout_ms} must be > 0")
        if max_retries < 0:
            raise ValueError(f"max_retries = {max_retries} must be >= 0")
        self.ack_timeout_ms = ack_timeout_ms
        self.max_retries = max_retries
        self._pending: dict[int, _Pending] = {}
        self._failed: list[int] = []
        self._tracked = 0
        self._acked = 0
        self._naked = 0
        self._retransmits = 0
        self._failed_count = 0
        self._unexpected = 0

    @property
    def pending(self) -> int:
        """Number of frames waiting for an answer."""
        return len(self._pending)

    @property
    def pending_seqs(self) -> tuple[int, ...]:
        return tuple(self._pending)

    @property
    def stats(self) -> SenderStats:
        return SenderStats(
            tracked=self._tracked,
            acked=self._acked,
            naked=self._naked,
            retransmits=self._retransmits,
            failed=self._failed_count,
            unexpected_answers=self._unexpected,
        )

    def track(self, seq: int, frame: bytes, now_ms: int) -> None:
        """Start waiting for the answer to ``frame`` (sequence number ``seq``), sent at now_ms.

        Raises ValueError if ``seq`` is already pending: reusing a SEQ before its answer
        arrived would make the answer ambiguous.
        """
        if seq in self._pending:
            raise ValueError(
                f"seq {seq} is still waiting for its ACK: {len(self._pending)} frames pending; "
                "a sequence number must not be reused before its answer or failure"
            )
        self._pending[seq] = _Pending(frame=bytes(frame), sent_ms=now_ms, retries=0)
        self._tracked += 1

    def next_due_ms(self) -> int | None:
        """When :meth:`due` or :meth:`failed` will next have something to say (None: nothing
        is pending)."""
        if not self._pending:
            return None
        return min(entry.sent_ms for entry in self._pending.values()) + self.ack_timeout_ms

    def on_ack(self, seq: int) -> bool:
        """Record an ACK for ``seq``. False if nothing was pending with that SEQ."""
        if self._pending.pop(seq, None) is None:
            self._unexpected += 1
            return False
        self._acked += 1
        return True

    def on_nak(self, seq: int) -> bool:
        """Record a NAK for ``seq``: answered (refused), so it is not retransmitted."""
        if self._pending.pop(seq, None) is None:
            self._unexpected += 1
            return False
        self._naked += 1
        return True

    def _expire(self, now_ms: int) -> None:
        for seq, entry in list(self._pending.items()):
            if entry.retries >= self.max_retries and now_ms - entry.sent_ms >= self.ack_timeout_ms:
                del self._pending[seq]
                self._failed.append(seq)
                self._failed_count += 1

    def due(self, now_ms: int) -> list[bytes]:
        """Frames to send again now (each counts one retransmission), oldest first."""
        self._expire(now_ms)
        out: list[bytes] = []
        for seq, entry in self._pending.items():
            if now_ms - entry.sent_ms >= self.ack_timeout_ms:
                self._pending[seq] = _Pending(entry.frame, now_ms, entry.retries + 1)
                self._retransmits += 1
                out.append(entry.frame)
        return out

    def failed(self, now_ms: int) -> list[int]:
        """SEQs that ran out of retries (each reported once). Any of them means link down."""
        self._expire(now_ms)
        out, self._failed = self._failed, []
        return out

    def clear(self) -> list[int]:
        """Forget every pending frame (e.g. the port was closed); return their SEQs."""
        seqs = list(self._pending)
        self._pending.clear()
        self._failed.clear()
        return seqs


# --------------------------------------------------------------------------
# Receive side: sequence checking
# --------------------------------------------------------------------------


class SeqKind(Enum):
    NEW = "new"  # exactly the next number, or the first frame since start or reset()
    DUPLICATE = "duplicate"  # the same number again
    GAP = "gap"  # ahead by 2..128: ``missed`` frames were lost
    OUT_OF_ORDER = "out_of_order"  # behind by 1..127 (or a sender restart); re-anchored


@dataclass(frozen=True)
class SeqVerdict:
    kind: SeqKind
    missed: int = 0  # frames lost before this one (GAP only)

    @property
    def is_new(self) -> bool:
        """True when the frame should be processed (everything except a duplicate)."""
        return self.kind is not SeqKind.DUPLICATE


@dataclass(frozen=True)
class RxSeqStats:
    received: int = 0
    duplicates: int = 0
    gaps: int = 0
    missed: int = 0
    out_of_order: int = 0


class RxSequenceChecker:
    """Classifies received sequence numbers against the previous one (modulo 256).

    Difference d = (seq - last) mod 256: 1 NEW, 0 DUPLICATE, 2..128 GAP (d-1 missed),
    129..255 OUT_OF_ORDER. After GAP and OUT_OF_ORDER the new number becomes the reference,
    so a sender that restarted its counter (firmware reboot) is followed after one frame.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._received = 0
        self._duplicates = 0
        self._gaps = 0
        self._missed = 0
        self._out_of_order = 0

    @property
    def last_seq(self) -> int | None:
        return self._last

    @property
    def stats(self) -> RxSeqStats:
        return RxSeqStats(
            received=self._received,
            duplicates=self._duplicates,
            gaps=self._gaps,
            missed=self._missed,
            out_of_order=self._out_of_order,
        )

    def reset(self) -> None:
        """Forget the reference (after a reconnect or a firmware HELLO). Counters are kept."""
        self._last = None

    def check(self, seq: int) -> SeqVerdict:
        """Classify ``seq`` (0..255) and make it the reference for the next check."""
        if not 0 <= seq < SEQ_MODULO:
            raise ValueError(f"seq = {seq!r} is out of range: allowed 0..255")
        self._received += 1
        last = self._last
        self._last = seq
        if last is None:
            return SeqVerdict(SeqKind.NEW)
        delta = (seq - last) % SEQ_MODULO
        if delta == 1:
            return SeqVerdict(SeqKind.NEW)
        if delta == 0:
            self._duplicates += 1
            return SeqVerdict(SeqKind.DUPLICATE)
        if delta <= SEQ_MODULO // 2:
            self._gaps += 1
            self._missed += delta - 1
            return SeqVerdict(SeqKind.GAP, missed=delta - 1)
        self._out_of_order += 1
        return SeqVerdict(SeqKind.OUT_OF_ORDER)

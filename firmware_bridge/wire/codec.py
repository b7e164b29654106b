"""Framing of the firmware link: encode one frame, decode a byte stream into frames.

Frame layout (docs/protocol.md, "Framing"), all multi-byte values little-endian::

    offset  size  field
    0       1     SYNC    0xA5
    1       1     LEN     payload length, 0..MAX_PAYLOAD_BYTES
    2       1     SEQ     sender's sequence number, +1 per frame, wraps 255 -> 0
    3       1     MSG_ID  see messages.MsgId
    4       LEN   PAYLOAD
    4+LEN   2     CRC     CRC-16/CCITT-FALSE over LEN, SEQ, MSG_ID and PAYLOAD

:class:`FrameDecoder` never raises on any input: it counts and skips what is not a valid
frame and resynchronises on the next SYNC byte. After any rejected candidate (bad CRC,
oversize LEN, unknown id, bad payload) it rescans from the byte after the rejected SYNC, so
a real frame hidden inside garbage is still found.
No I/O, no clock.

>>> from firmware_bridge.wire.messages import Ack
>>> wire = encode_frame(7, Ack(seq=3))
>>> wire.hex(" ")
'a5 01 07 83 03 4c 09'
>>> decoder = FrameDecoder()
>>> decoder.feed(b"\\x00\\xff" + wire[:4])
[]
>>> decoder.feed(wire[4:])
[Frame(seq=7, message=Ack(seq=3))]
>>> decoder.stats.bytes_skipped
2
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from controller.errors import MessageError
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.messages import (
    MESSAGE_TYPES,
    Message,
    MsgId,
    decode_message,
    encode_message,
)

SYNC: Final = 0xA5
HEADER_BYTES: Final = 4  # SYNC, LEN, SEQ, MSG_ID
CRC_BYTES: Final = 2
MAX_PAYLOAD_BYTES: Final = 48
MAX_FRAME_BYTES: Final = HEADER_BYTES + MAX_PAYLOAD_BYTES + CRC_BYTES  # 54
SEQ_MODULO: Final = 256
MAX_REJECTS_KEPT: Final = 16

_SYNC_BYTE: Final = bytes([SYNC])


@dataclass(frozen=True)
class Frame:
    """One valid frame: the sender's sequence number and the decoded message."""

    seq: int
    message: Message

    @property
    def msg_id(self) -> MsgId:
        return self.message.MSG_ID


def encode_frame(seq: int, msg: Message) -> bytes:
    """Return the complete frame (SYNC .. CRC) carrying ``msg`` with sequence number ``seq``.

    ``seq`` must be 0..255 (the caller wraps it, see link.SequenceCounter); anything else
    raises MessageError rather than being wrapped silently.
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_MODULO:
        raise MessageError(
            f"frame seq = {seq!r} is out of range: allowed 0..255", field="seq", value=seq
        )
    msg_id, payload = encode_message(msg)
    return frame_bytes(seq, msg_id, payload)


def frame_bytes(seq: int, msg_id: int, payload: bytes) -> bytes:
    """The frame carrying an already encoded ``payload`` (``encode_message``) with sequence
    number ``seq`` (0..255, not checked here): lets a sender that repeats one message with a
    new SEQ every time (SET_SPEED, every tick) encode its payload once."""
    body = bytes((len(payload), seq, msg_id)) + payload
    crc = crc16(body)
    return _SYNC_BYTE + body + bytes((crc & 0xFF, crc >> 8))


class RejectKind(Enum):
    """Why a frame with a valid CRC was not returned (maps onto a NAK reason)."""

    UNKNOWN_ID = "unknown_id"  # NAK UNKNOWN_MESSAGE
    BAD_LENGTH = "bad_length"  # NAK BAD_PAYLOAD
    BAD_FIELD = "bad_field"  # NAK OUT_OF_RANGE


@dataclass(frozen=True)
class RejectedFrame:
    """A frame with a valid CRC whose content was refused: the receiver may NAK ``seq``.

    ``msg_id`` is the raw id byte; ``reason`` says what was wrong in words.
    """

    seq: int
    msg_id: int
    kind: RejectKind
    reason: str


@dataclass(frozen=True)
class DecoderStats:
    """Counters of a :class:`FrameDecoder` since it was created.

    frames: valid frames returned.
    crc_errors: candidate frames whose CRC did not match (rescanned from SYNC + 1).
    resyncs: times the decoder lost framing (went from in-sync to discarding bytes);
        a run of garbage between two frames counts once, however it was chunked.
    bytes_skipped: bytes discarded that were not part of a delivered frame.
    oversize: candidate frames whose LEN exceeded MAX_PAYLOAD_BYTES.
    unknown_ids: frames with a valid CRC but a message id this protocol does not define.
    bad_payloads: frames with a valid CRC and known id whose payload did not decode.

    Every rejected candidate (bad CRC, oversize, unknown id, bad payload) is rescanned from
    the byte after its SYNC, so a valid frame that starts inside it is still found.
    """

    frames: int = 0
    crc_errors: int = 0
    resyncs: int = 0
    bytes_skipped: int = 0
    oversize: int = 0
    unknown_ids: int = 0
    bad_payloads: int = 0

    @property
    def errors(self) -> int:
        """Every rejected candidate frame: CRC, oversize, unknown id, bad payload."""
        return self.crc_errors + self.oversize + self.unknown_ids + self.bad_payloads


class FrameDecoder:
    """Turns a byte stream into :class:`Frame` objects; never raises on any input.

    Holds at most MAX_FRAME_BYTES - 1 bytes between calls. ``last_error`` describes the most
    recent rejected candidate (for the caller to log); :meth:`take_rejects` hands over the
    CRC-valid frames whose content was refused (the newest MAX_REJECTS_KEPT), so a firmware
    can NAK them. The decoder itself does no I/O.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_sync = True
        self._frames = 0
        self._crc_errors = 0
        self._resyncs = 0
        self._bytes_skipped = 0
        self._oversize = 0
        self._unknown_ids = 0
        self._bad_payloads = 0
        self._last_error: str | None = None
        self._rejects: list[RejectedFrame] = []  # newest MAX_REJECTS_KEPT

    @property
    def stats(self) -> DecoderStats:
        return DecoderStats(
            frames=self._frames,
            crc_errors=self._crc_errors,
            resyncs=self._resyncs,
            bytes_skipped=self._bytes_skipped,
            oversize=self._oversize,
            unknown_ids=self._unknown_ids,
            bad_payloads=self._bad_payloads,
        )

    @property
    def last_error(self) -> str | None:
        """What the most recent rejected frame was, or None if none was rejected yet."""
        return self._last_error

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def take_rejects(self) -> list[RejectedFrame]:
        """CRC-valid frames refused since the last call (oldest first), then forget them."""
        out, self._rejects = self._rejects, []
        return out

    def reset(self) -> None:
        """Drop any partial frame (e.g. after the port was reopened). Counters are kept."""
        self._buf.clear()
        self._in_sync = True

    def _skip(self, count: int) -> None:
        if count:
            self._bytes_skipped += count
            if self._in_sync:
                self._in_sync = False
                self._resyncs += 1

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every complete valid frame in it, in order."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        end = len(buf)
        while pos < end:
            start = buf.find(SYNC, pos)
            if start < 0:
                self._skip(end - pos)
                pos = end
                break
            self._skip(start - pos)
            pos = start
            if end - pos < 2:
                break  # need LEN
            length = buf[pos + 1]
            if length > MAX_PAYLOAD_BYTES:
                self._oversize += 1
                self._last_error = (
                    f"frame LEN {length} exceeds the maximum payload of {MAX_PAYLOAD_BYTES} bytes"
                )
                self._skip(1)
                pos += 1
                continue
            frame_end = pos + HEADER_BYTES + length + CRC_BYTES
            if frame_end > end:
                break  # need the rest of the frame
            crc_at = frame_end - CRC_BYTES
            expected = buf[crc_at] | (buf[crc_at + 1] << 8)
            actual = crc16(buf[pos + 1 : crc_at])
            if actual != expected:
                self._crc_errors += 1
                self._last_error = (
                    f"CRC mismatch: frame says 0x{expected:04X}, bytes give 0x{actual:04X}"
                )
                self._skip(1)
                pos += 1
                continue
            seq = buf[pos + 2]
            msg_id = buf[pos + 3]
            reject: RejectedFrame | None = None
            if msg_id not in MESSAGE_TYPES:
                self._unknown_ids += 1
                text = f"unknown message id 0x{msg_id:02X} (seq {seq})"
                reject = RejectedFrame(seq, msg_id, RejectKind.UNKNOWN_ID, text)
            else:
                try:
                    message = decode_message(msg_id, bytes(buf[pos + HEADER_BYTES : crc_at]))
                except MessageError as exc:
                    self._bad_payloads += 1
                    kind = RejectKind.BAD_LENGTH if exc.field == "length" else RejectKind.BAD_FIELD
                    text = f"seq {seq}: {exc}"
                    reject = RejectedFrame(seq, msg_id, kind, str(exc))
            if reject is not None:
                # A CRC-valid candidate with invalid content is as likely line noise that
                # passed the CRC (1 in 65536) as a real frame: rescan from SYNC + 1 so that a
                # real frame starting inside it is not lost.
                self._last_error = text
                self._rejects.append(reject)
                if len(self._rejects) > MAX_REJECTS_KEPT:
                    del self._rejects[0]
                self._skip(1)
                pos += 1
                continue
            self._in_sync = True
            pos = frame_end
            self._frames += 1
            out.append(Frame(seq=seq, message=message))
        del buf[:pos]
        return out

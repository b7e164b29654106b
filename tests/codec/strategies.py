"""Hypothesis strategies for protocol messages, built from each message's FIELDS table.

Values are drawn in wire units and converted, so every generated message sits exactly on the
wire grid and covers each field's whole range, including both ends.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import strategies as st

from firmware_bridge.wire.codec import MAX_PAYLOAD_BYTES, SYNC, encode_frame
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.messages import (
    MESSAGE_TYPES,
    FieldKind,
    FieldSpec,
    Message,
    MsgId,
    payload_size,
)


def field_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Every valid value of one field."""
    kind = spec.kind
    if kind is FieldKind.FIXED:
        scale = spec.scale
        return st.integers(spec.lo, spec.hi).map(lambda raw: raw / scale)
    if kind is FieldKind.UINT:
        return st.integers(spec.lo, spec.hi)
    if kind is FieldKind.ENUM:
        assert spec.enum is not None
        return st.sampled_from([m for m in spec.enum if m.value >= spec.lo])
    if kind is FieldKind.FLAG:
        return st.booleans()
    if kind is FieldKind.VERSION:
        part = st.integers(0, 255)
        return st.tuples(part, part, part).map(lambda p: f"{p[0]}.{p[1]}.{p[2]}")
    return st.none() | st.integers(0, 255)  # FieldKind.OPT_SEQ


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    return _BY_TYPE[cls]


_BY_TYPE: dict[type[Message], st.SearchStrategy[Message]] = {
    cls: st.builds(cls, **{spec.name: field_values(spec) for spec in cls.FIELDS})
    for cls in MESSAGE_TYPES.values()
}


@cache
def messages() -> st.SearchStrategy[Message]:
    return st.one_of(list(_BY_TYPE.values()))


@cache
def frames() -> st.SearchStrategy[bytes]:
    """A complete valid frame of any message with any sequence number."""
    return st.builds(encode_frame, st.integers(0, 255), messages())


def raw_frame(seq: int, msg_id: int, payload: bytes) -> bytes:
    """A frame with a correct CRC around any id and payload (for unknown ids, bad payloads)."""
    body = bytes((len(payload), seq, msg_id)) + payload
    crc = crc16(body)
    return bytes([SYNC]) + body + bytes((crc & 0xFF, crc >> 8))


UNKNOWN_IDS = [i for i in range(256) if i not in MESSAGE_TYPES]


@cache
def unknown_id_frames() -> st.SearchStrategy[bytes]:
    """CRC-valid frames whose message id the protocol does not define."""
    return st.builds(
        raw_frame,
        st.integers(0, 255),
        st.sampled_from(UNKNOWN_IDS),
        st.binary(max_size=MAX_PAYLOAD_BYTES),
    )


@cache
def bad_payload_frames() -> st.SearchStrategy[bytes]:
    """CRC-valid frames of a known id whose payload length is wrong."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        msg_id = draw(st.sampled_from(list(MsgId)))
        size = payload_size(msg_id)
        length = draw(st.integers(0, MAX_PAYLOAD_BYTES).filter(lambda n: n != size))
        payload = draw(st.binary(min_size=length, max_size=length))
        return raw_frame(draw(st.integers(0, 255)), msg_id, payload)

    return build()


def corrupted(frame: bytes, bit: int) -> bytes:
    """``frame`` with one bit after the SYNC byte flipped (CRC-16 detects every such error)."""
    index = 1 + (bit // 8) % (len(frame) - 1)
    data = bytearray(frame)
    data[index] ^= 1 << (bit % 8)
    return bytes(data)

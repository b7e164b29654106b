"""CRC-16/CCITT-FALSE: check value, incremental use, and agreement of the fast ``crc16`` with the
table method and a bitwise reference."""

from __future__ import annotations

import binascii

from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.wire.crc import CRC16_CHECK, CRC16_TABLE, crc16, crc16_table


def crc16_bitwise(data: bytes) -> int:
    """The textbook bit-at-a-time definition: poly 0x1021, init 0xFFFF, no reflection."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_check_value_of_123456789_is_0x29b1() -> None:
    assert crc16(b"123456789") == 0x29B1 == CRC16_CHECK
    assert crc16_table(b"123456789") == CRC16_CHECK


def test_empty_input_gives_the_initial_value() -> None:
    assert crc16(b"") == 0xFFFF


def test_table_has_256_sixteen_bit_entries_with_known_ends() -> None:
    assert len(CRC16_TABLE) == 256
    assert CRC16_TABLE[0] == 0x0000
    assert CRC16_TABLE[1] == 0x1021
    assert CRC16_TABLE[255] == 0x1EF0
    assert all(0 <= v <= 0xFFFF for v in CRC16_TABLE)


@given(st.binary(max_size=200))
def test_table_method_equals_bitwise_definition(data: bytes) -> None:
    assert crc16_table(data) == crc16_bitwise(data)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_fast_crc_equals_table_method_from_any_start_value(data: bytes, start: int) -> None:
    assert crc16(data, start) == crc16_table(data, start)
    assert crc16(bytearray(data)) == crc16(memoryview(data)) == crc16_table(data)


@given(st.binary(max_size=200))
def test_equals_the_stdlib_crc_hqx_with_init_0xffff(data: bytes) -> None:
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_incremental_crc_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    assert crc16(b, crc16(a)) == crc16(a + b)


@given(st.binary(min_size=1, max_size=60), st.data())
def test_every_single_bit_error_changes_the_crc(data: bytes, draw: st.DataObject) -> None:
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert crc16(bytes(flipped)) != crc16(data)


def test_accepts_bytearray_and_memoryview() -> None:
    assert crc16(bytearray(b"123456789")) == crc16(memoryview(b"123456789")) == 0x29B1

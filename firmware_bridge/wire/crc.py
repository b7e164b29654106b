"""CRC-16/CCITT-FALSE, the checksum of every frame on the firmware link.

Parameters (see docs/protocol.md, "CRC"): width 16, polynomial 0x1021, initial value 0xFFFF,
input and output not reflected, final XOR 0x0000. Check value:
``crc16(b"123456789") == 0x29B1``.

:func:`crc16` is the standard library's ``binascii.crc_hqx`` started at 0xFFFF: the same
polynomial, unreflected, computed in C (about 17 times faster than a Python loop; every frame
sent and received is checked with it). :func:`crc16_table` is the byte-wise table method a
firmware author would port to C: one 256-entry table of 16-bit values, one lookup per byte. It
is kept as the readable reference, and the tests check that the two always agree.

>>> hex(crc16(b"123456789"))
'0x29b1'
>>> crc16(b"6789", crc16(b"12345")) == crc16(b"123456789")
True
"""

from __future__ import annotations

import binascii

CRC16_POLY = 0x1021
CRC16_INIT = 0xFFFF
CRC16_CHECK = 0x29B1  # crc16(b"123456789")


def _make_table(poly: int) -> tuple[int, ...]:
    """Return the 256 CRC values of a single byte ``b << 8`` shifted through ``poly``."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table.append(crc)
    return tuple(table)


CRC16_TABLE: tuple[int, ...] = _make_table(CRC16_POLY)


def crc16(data: bytes | bytearray | memoryview, crc: int = CRC16_INIT) -> int:
    """Return the CRC-16/CCITT-FALSE of ``data``, continuing from ``crc``.

    Pass the result of a previous call as ``crc`` to checksum data that arrives in pieces.
    """
    return binascii.crc_hqx(data, crc)


def crc16_table(data: bytes | bytearray | memoryview, crc: int = CRC16_INIT) -> int:
    """:func:`crc16` by the byte-wise table method (the reference a C port follows)."""
    table = CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc

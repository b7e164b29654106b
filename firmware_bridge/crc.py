"""CRC-16/CCITT-FALSE, the checksum of every frame on the firmware link.

Parameters (see docs/protocol.md, "CRC"): width 16, polynomial 0x1021, initial value 0xFFFF,
input and output not reflected, final XOR 0x0000. Check value:
``crc16(b"123456789") == 0x29B1``.

The implementation is the byte-wise table method a firmware author would port to C: one
256-entry table of 16-bit values, one lookup per byte.

>>> hex(crc16(b"123456789"))
'0x29b1'
>>> crc16(b"6789", crc16(b"12345")) == crc16(b"123456789")
True
"""

from __future__ import annotations

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
    table = CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc

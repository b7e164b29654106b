"""Generated parts of docs/protocol.md: payload field tables and test vectors.

The document holds these between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` markers; tests/codec/test_protocol_doc.py fails when they
differ from what the code produces. After a deliberate wire change, update the document with::

    .venv/bin/python -m tests.codec.protocol_tables --write docs/protocol.md
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path

from firmware_bridge.wire.codec import encode_frame
from firmware_bridge.wire.faults import FAULTS, StopCategory
from firmware_bridge.wire.messages import (
    FIRMWARE_TO_HOST,
    HOST_TO_FIRMWARE,
    MESSAGE_TYPES,
    Ack,
    ClearFault,
    Configure,
    EStop,
    FaultReport,
    FieldKind,
    FwFault,
    FwState,
    GetStatus,
    Hello,
    Message,
    MsgId,
    Nak,
    NakReason,
    ResetCause,
    SetSpeed,
    Status,
    Stop,
    host_hello,
    payload_size,
)

# One frame of every message type, with the SEQ it is sent with. Changing any of these
# changes docs/protocol.md: regenerate it (see the module docstring).
VECTORS: tuple[tuple[str, int, Message], ...] = (
    ("HELLO, host to firmware", 0x00, host_hello()),
    (
        "HELLO, firmware to host",
        0x00,
        Hello(
            protocol_version=1,
            fw_version="1.2.3",
            reset_cause=ResetCause.POWER_ON,
            max_speed_kmh=16.0,
            max_accel_kmh_s=2.0,
            boot_id=0x1A2B3C4D,
            uptime_ms=250,
        ),
    ),
    ("CONFIGURE", 0x01, Configure.with_checksum(8.0, 0.5, 3.6, 300)),
    ("SET_SPEED", 0x02, SetSpeed(speed_kmh=2.5, accel_kmh_s=0.3, lease_ms=300)),
    ("STOP", 0x03, Stop(decel_kmh_s=3.6)),
    ("ESTOP", 0x04, EStop()),
    ("CLEAR_FAULT", 0x05, ClearFault()),
    ("GET_STATUS", 0x06, GetStatus()),
    (
        "STATUS",
        0x07,
        Status(
            measured_kmh=2.48,
            commanded_kmh=2.5,
            state=FwState.RUNNING,
            fault=FwFault.NONE,
            safety_key_closed=True,
            uptime_ms=60_000,
            last_applied_seq=0x02,
            config_checksum=Configure.with_checksum(8.0, 0.5, 3.6, 300).config_checksum,
            lease_remaining_ms=280,
        ),
    ),
    ("FAULT", 0x08, FaultReport(code=FwFault.LEASE_EXPIRED, detail=300)),
    ("ACK", 0x09, Ack(seq=0x03)),
    ("NAK", 0x0A, Nak(seq=0x02, reason=NakReason.NOT_CONFIGURED)),
)

_DIRECTION = {
    True: "host to firmware",
    False: "firmware to host",
}


def _repr(msg: Message) -> str:
    parts = []
    for f in fields(msg):
        value = getattr(msg, f.name)
        if f.name == "boot_id":
            parts.append(f"{f.name}=0x{value:08X}")
        elif f.name == "config_checksum":
            parts.append(f"{f.name}=0x{value:04X}")
        elif hasattr(value, "name") and hasattr(value, "value"):
            parts.append(f"{f.name}={type(value).__name__}.{value.name}")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(msg).__name__}({', '.join(parts)})"


def render_field_tables() -> str:
    out: list[str] = []
    for msg_id, cls in MESSAGE_TYPES.items():
        if msg_id in HOST_TO_FIRMWARE and msg_id in FIRMWARE_TO_HOST:
            direction = "both directions"
        else:
            direction = _DIRECTION[msg_id in HOST_TO_FIRMWARE]
        size = payload_size(msg_id)
        out.append(
            f"#### 0x{msg_id.value:02X} {msg_id.name} ({direction}), "
            f"payload {size} byte{'' if size == 1 else 's'}"
        )
        out.append("")
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        doc = re.sub(r"\s+", " ", doc)
        out.append(doc.replace("``", "`"))
        out.append("")
        if not cls.FIELDS:
            out.append("Empty payload (LEN = 0).")
            out.append("")
            continue
        out.append("| offset | field | type | unit | range | meaning |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        offset = 0
        for spec in cls.FIELDS:
            wire_type = spec.wire_type
            if spec.kind is FieldKind.FIXED:
                wire_type += f" (x{spec.scale})"
            unit = spec.unit or "-"
            if spec.kind is FieldKind.FIXED:
                unit = f"{1 / spec.scale:.2f} {spec.unit}"
            out.append(
                f"| {offset} | `{spec.name}` | {wire_type} | {unit} | "
                f"{spec.range_text()} | {spec.doc} |"
            )
            offset += spec.size
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_test_vectors() -> str:
    out: list[str] = []
    for title, seq, msg in VECTORS:
        out.append(f"#### {title}")
        out.append("")
        out.append(f"SEQ 0x{seq:02X}, `{_repr(msg)}`")
        out.append("")
        out.append("```hex")
        out.append(encode_frame(seq, msg).hex(" "))
        out.append("```")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_worked_example() -> str:
    """Byte-by-byte breakdown of the SET_SPEED vector."""
    seq, msg = 0x02, SetSpeed(speed_kmh=2.5, accel_kmh_s=0.3, lease_ms=300)
    wire = encode_frame(seq, msg)
    rows = [
        ("0", "SYNC", wire[0:1], "start of frame"),
        ("1", "LEN", wire[1:2], "6 payload bytes"),
        ("2", "SEQ", wire[2:3], "sender's sequence number"),
        ("3", "MSG_ID", wire[3:4], f"0x{MsgId.SET_SPEED:02X} SET_SPEED"),
        ("4-5", "speed_kmh", wire[4:6], "250 x 0.01 km/h = 2.50 km/h"),
        ("6-7", "accel_kmh_s", wire[6:8], "30 x 0.01 km/h/s = 0.30 km/h/s"),
        ("8-9", "lease_ms", wire[8:10], "300 ms"),
        ("10-11", "CRC", wire[10:12], "CRC-16 of bytes 1..9, low byte first"),
    ]
    crc = wire[10] | wire[11] << 8
    out = ["| bytes | field | hex | meaning |", "| --- | --- | --- | --- |"]
    out += [f"| {pos} | {name} | `{data.hex(' ')}` | {text} |" for pos, name, data, text in rows]
    out.append("")
    out.append(f"CRC-16/CCITT-FALSE of `{wire[1:10].hex(' ')}` is 0x{crc:04X}.")
    return "\n".join(out) + "\n"


_STOP_TEXT = {
    StopCategory.CUT_POWER: "0: motor power cut at once",
    StopCategory.RAMP_THEN_CUT: "1: ramp to 0 at `max_decel_kmh_s`, then power cut",
}


def render_fault_table() -> str:
    """The ``FwFault`` table with each code's stop category (firmware_bridge/wire/faults.py)."""
    out = [
        "| value | name | latched when | stop category (FW-2) | FAULT `detail` |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in FAULTS:
        stop = "-" if spec.category is None else _STOP_TEXT[spec.category]
        out.append(
            f"| {spec.code.value} | {spec.code.name} | {spec.latched_when} | {stop} | "
            f"{spec.detail} |"
        )
    return "\n".join(out) + "\n"


SECTIONS = {
    "message-tables": render_field_tables,
    "fault-table": render_fault_table,
    "worked-example": render_worked_example,
    "test-vectors": render_test_vectors,
}

_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def generated_sections(text: str) -> dict[str, str]:
    """The bodies of the generated sections found in ``text``, by name."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def regenerate(text: str) -> str:
    """``text`` with every generated section replaced by what the code produces now."""

    def replace(match: re.Match[str]) -> str:
        body = SECTIONS[match.group("name")]()
        return f"{match.group(1)}{body}{match.group(4)}"

    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, help="rewrite the generated sections of this file")
    args = parser.parse_args(argv)
    if args.write is None:
        for name, render in SECTIONS.items():
            sys.stdout.write(f"<!-- BEGIN GENERATED: {name} -->\n{render()}")
            sys.stdout.write(f"<!-- END GENERATED: {name} -->\n\n")
        return 0
    path: Path = args.write
    path.write_text(regenerate(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

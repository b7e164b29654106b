"""docs/protocol.md and the code cannot drift: vectors, tables, enums and constants are checked."""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

import pytest

from firmware_bridge.wire.codec import MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, Frame, FrameDecoder
from firmware_bridge.wire.crc import crc16
from firmware_bridge.wire.link import DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_RETRIES, LINK_SILENCE_MS
from firmware_bridge.wire.messages import (
    PROTOCOL_VERSION,
    FwFault,
    FwState,
    MsgId,
    NakReason,
    ResetCause,
    payload_size,
)
from tests.codec.protocol_tables import SECTIONS, VECTORS, generated_sections, regenerate

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SAFETY_DOC_PATH = DOC_PATH.with_name("firmware-safety.md")


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def hex_blocks(text: str) -> list[bytes]:
    return [
        bytes.fromhex(block) for block in re.findall(r"```hex\n(.*?)\n```", text, flags=re.DOTALL)
    ]


def test_generated_sections_match_the_code(doc: str) -> None:
    sections = generated_sections(doc)
    assert set(sections) == set(SECTIONS), "a generated section is missing from the document"
    for name, render in SECTIONS.items():
        assert sections[name] == render(), (
            f"docs/protocol.md section {name!r} is stale: run "
            "`.venv/bin/python -m tests.codec.protocol_tables --write docs/protocol.md`"
        )
    assert regenerate(doc) == doc


def test_every_hex_block_is_one_valid_frame_equal_to_the_vector(doc: str) -> None:
    blocks = hex_blocks(doc)
    assert len(blocks) == len(VECTORS)
    seen_ids = set()
    for wire, (title, seq, msg) in zip(blocks, VECTORS, strict=True):
        decoder = FrameDecoder()
        frames = decoder.feed(wire)
        assert frames == [Frame(seq=seq, message=msg)], title
        assert decoder.stats.errors == 0, title
        assert decoder.stats.bytes_skipped == 0, title
        seen_ids.add(frames[0].msg_id)
    assert seen_ids == set(MsgId), "the test vectors must cover every message id"


def test_vector_stream_decodes_in_one_piece(doc: str) -> None:
    stream = b"".join(hex_blocks(doc))
    frames = FrameDecoder().feed(stream)
    assert [f.message for f in frames] == [msg for _, _, msg in VECTORS]


def test_crc_check_value_and_parameters_are_stated(doc: str) -> None:
    assert crc16(b"123456789") == 0x29B1
    assert "**0x29B1**" in doc
    for text in ("0x1021", "0xFFFF", "0x0000", "little-endian"):
        assert text in doc


def test_constants_quoted_in_the_document(doc: str) -> None:
    assert doc.startswith(f"# Firmware link protocol, version {PROTOCOL_VERSION}\n")
    assert f"LEN      payload length in bytes, 0..{MAX_PAYLOAD_BYTES}" in doc
    assert f"| largest frame | {MAX_FRAME_BYTES} bytes" in doc
    assert f"within **{DEFAULT_ACK_TIMEOUT_MS} ms**" in doc
    assert f"at most **{DEFAULT_MAX_RETRIES}**" in doc
    assert f"for **{LINK_SILENCE_MS} ms**" in doc


def test_catalogue_lists_every_message_with_its_size(doc: str) -> None:
    for msg_id in MsgId:
        pattern = rf"\| 0x{msg_id.value:02X} \| {msg_id.name} \| [^|]+ \| {payload_size(msg_id)} \|"
        assert re.search(pattern, doc), f"catalogue row for {msg_id.name} missing or wrong"


ENUMS: list[type[IntEnum]] = [FwState, FwFault, NakReason, ResetCause]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.__name__)
def test_every_enum_member_has_a_row(doc: str, enum: type[IntEnum]) -> None:
    for member in enum:
        assert f"| {member.value} | {member.name} |" in doc, f"{enum.__name__}.{member.name}"


def test_safety_rules_quoted_by_the_protocol_exist() -> None:
    safety = SAFETY_DOC_PATH.read_text(encoding="utf-8")
    defined = set(re.findall(r"^### (FW-\d+)\b", safety, flags=re.MULTILINE))
    assert defined, "docs/firmware-safety.md defines no FW-n rules"
    numbers = sorted(int(rule[3:]) for rule in defined)
    assert numbers == list(range(1, len(numbers) + 1)), "FW rules must be numbered 1..n"
    protocol = DOC_PATH.read_text(encoding="utf-8")
    quoted = set(re.findall(r"FW-\d+", protocol))
    assert quoted <= defined, f"protocol.md quotes undefined rules: {sorted(quoted - defined)}"


def test_every_firmware_fault_has_a_rule_in_the_safety_contract() -> None:
    safety = SAFETY_DOC_PATH.read_text(encoding="utf-8")
    for fault in FwFault:
        if fault is not FwFault.NONE:
            assert fault.name in safety, f"FwFault.{fault.name} is not covered by any FW rule"

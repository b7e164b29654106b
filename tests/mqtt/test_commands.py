"""Pure tests of remote command parsing (controller.adapters.mqtt.commands): no broker."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.adapters.mqtt.commands import (
    COMMAND_NAMES,
    AssignClient,
    CommandRejected,
    ParsedCommand,
    excerpt,
    parse_command,
)
from controller.rules.model import RemoteLowerStageCap, RemoteLowerTarget, RemoteStop

MAX_PAYLOAD_BYTES = 1024
MAX_STAGE = 4
MAX_SPEED_KMH = 8.0


def parse(name: str, payload: bytes) -> ParsedCommand:
    return parse_command(
        name,
        payload,
        max_payload_bytes=MAX_PAYLOAD_BYTES,
        max_stage=MAX_STAGE,
        max_speed_kmh=MAX_SPEED_KMH,
    )


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("stop", b"", RemoteStop()),
        ("stop", b"{}", RemoteStop()),
        ("stop", b"STOP", RemoteStop()),
        ("stop", b"PRESS", RemoteStop()),
        ("stop", b"\xff\xfe not even utf-8", RemoteStop()),  # payload ignored beyond size
        ("target_kmh", b"1.5", RemoteLowerTarget(1.5)),
        ("target_kmh", b"0", RemoteLowerTarget(0.0)),
        ("target_kmh", b"8", RemoteLowerTarget(8.0)),
        ("target_kmh", b' {"speed_kmh": 2.25} ', RemoteLowerTarget(2.25)),
        ("target_kmh", b"1e0", RemoteLowerTarget(1.0)),
        ("stage_cap", b"1", RemoteLowerStageCap(1)),
        ("stage_cap", b"4", RemoteLowerStageCap(4)),
        ("stage_cap", b'{"stage": 2}', RemoteLowerStageCap(2)),
        ("client", b'{"client_id": "p-017_A"}', AssignClient("p-017_A")),
        ("client", b'{"client_id": null}', AssignClient(None)),
        ("client", json.dumps({"client_id": "x" * 32}).encode(), AssignClient("x" * 32)),
    ],
)
def test_accepted_commands(name: str, payload: bytes, expected: ParsedCommand) -> None:
    assert parse(name, payload) == expected


# (name, payload, words the reason must contain)
REJECTED: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("stop", b"x" * 1025, ("1025 bytes", "limit of 1024")),
    ("target_kmh", b"1" * 1025, ("1025 bytes",)),
    ("target_kmh", b"\xff1.0", ("not UTF-8", "0xff", "offset 0")),
    ("target_kmh", b"fast", ("not valid JSON",)),
    ("target_kmh", b"", ("not valid JSON",)),
    ("target_kmh", b'"2.0"', ('the string "2.0"', "JSON number")),
    ("target_kmh", b"true", ("the boolean true", "JSON number")),
    ("target_kmh", b"null", ("null",)),
    ("target_kmh", b"[1.0]", ("an array",)),
    ("target_kmh", b"NaN", ("got NaN, not a finite number",)),
    ("target_kmh", b"Infinity", ("got Infinity, not a finite",)),
    ("target_kmh", b"-Infinity", ("got -Infinity, not a finite",)),
    ("target_kmh", b"1e400", ("not finite",)),
    ("target_kmh", b"-0.1", ("-0.1 km/h, out of range", "0 <= speed_kmh <= 8")),
    ("target_kmh", b"8.01", ("8.01 km/h, out of range",)),
    ("target_kmh", b"9" * 400, ("out of range",)),
    ("target_kmh", b'{"speed": 1.0}', ("keys [speed]", '{"speed_kmh": number}')),
    ("target_kmh", b'{"speed_kmh": 1.0, "x": 1}', ("keys [speed_kmh, x]",)),
    ("target_kmh", b'{"speed_kmh": false}', ("the boolean false",)),
    ("target_kmh", b"[" * 1000, ("JSON",)),
    ("stage_cap", b"0", ("stage 0, out of range", "1 <= stage <= 4")),
    ("stage_cap", b"5", ("stage 5, out of range",)),
    ("stage_cap", b"2.0", ("the number 2.0", "JSON integer")),
    ("stage_cap", b"true", ("the boolean true",)),
    ("stage_cap", b'{"stage": "2"}', ('the string "2"',)),
    ("stage_cap", b'{"cap": 2}', ("keys [cap]",)),
    ("client", b'"p-017"', ('the string "p-017"', '{"client_id"')),
    ("client", b'{"client_id": "has space"}', ('client_id the string "has space"',)),
    ("client", b'{"client_id": ""}', ("client_id the string",)),
    ("client", json.dumps({"client_id": "x" * 33}).encode(), ("[A-Za-z0-9_-]{1,32}",)),
    ("client", b'{"client_id": "\xc3\xa9t\xc3\xa9"}', ("client_id the string",)),
    ("client", b'{"client_id": 17}', ("the integer 17",)),
    ("client", b'{"client_id": "a\\n"}', ("client_id",)),
    ("client", b'{"id": "a"}', ("keys [id]",)),
    ("start", b"", ("only be started", "at the console", "cmd/stop")),
    ("reset", b"", ("at the console",)),
    ("faster", b"", ("at the console",)),
    ("speed_up", b"", ("unknown command cmd/speed_up",)),
    ("stop/now", b"", ("unknown command cmd/stop/now",)),
    ("target_kmh/x", b"1", ("unknown command",)),
    ("", b"", ("unknown command cmd/ ",)),
    ("STOP", b"", ("unknown command cmd/STOP",)),
    ("stop\n", b"", ("unknown command cmd/stop\\n",)),
]


@pytest.mark.parametrize(("name", "payload", "words"), REJECTED)
def test_rejected_commands_say_what_was_seen_and_what_is_accepted(
    name: str, payload: bytes, words: tuple[str, ...]
) -> None:
    result = parse(name, payload)
    assert isinstance(result, CommandRejected), result
    for word in words:
        assert word in result.reason, (word, result.reason)
    assert result.payload_excerpt == excerpt(payload)
    if name in COMMAND_NAMES and len(payload) <= MAX_PAYLOAD_BYTES:
        assert "accepted" in result.reason or "not UTF-8" in result.reason, result.reason


def test_unknown_command_lists_the_accepted_ones() -> None:
    result = parse("launch", b"")
    assert isinstance(result, CommandRejected)
    for name in COMMAND_NAMES:
        assert f"cmd/{name}" in result.reason


def test_size_limit_is_checked_before_anything_else() -> None:
    result = parse_command("stop", b"x" * 17, max_payload_bytes=16, max_stage=4, max_speed_kmh=8)
    assert isinstance(result, CommandRejected)
    assert "17 bytes" in result.reason
    assert parse_command("stop", b"x" * 16, max_payload_bytes=16, max_stage=4, max_speed_kmh=8) == (
        RemoteStop()
    )


def test_limits_come_from_the_arguments() -> None:
    assert parse_command(
        "target_kmh", b"12", max_payload_bytes=64, max_stage=6, max_speed_kmh=12.0
    ) == RemoteLowerTarget(12.0)
    assert parse_command(
        "stage_cap", b"6", max_payload_bytes=64, max_stage=6, max_speed_kmh=12.0
    ) == RemoteLowerStageCap(6)


def test_excerpt_escapes_and_shortens() -> None:
    assert excerpt(b"ok") == "ok"
    assert excerpt(b"a\nb\x00c") == "a\\nb\\x00c"
    assert excerpt(b"\xff\xfe") == "\\xff\\xfe"
    assert excerpt("\u202etxt") == "\\u202etxt"  # right-to-left override is not printable
    long = excerpt(b"y" * 100)
    assert long == "y" * 48 + "..."


def test_rejection_texts_are_printable_whatever_the_input() -> None:
    result = parse("\x1b[31mred", b"\x1b[2J\x00\xff" * 20)
    assert isinstance(result, CommandRejected)
    for text in (result.command, result.reason, result.payload_excerpt):
        assert text.isprintable(), text
        assert len(text) < 400


@given(name=st.text(max_size=40), payload=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(name: str, payload: bytes) -> None:
    result = parse(name, payload)
    assert isinstance(
        result,
        RemoteStop | RemoteLowerTarget | RemoteLowerStageCap | AssignClient | CommandRejected,
    )
    if isinstance(result, CommandRejected):
        assert result.reason
        assert result.payload_excerpt.isprintable()


@given(
    name=st.sampled_from(COMMAND_NAMES),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(["speed_kmh", "stage", "client_id", "x"]), children)
        ),
        max_leaves=8,
    ),
)
def test_arbitrary_json_gives_only_values_inside_the_limits(name: str, value: object) -> None:
    payload = json.dumps(value).encode()  # floats may come out as NaN/Infinity
    result = parse(name, payload)
    if isinstance(result, RemoteLowerTarget):
        assert 0.0 <= result.speed_kmh <= MAX_SPEED_KMH
    elif isinstance(result, RemoteLowerStageCap):
        assert 1 <= result.stage <= MAX_STAGE
        assert type(result.stage) is int
    elif isinstance(result, AssignClient):
        assert result.client_id is None or 1 <= len(result.client_id) <= 32
    elif isinstance(result, RemoteStop):
        assert name == "stop"
    else:
        assert isinstance(result, CommandRejected)

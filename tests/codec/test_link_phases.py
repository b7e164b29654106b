"""The host's link phases as data (protocol.md §8): the table, its diagram, its check."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from firmware_bridge.wire.link_phases import (
    HANDSHAKE_STEPS,
    LINK_TRANSITIONS,
    LinkPhase,
    is_allowed,
    phase_diagram,
)
from firmware_bridge.wire.session import LinkSession
from firmware_bridge.wire.session_actions import EndSession, FirmwareLimits

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BEGIN = "<!-- link-phases:begin (generated from firmware_bridge/wire/link_phases.py) -->\n"
END = "<!-- link-phases:end -->"


def test_the_diagram_in_the_protocol_doc_is_generated_from_the_table() -> None:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    shown = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert shown == phase_diagram(), (
        "docs/protocol.md's link-phase diagram differs from the table: paste the text of "
        "firmware_bridge.wire.link_phases.phase_diagram() between the link-phases markers"
    )


def test_ready_is_reached_only_through_a_checksum_echo() -> None:
    into_ready = {t.source for t in LINK_TRANSITIONS if t.target is LinkPhase.READY}
    assert into_ready == {LinkPhase.FIRST_STATUS, LinkPhase.WAIT_IDLE, LinkPhase.CHECKSUM}
    assert all("checksum" in t.cause for t in LINK_TRANSITIONS if t.target is LinkPhase.READY)


def test_every_open_phase_can_close_and_handshake_again_and_closed_only_opens() -> None:
    for phase in LinkPhase:
        if phase is not LinkPhase.CLOSED:
            assert is_allowed(phase, LinkPhase.CLOSED)
            assert is_allowed(phase, LinkPhase.HELLO)
            assert is_allowed(phase, LinkPhase.MISMATCH)
    leaving_closed = {t.target for t in LINK_TRANSITIONS if t.source is LinkPhase.CLOSED}
    assert leaving_closed == {LinkPhase.HELLO}
    assert len(HANDSHAKE_STEPS) == len(set(HANDSHAKE_STEPS))


def _session() -> LinkSession:
    limits = FirmwareLimits(
        max_speed_kmh=8.0, max_accel_kmh_s=0.5, max_decel_kmh_s=3.6, max_lease_ms=300
    )
    return LinkSession(limits, port="/dev/null-port")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (s, t)
        for s, t in itertools.product(LinkPhase, LinkPhase)
        if s is not t and not is_allowed(s, t)
    ],
    ids=str,
)
def test_a_phase_change_missing_from_the_table_drops_the_link(
    source: LinkPhase, target: LinkPhase
) -> None:
    session = _session()
    session._phase = source  # the check itself is tested, without driving the handshake
    actions = session._run(session._enter_phase, target)
    assert len(actions) == 1
    assert isinstance(actions[0], EndSession)
    assert "not in the link-phase table" in actions[0].reason
    assert session.phase is source

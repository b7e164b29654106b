"""The host side of the link as data: its phases and every phase change, with its cause.

:class:`~firmware_bridge.wire.session.LinkSession` (the link's logic, fed by the serial
bridge) checks each phase change against :data:`LINK_TRANSITIONS` (transitions as data, like
the core's mode table); a change missing from the table is an internal error that ends the
port session, so the link is down, the firmware's lease stops the belt and the controller
latches a fault. The diagram in docs/protocol.md §8 is generated from
the table (:func:`phase_diagram`) and a test keeps the two equal.

Example:
    >>> is_allowed(LinkPhase.CHECKSUM, LinkPhase.READY)
    True
    >>> is_allowed(LinkPhase.HELLO, LinkPhase.READY)  # never without the checksum echo
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final


class LinkPhase(Enum):
    """Where the host stands with the firmware on the current port session."""

    CLOSED = "closed"  # no port open
    HELLO = "hello"  # HELLO sent, waiting for its ACK and the firmware's HELLO
    FIRST_STATUS = "first status"  # waiting for a STATUS: is the firmware configured already?
    WAIT_IDLE = "firmware idle"  # firmware faulted or moving: CONFIGURE once it is IDLE
    CONFIGURE = "configure"  # CONFIGURE sent, waiting for its ACK
    CHECKSUM = "checksum"  # waiting for a STATUS echoing our config checksum
    READY = "ready"  # handshake complete: motion commands allowed
    MISMATCH = "mismatch"  # firmware speaks another protocol version: STOP/ESTOP only


@dataclass(frozen=True)
class PhaseTransition:
    """One edge: ``source -> target`` and what causes it (protocol.md §8 step)."""

    source: LinkPhase
    target: LinkPhase
    cause: str


_OPEN: Final = tuple(phase for phase in LinkPhase if phase is not LinkPhase.CLOSED)

HANDSHAKE_STEPS: Final[tuple[PhaseTransition, ...]] = (
    PhaseTransition(LinkPhase.CLOSED, LinkPhase.HELLO, "port opened: host HELLO sent (step 2)"),
    PhaseTransition(
        LinkPhase.HELLO, LinkPhase.FIRST_STATUS, "HELLO acknowledged and answered (step 2)"
    ),
    PhaseTransition(LinkPhase.FIRST_STATUS, LinkPhase.CONFIGURE, "firmware IDLE (step 5)"),
    PhaseTransition(
        LinkPhase.FIRST_STATUS, LinkPhase.READY, "STATUS already echoes our checksum (step 7)"
    ),
    PhaseTransition(
        LinkPhase.FIRST_STATUS, LinkPhase.WAIT_IDLE, "firmware not IDLE, other checksum (step 7)"
    ),
    PhaseTransition(LinkPhase.WAIT_IDLE, LinkPhase.CONFIGURE, "firmware IDLE (step 5)"),
    PhaseTransition(LinkPhase.WAIT_IDLE, LinkPhase.READY, "STATUS echoes our checksum (step 7)"),
    PhaseTransition(LinkPhase.CONFIGURE, LinkPhase.CHECKSUM, "CONFIGURE acknowledged (step 5)"),
    PhaseTransition(
        LinkPhase.CONFIGURE, LinkPhase.WAIT_IDLE, "CONFIGURE refused: not IDLE or belt moving"
    ),
    PhaseTransition(LinkPhase.CHECKSUM, LinkPhase.READY, "STATUS echoes our checksum (step 5)"),
)
"""The handshake of protocol.md §8, step by step."""

FROM_EVERY_OPEN_PHASE: Final[tuple[tuple[LinkPhase, str], ...]] = (
    (LinkPhase.HELLO, "new boot or lost HELLO: handshake again (steps 4, 8)"),
    (LinkPhase.MISMATCH, "HELLO of another protocol version (step 3)"),
    (LinkPhase.CLOSED, "link lost, port closed or bridge stopped"),
)
"""Phases entered from every phase with an open port."""

LINK_TRANSITIONS: Final[tuple[PhaseTransition, ...]] = HANDSHAKE_STEPS + tuple(
    PhaseTransition(source, target, cause)
    for target, cause in FROM_EVERY_OPEN_PHASE
    for source in _OPEN
    if source is not target
)
"""Every phase change of the host. Setting the phase it is already in is not a change."""

LINK_REPORTS: Final[tuple[tuple[LinkPhase, str], ...]] = (
    (
        LinkPhase.READY,
        "entering it reports the link up as a new session (SR-LINK-1), leaving it the link down",
    ),
)
"""What the session reports to the controller on a phase change (only READY is linked)."""

ALLOWED: frozenset[tuple[LinkPhase, LinkPhase]] = frozenset(
    (t.source, t.target) for t in LINK_TRANSITIONS
)


def is_allowed(source: LinkPhase, target: LinkPhase) -> bool:
    """True when ``source -> target`` is in :data:`LINK_TRANSITIONS` (or no change at all)."""
    return source is target or (source, target) in ALLOWED


def phase_diagram() -> str:
    """The Mermaid state diagram of the table, as docs/protocol.md §8 shows it: the handshake
    steps as edges, the phases entered from every open phase as notes."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {LinkPhase.CLOSED.name}"]
    lines.extend(f"    {t.source.name} --> {t.target.name}: {t.cause}" for t in HANDSHAKE_STEPS)
    lines.extend(
        f"    note right of {target.name} : from every open phase: {cause}"
        for target, cause in FROM_EVERY_OPEN_PHASE
    )
    lines.extend(f"    note left of {phase.name} : {report}" for phase, report in LINK_REPORTS)
    lines.append("```")
    return "\n".join(lines) + "\n"

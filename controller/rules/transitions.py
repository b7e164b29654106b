"""The mode-transition table of the safety core: every mode change there is, and its cause.

Transitions as data: :func:`controller.rules.core.decide` checks every mode change against
:data:`MODE_TRANSITIONS` (SR-MODE-3); a change that is not in the table is an internal error
and takes the core's fail-safe path (latch ``internal``, controlled stop). The state diagram
in docs/safety.md is generated from the same table (:func:`state_diagram`) and a test keeps
the two equal.

Example:
    >>> from controller.rules.model import Mode
    >>> is_allowed(Mode.IDLE, Mode.RUNNING), is_allowed(Mode.FAULTED, Mode.RUNNING)
    (True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from controller.rules.model import Mode


@dataclass(frozen=True)
class Transition:
    """One edge of the mode diagram: ``source -> target`` and what causes it (with rule ids)."""

    source: Mode
    target: Mode
    cause: str


INITIAL_MODE: Final = Mode.IDLE
"""The mode :func:`controller.rules.core.initial_state` starts in (SR-MODE-2)."""

MODE_TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition(Mode.IDLE, Mode.RUNNING, "local START, every start condition met (SR-START-*)"),
    Transition(
        Mode.RUNNING,
        Mode.STOPPING,
        "STOP button, service stop, remote stop, target 0 (SR-STOP-1, SR-SPEED-5)",
    ),
    Transition(Mode.STOPPING, Mode.IDLE, "measured speed at rest (SR-STOP-2)"),
    Transition(Mode.IDLE, Mode.FAULTED, "any fault"),
    Transition(Mode.RUNNING, Mode.FAULTED, "any fault"),
    Transition(Mode.STOPPING, Mode.FAULTED, "any fault"),
    Transition(
        Mode.FAULTED,
        Mode.FAULTED,
        "further faults recorded, Stop upgraded to EStop (SR-FAULT-2, SR-FAULT-3)",
    ),
    Transition(
        Mode.FAULTED,
        Mode.IDLE,
        "local RESET at rest, nothing failing, firmware fault cleared (SR-RESET-*)",
    ),
)
"""Every mode change the core makes. ``FAULTED -> FAULTED`` is not a mode change (the mode
stays, the fault record grows); it is listed so that the diagram shows it."""

ALLOWED: frozenset[tuple[Mode, Mode]] = frozenset(
    (t.source, t.target) for t in MODE_TRANSITIONS if t.source is not t.target
)
"""The mode changes :func:`is_allowed` accepts."""


def is_allowed(source: Mode, target: Mode) -> bool:
    """True when ``source -> target`` is a mode change in :data:`MODE_TRANSITIONS`."""
    return (source, target) in ALLOWED


def state_diagram() -> str:
    """The Mermaid state diagram of :data:`MODE_TRANSITIONS`, as docs/safety.md shows it."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {INITIAL_MODE.name}"]
    lines.extend(f"    {t.source.name} --> {t.target.name}: {t.cause}" for t in MODE_TRANSITIONS)
    lines.append("```")
    return "\n".join(lines) + "\n"

"""The working record of one tick of the safety core (:class:`Record`, :class:`Step`), the
no-copy :func:`replace` and the event helpers every rule module shares; no rule lives here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from controller.rules.model import CoreState, Event, FirmwareStatus, Inputs, SafetyConfig


def replace(state: CoreState, /, **changes: object) -> CoreState:
    """``dataclasses.replace``, but ``state`` itself when no field would change.

    Most checks of a tick rewrite a field or two with the value it already has; this keeps
    a steady tick from building a new state object for each of them.
    """
    for name, value in changes.items():
        current = getattr(state, name)
        if current is not value and current != value:
            return dataclasses.replace(state, **changes)  # type: ignore[arg-type]  # fields of CoreState by name
    return state


@dataclass(kw_only=True)
class Record:
    """The state being built and the events so far; lives and dies inside one call."""

    state: CoreState
    now_ms: int
    events: list[Event] = field(default_factory=list)

    def emit(self, kind: str, message: str, **details: str | int | float | bool | None) -> None:
        self.events.append(Event(kind=kind, message=message, details=details))


@dataclass(kw_only=True)
class Step(Record):
    """Working record of one call to :func:`decide`."""

    inputs: Inputs
    config: SafetyConfig
    fresh: FirmwareStatus | None  # the firmware status when usable for a speed reading
    high_kmh: float | None = None  # the higher usable belt speed reading (SR-CHAN-3)
    low_kmh: float | None = None  # the lower one (equal to high_kmh with one channel)
    channels_agree: bool | None = None  # SR-CHAN-2 verdict, None when not compared
    clear_firmware_fault: bool = False
    stop_requested: bool = False
    reset_done: bool = False


def sentence(prefix: str, reasons: tuple[str, ...]) -> str:
    """``prefix: reason; reason.`` (reasons carry no full stop of their own)."""
    return f"{prefix}: " + "; ".join(reasons) + "."


def reject(step: Step, command: str, reason: str) -> None:
    """Report a command that changes nothing, with the reason (``command_rejected``)."""
    step.emit("command_rejected", f"{command} rejected: {reason}", command=command, reason=reason)


CLEAR_HOLD_MS = 100
"""How long a duration rule's condition must stay clear before its timer restarts
(SR-PLAUS-1..3, SR-CHAN-2): 5 ticks at 50 Hz. A speed reading that drops back inside the
margin for a tick or a few (a belt sensor missing one pulse per roller turn halves one
reading) must not restart the timer, or repeated dips hide the condition for ever; a reading
back inside the margin for 100 ms is a belt that has really come back. A constant, not a
config value: it never lengthens a rule's duration (a condition seen continuously latches
exactly as before), it only keeps the start through short dips, so no site needs to tune it;
and not half of ``runaway_window_ms``, which is tuned for the runaway rule's own slope."""


def held_timer(
    since_ms: int | None, clear_since_ms: int | None, condition: bool, now_ms: int
) -> tuple[int | None, int | None]:
    """The next ``(since_ms, clear_since_ms)`` of a duration rule's timer.

    The timer starts when ``condition`` is first seen and keeps its start while the condition
    holds. Once clear, it keeps its start too until the condition has been clear continuously
    for :data:`CLEAR_HOLD_MS` (``clear_since_ms`` is when it cleared); then both are None. A
    rule latches only on a tick where the condition holds and the time since ``since_ms`` is
    over its limit, so a dip raises nothing, and the next bad tick latches if the time is over.

    >>> held_timer(None, None, True, 1000)
    (1000, None)
    >>> held_timer(1000, None, False, 1500), held_timer(1000, 1500, True, 1520)
    ((1000, 1500), (1000, None))
    >>> held_timer(1000, 1500, False, 1600)
    (None, None)
    """
    if condition:
        return (now_ms if since_ms is None else since_ms), None
    if since_ms is None:
        return None, None
    clear_ms = now_ms if clear_since_ms is None else clear_since_ms
    if now_ms - clear_ms >= CLEAR_HOLD_MS:
        return None, None
    return since_ms, clear_ms

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

"""The service's event feed: every event logged once, published and kept for timelines, with
floods of rejected commands folded into one line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from controller.adapters.mqtt.commands import CommandRejected
from controller.adapters.mqtt.telemetry import event_payload
from controller.rules.model import Event

logger = logging.getLogger(__name__)

REJECT_LOG_EVERY_MS = 1000
#: A ``command_rejected`` event repeating the previous one's text within this time (holding
#: ``+`` at the limit) is counted, not logged or published again; the next one after the
#: window says how many were folded.
FOLD_REPEATS_MS = 5000
FOLD_KEYS_MAX = 64
EVENT_LOG_LENGTH = 200
WARNING_KINDS = frozenset({"fault", "storage_error", "config_rejected", "link_lost"})


class EventFeed:
    """Where the service's events go: the log (a transition once at INFO, faults at WARNING),
    the MQTT publisher (when there is one), ``log`` (the last 200, with their time) and
    ``new`` (every event since the last tick record, folded ones too)."""

    def __init__(self, clock_ms: Callable[[], int]) -> None:
        self._clock_ms = clock_ms
        self.log: deque[tuple[int, Event]] = deque(maxlen=EVENT_LOG_LENGTH)
        self.new: list[Event] = []
        self.publisher: Any | None = None  # a controller.adapters.mqtt.publisher.MqttPublisher
        self._folds: dict[str, tuple[int, int]] = {}  # message -> (shown at ms, folded since)
        self._rejected_count = 0
        self._rejected_logged_ms = -REJECT_LOG_EVERY_MS

    def emit(self, event: Event, *, publish: bool = True) -> None:
        """Log, publish and record ``event`` (a repeated rejection only counts)."""
        now_ms = self._clock_ms()
        shown = self._fold_repeat(event, now_ms)
        if shown is None:
            self.new.append(event)  # timelines and observers see every one
            return
        event = shown
        self.log.append((now_ms, event))
        if event.kind == "transition":
            logger.info("%s", event.message)
        elif event.kind in WARNING_KINDS:
            logger.warning("%s: %s", event.kind, event.message)
        else:
            logger.info("%s: %s", event.kind, event.message)
        if publish and self.publisher is not None:
            self.publisher.publish_event(event_payload(ts=datetime.now(UTC), event=event))
        self.new.append(event)

    def rejected(self, command: CommandRejected) -> None:
        """A remote command the publisher refused (and already published the event of):
        recorded for logs and timelines, a flood folded into one line per second."""
        now_ms = self._clock_ms()
        self._rejected_count += 1
        if now_ms - self._rejected_logged_ms < REJECT_LOG_EVERY_MS:
            return
        folded = self._rejected_count - 1
        self._rejected_count = 0
        self._rejected_logged_ms = now_ms
        more = f" (and {folded} more rejected in the last second)" if folded else ""
        self.emit(
            Event(
                "command_rejected",
                f"remote command {command.command!r} rejected: {command.reason}{more}",
                {"command": command.command, "reason": command.reason, "folded": folded},
            ),
            publish=False,
        )

    def _fold_repeat(self, event: Event, now_ms: int) -> Event | None:
        """``None`` for a ``command_rejected`` repeating a recent one; else the event to show
        (with ``repeats``: how many like it were folded since it was last shown)."""
        if event.kind != "command_rejected":
            return event
        shown = self._folds.get(event.message)
        if shown is not None and now_ms - shown[0] < FOLD_REPEATS_MS:
            self._folds[event.message] = (shown[0], shown[1] + 1)
            return None
        if len(self._folds) >= FOLD_KEYS_MAX:
            self._folds = {k: v for k, v in self._folds.items() if now_ms - v[0] < FOLD_REPEATS_MS}
        self._folds[event.message] = (now_ms, 0)
        folded = shown[1] if shown is not None else 0
        if not folded:
            return event
        return dataclasses.replace(
            event,
            message=f"{event.message} (and {folded} more like it)",
            details={**event.details, "repeats": folded},
        )

"""Telemetry out: what waits to be published, and when each part is due.

:class:`Outbox` holds the latest state (or the builder it is pulled from), the event queue,
the training session and the diagnostics builder, and publishes them on a connected client
at their rates (docs/mqtt.md, "Rates"). The control loop's hand-over methods only store;
the publisher's writer awaits the ``publish_*``/``maybe_*`` coroutines.

The state throttle: a changed state field at most ``state_rate_hz``; changed measurements
(speeds) every ``measurement_interval_s``; changed session counters every
``counter_interval_s``; an unchanged state every ``state_heartbeat_s``. With a state source
the state is built here, at most ``state_rate_hz`` times a second.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from controller.adapters.mqtt.connection import raise_if_cancel_was_swallowed
from controller.adapters.mqtt.intake import LogFolder
from controller.adapters.mqtt.settings import MqttSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiomqtt

__all__ = ["Outbox", "split_state"]

#: Fields that change on every tick without the treadmill's state changing: the timestamp,
#: the clock and the link/loop health counters. A state differing only in these is not
#: re-published before the heartbeat.
_VOLATILE_STATE_FIELDS: Final = frozenset({"ts", "now_ms", "link"})
#: Measurements: they change continuously while the belt moves (sensor resolution 0.01 km/h).
_MEASUREMENT_FIELDS: Final = frozenset(
    {"speed_kmh", "belt_kmh", "belt_sensor_kmh", "commanded_kmh"}
)
_FIRMWARE_VOLATILE: Final = frozenset({"age_ms"})
#: The running session's counters: they grow every tick of a session, moving or not.
_SESSION_COUNTERS: Final = frozenset({"elapsed_s", "moving_s", "distance_m", "remaining_s"})
_FIRMWARE_MEASUREMENTS: Final = frozenset({"commanded_kmh"})


@dataclass(frozen=True)
class StateParts:
    """A state payload split by how fast its parts may be re-published."""

    fields: dict[str, object]  # state fields: mode, stage, grip, fault, target, ...
    measurements: dict[str, object]  # speeds
    counters: dict[str, object]  # numbers of the running session (elapsed_s, distance_m, ...)


def split_state(payload: Mapping[str, object]) -> StateParts:
    """Split a state payload into its state fields, measurements and session counters."""
    fields: dict[str, object] = {}
    measurements: dict[str, object] = {}
    counters: dict[str, object] = {}
    for key, value in payload.items():
        if key in _VOLATILE_STATE_FIELDS:
            continue
        if key in _MEASUREMENT_FIELDS:
            measurements[key] = value
        elif key == "firmware" and isinstance(value, dict):
            fields[key] = {
                k: v
                for k, v in value.items()
                if k not in _FIRMWARE_VOLATILE and k not in _FIRMWARE_MEASUREMENTS
            }
            measurements.update(
                {f"firmware.{k}": v for k, v in value.items() if k in _FIRMWARE_MEASUREMENTS}
            )
        elif key == "session" and isinstance(value, dict):
            fields[key] = {k: v for k, v in value.items() if k not in _SESSION_COUNTERS}
            counters.update({k: v for k, v in value.items() if k in _SESSION_COUNTERS})
        else:
            fields[key] = value
    return StateParts(fields, measurements, counters)


def _encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")


class Outbox:
    """What waits to go out, and the publishing of it on a connected client."""

    def __init__(self, settings: MqttSettings, log_folder: LogFolder) -> None:
        self._settings = settings
        self._log = log_folder
        self.state: dict[str, object] | None = None
        self.state_fresh = False
        self.state_source: Callable[[], dict[str, object]] | None = None
        self.diagnostics_source: Callable[[], dict[str, object]] | None = None
        self._state_sent: StateParts | None = None  # last published, split
        self._state_sent_s = -math.inf
        self._measurements_sent_s = -math.inf
        self._counters_sent_s = -math.inf
        self._diagnostics_sent_s = -math.inf
        self._state_polled_s = -math.inf
        self.events: deque[dict[str, object]] = deque()
        self.session: dict[str, object] | None = None
        self.session_dirty = False
        self.saying_goodbye = False  # publishing on shutdown: cancellation is expected
        # counters
        self.state_published = 0
        self.events_published = 0
        self.events_dropped = 0
        self.diagnostics_published = 0

    # ------------------------------------------------------------------ hand-over (sync)

    def put_event(self, payload: dict[str, object]) -> None:
        """Queue an event; when ``event_queue_size`` are waiting, drop the oldest (counted)."""
        if len(self.events) >= self._settings.event_queue_size:
            self.events.popleft()
            self.events_dropped += 1
        self.events.append(payload)

    def after_connect(self) -> None:
        """A new connection: the state, the diagnostics and the session go out again now."""
        self._state_sent = None
        self._state_sent_s = -math.inf
        self._diagnostics_sent_s = -math.inf
        self._state_polled_s = -math.inf
        self.session_dirty = self.session is not None

    def state_due_now(self) -> None:
        """Publish the latest state at the next :meth:`maybe_publish_state` (shutdown)."""
        self._state_sent_s = -math.inf
        self._state_polled_s = -math.inf

    # ------------------------------------------------------------------ publishing

    async def flush_events(self, client: aiomqtt.Client) -> None:
        """Publish the queued events in order. An event leaves the queue only once the broker
        has it: a disconnect or a cancellation mid-publish leaves it queued for the next
        attempt (QoS 1 is at-least-once anyway)."""
        while self.events:
            payload = self.events[0]
            sent = await self.publish_json(client, self._settings.event_topic, payload)
            if self.events and self.events[0] is payload:
                self.events.popleft()
            self.events_published += sent

    async def publish_session(self, client: aiomqtt.Client) -> None:
        """The session record, retained, if it changed since it was last published."""
        session = self.session
        if self.session_dirty and session is not None:
            await self.publish_json(client, self._settings.session_topic, session, retain=True)
            if self.session is session:
                self.session_dirty = False

    async def maybe_publish_state(self, client: aiomqtt.Client) -> float | None:
        """Publish the latest state if it is due; else return seconds until it is due
        (``None``: nothing to do until a new state arrives)."""
        settings = self._settings
        now_s = time.monotonic()
        poll_s = 1.0 / settings.state_rate_hz
        if self.state_source is not None:
            if now_s < self._state_polled_s + poll_s:
                return self._state_polled_s + poll_s - now_s
            self._state_polled_s = now_s
            self.state = self.state_source()
            self.state_fresh = True
        state = self.state
        if state is None:
            return None
        parts = split_state(state)
        sent = self._state_sent
        due: list[float] = []
        if sent is None or parts.fields != sent.fields:
            due.append(self._state_sent_s + poll_s)
        if sent is not None and parts.measurements != sent.measurements:
            due.append(
                max(
                    self._state_sent_s + poll_s,
                    self._measurements_sent_s + settings.measurement_interval_s,
                )
            )
        if sent is not None and parts.counters != sent.counters:
            due.append(
                max(
                    self._state_sent_s + poll_s, self._counters_sent_s + settings.counter_interval_s
                )
            )
        if not due and self.state_fresh:
            due.append(self._state_sent_s + settings.state_heartbeat_s)
        if not due:
            return poll_s if self.state_source is not None else None
        due_s = min(due)
        if now_s < due_s:
            wait_s = due_s - now_s
            return min(wait_s, poll_s) if self.state_source is not None else wait_s
        self._state_sent = parts
        self._state_sent_s = now_s
        self._measurements_sent_s = now_s
        self._counters_sent_s = now_s
        self.state_fresh = self.state_source is not None
        published = await self.publish_json(
            client, settings.state_topic, state, qos=0, retain=True, what="state"
        )
        self.state_published += published
        return poll_s if self.state_source is not None else None

    async def maybe_publish_diagnostics(self, client: aiomqtt.Client) -> float | None:
        """Publish the diagnostics every ``diagnostics_interval_s`` (and after each connect);
        else the seconds until they are due (``None``: no diagnostics source)."""
        source = self.diagnostics_source
        if source is None:
            return None
        now_s = time.monotonic()
        due_s = self._diagnostics_sent_s + self._settings.diagnostics_interval_s
        if now_s < due_s:
            return due_s - now_s
        self._diagnostics_sent_s = now_s
        published = await self.publish_json(
            client,
            self._settings.diagnostics_topic,
            source(),
            qos=0,
            retain=True,
            what="diagnostics",
        )
        self.diagnostics_published += published
        return self._settings.diagnostics_interval_s

    async def publish_json(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: Mapping[str, object],
        *,
        qos: int = 1,
        retain: bool = False,
        what: str = "payload",
    ) -> bool:
        """Publish ``payload`` as JSON; ``False`` if it could not be encoded (logged)."""
        try:
            data = _encode(payload)
        except (TypeError, ValueError) as exc:
            self._log.log(
                logging.ERROR,
                f"encode:{topic}",
                "MQTT: %s for %s is not JSON, dropped (%s)",
                what,
                topic,
                exc,
            )
            return False
        await client.publish(topic, data, qos=qos, retain=retain)
        if not self.saying_goodbye:
            raise_if_cancel_was_swallowed()
        return True

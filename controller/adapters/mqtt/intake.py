"""Remote commands in: received messages to parsed commands, with flood control.

:class:`CommandIntake` takes every message the publisher's connections receive (the main
one and the stop path) and hands each parsed command to the service's ``on_command``. A
flood must cost little and must never hold up ``cmd/stop`` (docs/mqtt.md, "Rates, queues and
floods"):

* commands other than ``cmd/stop`` beyond :data:`COMMAND_BURST`, then
  :data:`COMMANDS_PER_S`, are dropped as they arrive, before they are queued or parsed
  (:meth:`CommandIntake.admit`, counted in ``commands_dropped``);
* the queue of received messages (:func:`incoming_queue_type`) is bounded and, when full,
  drops the oldest message that is not a stop;
* ``command_rejected`` events of the parser beyond :data:`REJECTION_EVENT_BURST` are folded
  into a count (:class:`RejectionFolder`);
* a stop arriving on both connections counts once (:meth:`CommandIntake.stop_is_twin`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Final

import aiomqtt

from controller.adapters.mqtt.commands import CommandRejected, ParsedCommand, excerpt, parse_command
from controller.adapters.mqtt.settings import MqttSettings
from controller.adapters.mqtt.telemetry import event_payload
from controller.rules.model import Event

__all__ = [
    "COMMANDS_PER_S",
    "COMMAND_BURST",
    "INCOMING_QUEUE_SIZE",
    "LOG_INTERVAL_S",
    "READ_BATCH",
    "REJECTION_EVENTS_PER_S",
    "REJECTION_EVENT_BURST",
    "CommandIntake",
    "LogFolder",
    "RejectionFolder",
    "incoming_queue_type",
]

logger = logging.getLogger(__name__)

INCOMING_QUEUE_SIZE: Final[int] = 256
"""Received messages waiting to be parsed. When full, the oldest message that is not a
``cmd/stop`` is dropped (and counted in ``commands_dropped``): a flood cannot grow memory
and cannot push a stop out."""

READ_BATCH: Final[int] = 32
"""Received messages handled in one go before the reader yields to the event loop."""

LOG_INTERVAL_S: Final[float] = 5.0
"""Repeated command log lines of one kind are folded into one per this interval."""

COMMANDS_PER_S: Final[float] = 50.0
COMMAND_BURST: Final[int] = 200
"""Commands other than ``cmd/stop`` parsed: up to a burst of 200, then 50 a second on
average; the rest are dropped unparsed and counted (``commands_dropped``). No person or
dashboard sends more; a flood then costs only the MQTT client's own reading of each message.
``cmd/stop`` is never limited."""

REJECTION_EVENTS_PER_S: Final[float] = 2.0
REJECTION_EVENT_BURST: Final[int] = 20
"""``command_rejected`` events: up to a burst of 20 one by one, then 2 a second on average;
the others are counted and the count goes out with the next one (``folded``). A flood of junk
commands then costs no broker traffic and cannot push real events out of the queue."""


class RejectionFolder:
    """A token bucket (for ``command_rejected`` events, and for the command intake):
    :meth:`allow` says whether to let one through now and how many were folded (not let
    through) since the last one that was."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        per_s: float = REJECTION_EVENTS_PER_S,
        burst: int = REJECTION_EVENT_BURST,
    ) -> None:
        self._clock = clock
        self._per_s = per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_s = clock()
        self.folded = 0  # rejections not reported since the last one reported
        self.folded_total = 0

    def _refill(self) -> None:
        now_s = self._clock()
        self._tokens = min(self._burst, self._tokens + (now_s - self._last_s) * self._per_s)
        self._last_s = now_s

    def allow(self) -> int | None:
        """``None``: fold this one (counted); else report it, with this many folded before."""
        self._refill()
        if self._tokens < 1.0:
            self.folded += 1
            self.folded_total += 1
            return None
        self._tokens -= 1.0
        folded, self.folded = self.folded, 0
        return folded

    def take_summary(self) -> int:
        """The folded count, if a report is allowed now and some are waiting; else 0."""
        if self.folded == 0:
            return 0
        self._refill()
        if self._tokens < 1.0:
            return 0
        self._tokens -= 1.0
        folded, self.folded = self.folded, 0
        return folded


class LogFolder:
    """Folds repeated log lines of one kind into one per interval, counting the rest; the
    lines go to ``log`` (default: this module's logger)."""

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float],
        log: logging.Logger | None = None,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._logger = log if log is not None else logger
        self._last_s: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """``None`` to stay quiet, else the number of lines folded since the last one."""
        now_s = self._clock()
        last_s = self._last_s.get(key)
        if last_s is not None and now_s - last_s < self._interval_s:
            self._folded[key] = self._folded.get(key, 0) + 1
            return None
        self._last_s[key] = now_s
        return self._folded.pop(key, 0)

    def log(self, level: int, key: str, fmt: str, *args: object) -> None:
        """Log ``fmt % args`` unless a line of this ``key`` went out within the interval."""
        folded = self.allow(key)
        if folded is None:
            return
        if folded:
            self._logger.log(level, fmt + " (and %d more like it)", *args, folded)
        else:
            self._logger.log(level, fmt, *args)


def incoming_queue_type(
    stop_topic: str,
    on_drop: Callable[[], None],
    on_create: Callable[[asyncio.Queue[aiomqtt.Message]], None],
    admit: Callable[[str], bool] = lambda topic: True,
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A bounded queue for aiomqtt's incoming messages that never refuses a stop.

    A message whose topic ``admit`` refuses is dropped on arrival (``on_drop``), before it is
    queued or parsed: the cheapest place to shed a flood. When full, the queue drops the
    oldest message that is not on ``stop_topic``; if every queued message is a stop, the new
    message is dropped instead (a queued stop does the job). ``on_create`` receives the
    queue so that the reader can drain it in batches.
    """

    class _IncomingQueue(asyncio.Queue[aiomqtt.Message]):
        def _init(self, maxsize: int) -> None:
            self._queue: deque[aiomqtt.Message] = deque()
            on_create(self)

        def put_nowait(self, item: aiomqtt.Message) -> None:
            if not admit(item.topic.value):
                on_drop()
                return
            if self.full():
                on_drop()
                for index, queued in enumerate(self._queue):
                    if queued.topic.value != stop_topic:
                        del self._queue[index]
                        break
                else:
                    return  # all queued messages are stops: drop the new one
            super().put_nowait(item)

    return _IncomingQueue


class CommandIntake:
    """Parses received messages into commands for ``on_command``, with the flood limits.

    ``publish_event`` queues the ``command_rejected`` events this builds (the publisher's
    event queue); ``on_ha_online`` is called when Home Assistant announces itself (discovery
    is then due again); ``clock`` gives the wall-clock time of those events. Synchronous and
    cheap: called from the publisher's reader for every message.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_command: Callable[[ParsedCommand], None],
        publish_event: Callable[[dict[str, object]], None],
        on_ha_online: Callable[[], None],
        clock: Callable[[], datetime],
        log_folder: LogFolder,
    ) -> None:
        self._settings = settings
        self._on_command = on_command
        self._publish_event = publish_event
        self._on_ha_online = on_ha_online
        self._clock = clock
        self._log = log_folder
        self._rejections = RejectionFolder(time.monotonic)
        self._limit = RejectionFolder(time.monotonic, per_s=COMMANDS_PER_S, burst=COMMAND_BURST)
        self.stop_topic = f"{settings.command_prefix}stop"
        self.stop_path_up = False
        self.stop_counts = [0, 0]  # stops seen on the main connection and on the stop path
        self.received = 0
        self.rejected = 0
        self.dropped = 0

    @property
    def rejections_folded(self) -> int:
        """``command_rejected`` events counted instead of published, in all."""
        return self._rejections.folded_total

    def admit(self, topic: str) -> bool:
        """The command intake limit (COMMANDS_PER_S), applied as a message arrives; never
        to ``cmd/stop`` nor to anything that is not a command."""
        if not topic.startswith(self._settings.command_prefix) or topic == self.stop_topic:
            return True
        return self._limit.allow() is not None

    def count_dropped(self) -> None:
        """A received message was dropped unparsed (intake limit or full queue)."""
        self.dropped += 1

    def set_stop_path(self, up: bool) -> None:
        """The stop path connected (or went down): the twin count starts again."""
        self.stop_path_up = up
        self.stop_counts = [0, 0]

    def stop_is_twin(self, path: int) -> bool:
        """Whether this stop (on ``path``: 0 main, 1 stop path) is the second copy of one
        already handed over. While both connections are up every stop arrives on both, in
        the same order on each: the n-th stop on one path is the twin of the n-th on the
        other. With the stop path down, every stop counts."""
        if not self.stop_path_up:
            return False
        counts = self.stop_counts
        counts[path] += 1
        return counts[1 - path] >= counts[path]

    def handle(self, topic: str, payload: object, *, retain: bool, path: int = 0) -> None:
        """One received message, on ``path`` (0 the main connection, 1 the stop path)."""
        settings = self._settings
        if topic == self.stop_topic and not retain and self.stop_is_twin(path):
            return
        raw = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
        if topic == settings.ha_status_topic:
            if not retain and raw.strip() == b"online":
                logger.info("Home Assistant is online: republishing discovery")
                self._on_ha_online()
            return
        if not topic.startswith(settings.command_prefix):
            logger.debug("MQTT: ignoring message on %s", excerpt(topic, 80))
            return
        name = topic[len(settings.command_prefix) :]
        self.received += 1
        command: ParsedCommand
        if retain:
            command = CommandRejected(
                command=excerpt(name, 40),
                reason=(
                    "retained command ignored: commands must be published with retain=false "
                    "(clear it with an empty retained publish)"
                ),
                payload_excerpt=excerpt(raw),
            )
        else:
            command = parse_command(
                name,
                raw,
                max_payload_bytes=settings.max_payload_bytes,
                max_stage=settings.max_stage,
                max_speed_kmh=settings.max_speed_kmh,
            )
        if isinstance(command, CommandRejected):
            self._reject(command)
        else:
            self._log.log(
                logging.INFO, f"cmd:{type(command).__name__}", "MQTT remote command %r", command
            )
        try:
            self._on_command(command)
        except Exception:  # a failing consumer must not stop the publisher
            logger.exception("MQTT: on_command raised for %r", command)

    def _reject(self, rejected: CommandRejected) -> None:
        self.rejected += 1
        self._log.log(
            logging.WARNING,
            f"reject:{rejected.command}",
            "MQTT command cmd/%s rejected: %s (payload %r)",
            rejected.command,
            rejected.reason,
            rejected.payload_excerpt,
        )
        folded = self._rejections.allow()
        if folded is None:
            return  # a flood: counted, and the count goes out with the next event
        more = f" (and {folded} more rejected before it, not reported one by one)" if folded else ""
        event = Event(
            kind="command_rejected",
            message=f"remote command cmd/{rejected.command} rejected: {rejected.reason}{more}",
            details={
                "source": "mqtt",
                "command": rejected.command,
                "reason": rejected.reason,
                "payload_excerpt": rejected.payload_excerpt,
                "folded": folded,
            },
        )
        self._publish_event(event_payload(ts=self._clock(), event=event))

    def publish_folded_rejections(self) -> None:
        """After a flood: one event with the count of rejections not yet reported."""
        folded = self._rejections.take_summary()
        if not folded:
            return
        event = Event(
            kind="command_rejected",
            message=f"{folded} more remote commands rejected, not reported one by one",
            details={"source": "mqtt", "command": None, "reason": "flood", "folded": folded},
        )
        self._publish_event(event_payload(ts=self._clock(), event=event))

"""MQTT publisher: telemetry out, remote commands in, Home Assistant discovery.

One task (:meth:`MqttPublisher.run`) owns the broker connection. The control loop
never awaits it: it hands over the latest state, events and session with the
non-blocking :meth:`~MqttPublisher.publish_state`, :meth:`~MqttPublisher.publish_event`
and :meth:`~MqttPublisher.publish_session`, and receives remote commands through the
cheap synchronous ``on_command`` callback. MQTT is never on the safety path
(docs/architecture.md, house rule 3): if the broker is slow, gone or hostile, the
controller runs on and only telemetry suffers.

Topics (``<prefix>`` is ``treadmill/<treadmill_id>``; details in docs/mqtt.md):

===========================  ====  ======  ==========================================
topic                        QoS   retain  what
===========================  ====  ======  ==========================================
``<prefix>/availability``    1     yes     ``online``; the will sets ``offline``
``<prefix>/state``           0     yes     latest state: a changed state field at most
                                           ``state_rate_hz``, changed measurements
                                           (speeds) every ``measurement_interval_s``,
                                           changed session counters every
                                           ``counter_interval_s``; unchanged, every
                                           ``state_heartbeat_s`` while fresh
``<prefix>/diagnostics``     0     yes     link, loop and MQTT counters, every
                                           ``diagnostics_interval_s``
``<prefix>/event``           1     no      events, oldest dropped when the queue is full
``<prefix>/session``         1     yes     the training session
``<prefix>/cmd/<name>``      in    no      remote commands (they can only make things
                                           safer; see controller.adapters.mqtt.commands)
===========================  ====  ======  ==========================================

Example (inside the service's TaskGroup)::

    publisher = MqttPublisher(settings, on_command=remote_queue.append)
    publisher.set_sources(state=build_state, diagnostics=build_diagnostics)
    tg.create_task(publisher.run(), name="mqtt")
    ...
    publisher.nudge()   # something changed in this tick; never blocks

The publisher pulls the state from ``build_state`` at most ``state_rate_hz`` times a second
(the one throttle: the control loop never builds telemetry it would not send), or takes a
state handed over with :meth:`MqttPublisher.publish_state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from controller.adapters.mqtt.commands import CommandRejected, ParsedCommand, excerpt, parse_command
from controller.adapters.mqtt.discovery import discovery_messages
from controller.adapters.mqtt.settings import MqttSettings
from controller.adapters.mqtt.telemetry import event_payload
from controller.errors import CredentialsError
from controller.rules.model import Event

__all__ = [
    "COMMANDS_PER_S",
    "COMMAND_BURST",
    "INCOMING_QUEUE_SIZE",
    "READ_BATCH",
    "REJECTION_EVENTS_PER_S",
    "REJECTION_EVENT_BURST",
    "CredentialsError",
    "MqttPublisher",
    "MqttSettings",
    "MqttStats",
    "RejectionFolder",
]

logger = logging.getLogger(__name__)

INCOMING_QUEUE_SIZE: Final[int] = 256
"""Received messages waiting to be parsed. When full, the oldest message that is not a
``cmd/stop`` is dropped (and counted in ``commands_dropped``): a flood cannot grow memory
and cannot push a stop out."""

BROKER_TIMEOUT_S: Final[float] = 5.0
"""How long a CONNACK, SUBACK or PUBACK may take before the connection counts as broken."""

READ_BATCH: Final[int] = 32
"""Received messages handled in one go before the reader yields to the event loop."""

GOODBYE_TIMEOUT_S: Final[float] = 2.0
"""On shutdown: time allowed to flush events and publish ``offline`` before disconnecting."""

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

_UNSUPPORTED_PROTOCOL_CODES: Final[frozenset[int]] = frozenset({1, 132})
"""CONNACK codes meaning "unsupported protocol version": 1 in MQTT 3.1.1, 0x84 in MQTT 5."""


@dataclass(frozen=True)
class MqttStats:
    """Counters since the publisher was created. ``last_error`` is the latest connection
    problem (kept after a reconnect, for the status page)."""

    connected: bool
    connects: int
    state_published: int
    events_published: int
    events_dropped: int
    commands_received: int
    commands_rejected: int
    last_error: str | None
    commands_dropped: int = 0
    rejections_folded: int = 0  # command_rejected events counted instead of published
    stop_path_connected: bool = False  # the second connection, for cmd/stop only, is up


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: Fields that change on every tick without the treadmill's state changing: the timestamp,
#: the clock and the link/loop health counters. A state differing only in these is not
#: re-published before the heartbeat.
_VOLATILE_STATE_FIELDS = frozenset({"ts", "now_ms", "link"})
#: Measurements: they change continuously while the belt moves (sensor resolution 0.01 km/h).
_MEASUREMENT_FIELDS = frozenset({"speed_kmh", "belt_kmh", "belt_sensor_kmh", "commanded_kmh"})
_FIRMWARE_VOLATILE = frozenset({"age_ms"})
#: The running session's counters: they grow every tick of a session, moving or not.
_SESSION_COUNTERS = frozenset({"elapsed_s", "moving_s", "distance_m", "remaining_s"})
_FIRMWARE_MEASUREMENTS = frozenset({"commanded_kmh"})


@dataclass(frozen=True)
class _StateParts:
    """A state payload split by how fast its parts may be re-published."""

    fields: dict[str, object]  # state fields: mode, stage, grip, fault, target, ...
    measurements: dict[str, object]  # speeds
    counters: dict[str, object]  # numbers of the running session (elapsed_s, distance_m, ...)


def _split_state(payload: Mapping[str, object]) -> _StateParts:
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
    return _StateParts(fields, measurements, counters)


def _encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _refuses_v5(exc: MqttConnectError) -> bool:
    code = getattr(exc.rc, "value", exc.rc)
    return isinstance(code, int) and code in _UNSUPPORTED_PROTOCOL_CODES


def _timed_out(exc: aiomqtt.MqttError) -> bool:
    """aiomqtt's "no CONNACK in time" (it raises a plain ``MqttError`` with this text)."""
    return "timed out" in str(exc).lower()


def _protocol_name(protocol: aiomqtt.ProtocolVersion) -> str:
    return "5" if protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _raise_if_cancel_was_swallowed(baseline: int = 0) -> None:
    """Re-raise a cancellation that ``asyncio.wait_for`` lost.

    On Python 3.11, ``wait_for`` (used inside aiomqtt for every acknowledged call)
    returns the result instead of raising when the cancellation and the result arrive
    together; the task then runs on with ``cancelling()`` above its ``baseline`` and
    whoever cancelled it waits forever. Called after every awaited broker call outside
    the shutdown path.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > baseline:
        raise asyncio.CancelledError


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


class _LogFolder:
    """Folds repeated log lines of one kind into one per interval, counting the rest."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._clock = clock
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


def _incoming_queue_type(
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


class MqttPublisher:
    """Publishes telemetry and receives remote commands over one broker connection.

    All public methods except :meth:`run` are synchronous, never block and never raise;
    call them from the event loop's thread. Payloads handed over belong to the publisher
    from then on (do not change them afterwards).

    ``on_command`` gets every received command, rejected ones included (parser
    rejections are also counted and published as ``command_rejected`` events by the
    publisher itself). It must be cheap and must not block. ``clock`` gives the
    wall-clock time for the events the publisher builds itself; ``rng`` the backoff
    jitter (both injectable for tests).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_command: Callable[[ParsedCommand], None],
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._on_command = on_command
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 -- backoff jitter, not crypto
        self._wake = asyncio.Event()
        self._log_folder = _LogFolder(LOG_INTERVAL_S, time.monotonic)
        self._rejections = RejectionFolder(time.monotonic)
        self._command_prefix = settings.command_prefix
        self._stop_path_up = False
        self._stop_counts = [0, 0]  # stops seen on the main connection and on the stop path
        self._stop_topic = f"{settings.command_prefix}stop"
        self._intake = RejectionFolder(time.monotonic, per_s=COMMANDS_PER_S, burst=COMMAND_BURST)
        self._discovery = discovery_messages(settings) if settings.discovery else []
        # what is waiting to go out
        self._state: dict[str, object] | None = None
        self._state_fresh = False
        self._state_source: Callable[[], dict[str, object]] | None = None
        self._diagnostics_source: Callable[[], dict[str, object]] | None = None
        self._state_sent: _StateParts | None = None  # last published, split
        self._state_sent_s = -math.inf
        self._measurements_sent_s = -math.inf
        self._counters_sent_s = -math.inf
        self._diagnostics_sent_s = -math.inf
        self._diagnostics_published = 0
        self._state_polled_s = -math.inf
        self._events: deque[dict[str, object]] = deque()
        self._session: dict[str, object] | None = None
        self._session_dirty = False
        self._discovery_due = False
        self._saying_goodbye = False
        self._incoming: asyncio.Queue[aiomqtt.Message] | None = None
        self._protocol = aiomqtt.ProtocolVersion.V5
        # counters
        self._connected = False
        self._connects = 0
        self._state_published = 0
        self._events_published = 0
        self._events_dropped = 0
        self._commands_received = 0
        self._commands_rejected = 0
        self._commands_dropped = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ control-loop API

    def publish_state(self, payload: dict[str, object]) -> None:
        """Hand over the latest state (keeps only the latest). Never blocks.

        Published retained at most ``state_rate_hz`` and only when something other than
        ``ts`` changed; an unchanged state is re-sent every ``state_heartbeat_s``.
        """
        self._state = payload
        self._state_fresh = True
        self._wake.set()

    def set_sources(
        self,
        *,
        state: Callable[[], dict[str, object]] | None = None,
        diagnostics: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """Pull the state (at most ``state_rate_hz`` times a second) and the diagnostics
        (every ``diagnostics_interval_s``) from these builders instead of being handed them.
        They run on the event loop, must be cheap and must not raise."""
        self._state_source = state
        self._diagnostics_source = diagnostics
        if state is not None:
            self._state_fresh = True
        self._wake.set()

    def nudge(self) -> None:
        """Something changed: look at the state now rather than at the next poll."""
        self._wake.set()

    def publish_event(self, payload: dict[str, object]) -> None:
        """Queue an event (QoS 1, not retained). Never blocks.

        When ``event_queue_size`` events are waiting, the oldest is dropped and counted
        in ``events_dropped``. Events queued while disconnected go out after reconnecting.
        """
        if len(self._events) >= self._settings.event_queue_size:
            self._events.popleft()
            self._events_dropped += 1
        self._events.append(payload)
        self._wake.set()

    def publish_session(self, payload: dict[str, object]) -> None:
        """Hand over the training session (QoS 1, retained, latest only). Never blocks."""
        self._session = payload
        self._session_dirty = True
        self._wake.set()

    @property
    def stats(self) -> MqttStats:
        return MqttStats(
            connected=self._connected,
            connects=self._connects,
            state_published=self._state_published,
            events_published=self._events_published,
            events_dropped=self._events_dropped,
            commands_received=self._commands_received,
            commands_rejected=self._commands_rejected,
            last_error=self._last_error,
            commands_dropped=self._commands_dropped,
            rejections_folded=self._rejections.folded_total,
            stop_path_connected=self._stop_path_up,
        )

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Connect, serve and reconnect forever. Raises only ``CancelledError``.

        After every connect: subscribe to ``<prefix>/cmd/#`` and ``homeassistant/status``,
        then availability ``online`` (retained; the will is ``offline``), discovery
        (retained), the current state and session; ``stats.connected`` turns true once
        ``online`` is out. Broker trouble of any kind leads
        to a reconnect with jittered exponential backoff (``reconnect_min_s`` ..
        ``reconnect_max_s``). MQTT 5 is tried first; a broker that refuses it gets
        MQTT 3.1.1 from then on. On cancellation, pending events and ``offline`` are
        published (within ``GOODBYE_TIMEOUT_S``) before a clean disconnect.
        """
        choice = self._settings.protocol
        protocol = aiomqtt.ProtocolVersion.V311 if choice == "3.1.1" else aiomqtt.ProtocolVersion.V5
        settled = choice != "auto"  # auto: until a first connect, try the other on a timeout
        failures = 0
        task = asyncio.current_task()
        baseline = task.cancelling() if task is not None else 0
        while True:
            connects_before = self._connects
            try:
                await self._connect_and_serve(protocol, baseline)
                reason = "the connection ended"  # pragma: no cover - serving only ends by raising
            except MqttConnectError as exc:
                if not settled and protocol is aiomqtt.ProtocolVersion.V5 and _refuses_v5(exc):
                    logger.warning(
                        "MQTT broker %s:%d refused MQTT 5 (%s): using MQTT 3.1.1 from now on",
                        self._settings.host,
                        self._settings.port,
                        exc,
                    )
                    protocol = aiomqtt.ProtocolVersion.V311
                    continue
                reason = f"broker refused the connection: {exc}"
            except aiomqtt.MqttError as exc:
                reason = _describe_error(exc)
                if not settled and self._connects == connects_before and _timed_out(exc):
                    # Some brokers (amqtt 0.12) hang on an MQTT 5 CONNECT instead of refusing
                    # it, and others on 3.1.1: try the other version at once.
                    other = (
                        aiomqtt.ProtocolVersion.V311
                        if protocol is aiomqtt.ProtocolVersion.V5
                        else aiomqtt.ProtocolVersion.V5
                    )
                    logger.warning(
                        "MQTT broker %s:%d did not answer an MQTT %s CONNECT within %g s: "
                        "trying MQTT %s",
                        self._settings.host,
                        self._settings.port,
                        _protocol_name(protocol),
                        BROKER_TIMEOUT_S,
                        _protocol_name(other),
                    )
                    protocol = other
                    if failures == 0:
                        failures = 1  # the next timeout waits as usual
                        continue
            except Exception as exc:  # the publisher must outlive any bug in itself
                reason = self._unexpected(exc)
            if self._connects > connects_before:
                settled = True
                failures = 0
                logger.warning("MQTT connected -> disconnected (%s)", reason)
            elif reason != self._last_error:
                logger.warning(
                    "MQTT cannot connect to %s:%d (%s); retrying with backoff",
                    self._settings.host,
                    self._settings.port,
                    reason,
                )
            self._last_error = reason
            delay_s = min(
                self._settings.reconnect_max_s,
                self._settings.reconnect_min_s * 2 ** min(failures, 30),
            )
            delay_s = self._rng.uniform(delay_s / 2, delay_s)
            failures += 1
            logger.debug("MQTT reconnecting in %.2f s", delay_s)
            await asyncio.sleep(delay_s)

    def _unexpected(self, exc: Exception) -> str:
        leaves = _leaves(exc)
        bugs = [leaf for leaf in leaves if not isinstance(leaf, aiomqtt.MqttError)]
        if not bugs:
            return _describe_error(leaves[0])
        logger.error("MQTT publisher: unexpected error, reconnecting", exc_info=bugs[0])
        return f"unexpected error: {_describe_error(bugs[0])}"

    def _make_client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        s = self._settings
        tls = None
        if s.tls is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(s.tls.ca_file),
                certfile=str(s.tls.cert_file) if s.tls.cert_file is not None else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file is not None else None,
            )
        # A fresh client per attempt: aiomqtt 2.5 keeps the previous CONNACK future after
        # an unexpected disconnect, so a reused client can report "connected" early.
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=protocol,
            will=aiomqtt.Will(s.availability_topic, b"offline", qos=1, retain=True),
            keepalive=s.keepalive_s,
            timeout=BROKER_TIMEOUT_S,
            tls_params=tls,
            queue_type=_incoming_queue_type(
                f"{s.command_prefix}stop", self._count_dropped, self._set_incoming, self._admit
            ),
            max_queued_incoming_messages=INCOMING_QUEUE_SIZE,
            # Small messages at a low rate: send each at once instead of waiting up to
            # 40 ms for Nagle's algorithm to fill a segment.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )

    def _admit(self, topic: str) -> bool:
        """The command intake limit (COMMANDS_PER_S), applied as a message arrives; never
        to ``cmd/stop`` nor to anything that is not a command."""
        if not topic.startswith(self._command_prefix) or topic == self._stop_topic:
            return True
        return self._intake.allow() is not None

    def _count_dropped(self) -> None:
        self._commands_dropped += 1

    def _set_incoming(self, queue: asyncio.Queue[aiomqtt.Message]) -> None:
        self._incoming = queue

    async def _connect_and_serve(self, protocol: aiomqtt.ProtocolVersion, baseline: int) -> None:
        """One connection, from connect to loss; ends only by raising."""
        self._protocol = protocol
        client = self._make_client(protocol)
        async with client:
            self._connects += 1
            try:
                _raise_if_cancel_was_swallowed(baseline)
                await self._serve(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            finally:
                self._connected = False

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run the reader and the writer until one of them fails, then stop both.

        Both tasks are owned here: cancelled and awaited before this returns. (Not a
        TaskGroup: on Python 3.11 a TaskGroup whose child fails while ``__aexit__`` waits
        leaves the parent's cancel count raised (CPython gh-116720, fixed in 3.12), which
        would make :func:`_raise_if_cancel_was_swallowed` see a cancellation that is not
        there.)
        """
        tasks = {
            asyncio.create_task(self._read_loop(client), name="mqtt-read"),
            asyncio.create_task(self._write_loop(client), name="mqtt-write"),
        }
        # Not in ``tasks``: losing the stop path does not end this connection.
        stop_path = asyncio.create_task(self._stop_path(), name="mqtt-stop-path")
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the connection
            msg = "MQTT reader or writer ended"
            raise aiomqtt.MqttError(msg)  # pragma: no cover - both loops end only by raising
        finally:
            tasks.add(stop_path)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    logger.debug("MQTT %s ended: %r", task.get_name(), task.exception())

    async def _start_session(self, client: aiomqtt.Client) -> None:
        """Subscribe, then announce: whoever sees ``online`` can be heard."""
        topics = [(f"{self._settings.command_prefix}#", 1)]
        if self._settings.discovery:
            topics.append((self._settings.ha_status_topic, 1))
        await client.subscribe(topics)
        _raise_if_cancel_was_swallowed()
        await self._announce(client)
        self._connected = True
        logger.info(
            "MQTT disconnected -> connected (%s:%d, MQTT %s, as %s)",
            self._settings.host,
            self._settings.port,
            _protocol_name(self._protocol),
            self._settings.client_id,
        )

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self._settings.availability_topic, b"online", qos=1, retain=True)
        _raise_if_cancel_was_swallowed()
        for topic, payload in self._discovery:
            await client.publish(topic, payload.encode("utf-8"), qos=1, retain=True)
            _raise_if_cancel_was_swallowed()
        self._state_sent = None  # republish the current state and diagnostics now
        self._state_sent_s = -math.inf
        self._diagnostics_sent_s = -math.inf
        self._state_polled_s = -math.inf
        self._session_dirty = self._session is not None
        self._discovery_due = False

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Best effort on shutdown: flush events and state, then ``offline``."""
        self._saying_goodbye = True  # this task is being cancelled on purpose now
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await self._flush_events(client)
                self._state_sent_s = -math.inf
                self._state_polled_s = -math.inf
                await self._maybe_publish_state(client)
                await client.publish(
                    self._settings.availability_topic, b"offline", qos=1, retain=True
                )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            logger.warning("MQTT: could not publish offline on shutdown (%s)", exc)
        finally:
            self._saying_goodbye = False

    # ------------------------------------------------------------------ the stop path

    async def _stop_path(self) -> None:
        """A second connection subscribed to ``cmd/stop`` only, for as long as the main one
        is up: a stop never waits behind other commands in the main connection's stream,
        however many arrive. Each stop then arrives twice; the first copy counts
        (:meth:`_stop_is_twin`). Broker trouble here only retries; the main connection
        still carries stops meanwhile."""
        s = self._settings
        tls = None
        if s.tls is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(s.tls.ca_file),
                certfile=str(s.tls.cert_file) if s.tls.cert_file is not None else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file is not None else None,
            )
        delay_s = s.reconnect_min_s
        while True:
            try:
                async with aiomqtt.Client(
                    s.host,
                    s.port,
                    username=s.username,
                    password=s.password,
                    identifier=f"{s.client_id}-stop",
                    protocol=self._protocol,
                    keepalive=s.keepalive_s,
                    timeout=BROKER_TIMEOUT_S,
                    tls_params=tls,
                    socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                ) as client:
                    await client.subscribe(self._stop_topic, qos=1)
                    self._stop_counts = [0, 0]
                    self._stop_path_up = True
                    delay_s = s.reconnect_min_s
                    async for message in client.messages:
                        self._handle_message(
                            message.topic.value, message.payload, retain=message.retain, path=1
                        )
            except aiomqtt.MqttError as exc:
                logger.debug("MQTT stop path: %s; retrying in %.2f s", exc, delay_s)
            finally:
                self._stop_path_up = False
                self._stop_counts = [0, 0]
            await asyncio.sleep(delay_s)
            delay_s = min(s.reconnect_max_s, delay_s * 2)

    def _stop_is_twin(self, path: int) -> bool:
        """Whether this stop (on ``path``: 0 main, 1 stop path) is the second copy of one
        already handed over. While both connections are up every stop arrives on both, in
        the same order on each: the n-th stop on one path is the twin of the n-th on the
        other. With the stop path down, every stop counts."""
        if not self._stop_path_up:
            return False
        counts = self._stop_counts
        counts[path] += 1
        return counts[1 - path] >= counts[path]

    # ------------------------------------------------------------------ incoming

    async def _read_loop(self, client: aiomqtt.Client) -> None:
        # Wait for a message, then handle what else has piled up in batches of at most
        # READ_BATCH before yielding: a flood is handled quickly (few messages dropped)
        # and still interleaved with the control loop's timer, never starving it.
        async for message in client.messages:
            self._handle(message)
            handled = 1
            queue = self._incoming
            while queue is not None and not queue.empty():
                self._handle(queue.get_nowait())
                handled += 1
                if handled % READ_BATCH == 0:
                    await asyncio.sleep(0)

    def _handle(self, message: aiomqtt.Message) -> None:
        self._handle_message(message.topic.value, message.payload, retain=message.retain)

    def _handle_message(self, topic: str, payload: object, *, retain: bool, path: int = 0) -> None:
        settings = self._settings
        if topic == self._stop_topic and not retain and self._stop_is_twin(path):
            return
        raw = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
        if topic == settings.ha_status_topic:
            if not retain and raw.strip() == b"online":
                logger.info("Home Assistant is online: republishing discovery")
                self._discovery_due = True
                self._wake.set()
            return
        if not topic.startswith(settings.command_prefix):
            logger.debug("MQTT: ignoring message on %s", excerpt(topic, 80))
            return
        name = topic[len(settings.command_prefix) :]
        self._commands_received += 1
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
            self._log_folded(
                logging.INFO, f"cmd:{type(command).__name__}", "MQTT remote command %r", command
            )
        try:
            self._on_command(command)
        except Exception:  # a failing consumer must not stop the publisher
            logger.exception("MQTT: on_command raised for %r", command)

    def _reject(self, rejected: CommandRejected) -> None:
        self._commands_rejected += 1
        self._log_folded(
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
        self.publish_event(event_payload(ts=self._clock(), event=event))

    def _publish_folded_rejections(self) -> None:
        """After a flood: one event with the count of rejections not yet reported."""
        folded = self._rejections.take_summary()
        if not folded:
            return
        event = Event(
            kind="command_rejected",
            message=f"{folded} more remote commands rejected, not reported one by one",
            details={"source": "mqtt", "command": None, "reason": "flood", "folded": folded},
        )
        self.publish_event(event_payload(ts=self._clock(), event=event))

    def _log_folded(self, level: int, key: str, fmt: str, *args: object) -> None:
        folded = self._log_folder.allow(key)
        if folded is None:
            return
        if folded:
            logger.log(level, fmt + " (and %d more like it)", *args, folded)
        else:
            logger.log(level, fmt, *args)

    # ------------------------------------------------------------------ outgoing

    async def _write_loop(self, client: aiomqtt.Client) -> None:
        await self._start_session(client)
        while True:
            self._wake.clear()
            if self._discovery_due:
                self._discovery_due = False
                await self._announce(client)
            self._publish_folded_rejections()
            await self._flush_events(client)
            session = self._session
            if self._session_dirty and session is not None:
                await self._publish_json(client, self._settings.session_topic, session, retain=True)
                if self._session is session:
                    self._session_dirty = False
            wait_s = await self._maybe_publish_state(client)
            diagnostics_wait_s = await self._maybe_publish_diagnostics(client)
            if diagnostics_wait_s is not None:
                wait_s = diagnostics_wait_s if wait_s is None else min(wait_s, diagnostics_wait_s)
            if self._wake.is_set():
                continue
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _flush_events(self, client: aiomqtt.Client) -> None:
        # Take an event off the queue only once the broker has it: a disconnect or a
        # cancellation mid-publish leaves it queued for the next attempt (QoS 1 is
        # at-least-once anyway).
        while self._events:
            payload = self._events[0]
            sent = await self._publish_json(client, self._settings.event_topic, payload)
            if self._events and self._events[0] is payload:
                self._events.popleft()
            self._events_published += sent

    async def _maybe_publish_state(self, client: aiomqtt.Client) -> float | None:
        """Publish the latest state if it is due; else return seconds until it is due
        (``None``: nothing to do until a new state arrives).

        The one throttle for the state topic: changed state fields at most ``state_rate_hz``,
        changed measurements (speeds) every ``measurement_interval_s``, changed session
        counters every ``counter_interval_s``, an unchanged state every ``state_heartbeat_s``.
        With a state source, the state is built here, at most ``state_rate_hz`` times a second.
        """
        settings = self._settings
        now_s = time.monotonic()
        poll_s = 1.0 / settings.state_rate_hz
        if self._state_source is not None:
            if now_s < self._state_polled_s + poll_s:
                return self._state_polled_s + poll_s - now_s
            self._state_polled_s = now_s
            self._state = self._state_source()
            self._state_fresh = True
        state = self._state
        if state is None:
            return None
        parts = _split_state(state)
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
        if not due and self._state_fresh:
            due.append(self._state_sent_s + settings.state_heartbeat_s)
        if not due:
            return poll_s if self._state_source is not None else None
        due_s = min(due)
        if now_s < due_s:
            wait_s = due_s - now_s
            return min(wait_s, poll_s) if self._state_source is not None else wait_s
        self._state_sent = parts
        self._state_sent_s = now_s
        self._measurements_sent_s = now_s
        self._counters_sent_s = now_s
        self._state_fresh = self._state_source is not None
        published = await self._publish_json(
            client, settings.state_topic, state, qos=0, retain=True, what="state"
        )
        self._state_published += published
        return poll_s if self._state_source is not None else None

    async def _maybe_publish_diagnostics(self, client: aiomqtt.Client) -> float | None:
        """Publish the diagnostics every ``diagnostics_interval_s`` (and after each connect);
        else the seconds until they are due (``None``: no diagnostics source)."""
        source = self._diagnostics_source
        if source is None:
            return None
        now_s = time.monotonic()
        due_s = self._diagnostics_sent_s + self._settings.diagnostics_interval_s
        if now_s < due_s:
            return due_s - now_s
        self._diagnostics_sent_s = now_s
        published = await self._publish_json(
            client,
            self._settings.diagnostics_topic,
            source(),
            qos=0,
            retain=True,
            what="diagnostics",
        )
        self._diagnostics_published += published
        return self._settings.diagnostics_interval_s

    async def _publish_json(
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
            self._log_folded(
                logging.ERROR,
                f"encode:{topic}",
                "MQTT: %s for %s is not JSON, dropped (%s)",
                what,
                topic,
                exc,
            )
            return False
        await client.publish(topic, data, qos=qos, retain=retain)
        if not self._saying_goodbye:
            _raise_if_cancel_was_swallowed()
        return True

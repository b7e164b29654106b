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

The parts, by concern: this module owns the connections and their tasks (connect, serve,
reconnect, the stop path, shutdown); :mod:`~controller.adapters.mqtt.connection` builds the
clients and names the broker's failure modes; :mod:`~controller.adapters.mqtt.intake` turns
received messages into commands under the flood limits; :mod:`~controller.adapters.mqtt.outbox`
holds what waits to go out and publishes it at its rates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from controller.adapters.mqtt.commands import ParsedCommand
from controller.adapters.mqtt.connection import (
    BROKER_TIMEOUT_S,
    GOODBYE_TIMEOUT_S,
    describe_error,
    leaves,
    main_client,
    protocol_name,
    raise_if_cancel_was_swallowed,
    refuses_v5,
    stop_path_client,
    timed_out,
)
from controller.adapters.mqtt.discovery import discovery_messages
from controller.adapters.mqtt.intake import (
    INCOMING_QUEUE_SIZE,
    LOG_INTERVAL_S,
    READ_BATCH,
    CommandIntake,
    LogFolder,
    incoming_queue_type,
)
from controller.adapters.mqtt.outbox import Outbox
from controller.adapters.mqtt.settings import MqttSettings
from controller.errors import CredentialsError

__all__ = ["CredentialsError", "MqttPublisher", "MqttSettings", "MqttStats"]

logger = logging.getLogger(__name__)


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

    :attr:`intake` (received messages to commands, flood limits) and :attr:`outbox` (what
    waits to go out) are its two halves; this class owns the connections.
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
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 -- backoff jitter, not crypto
        self._wake = asyncio.Event()
        log_folder = LogFolder(LOG_INTERVAL_S, time.monotonic, logger)
        self.outbox = Outbox(settings, log_folder)
        self.intake = CommandIntake(
            settings,
            on_command=on_command,
            publish_event=self.publish_event,
            on_ha_online=self._discovery_wanted,
            clock=clock,
            log_folder=log_folder,
        )
        self._discovery = discovery_messages(settings) if settings.discovery else []
        self._discovery_due = False
        self._incoming: asyncio.Queue[aiomqtt.Message] | None = None
        self._protocol = aiomqtt.ProtocolVersion.V5
        self._connected = False
        self._connects = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ control-loop API

    def publish_state(self, payload: dict[str, object]) -> None:
        """Hand over the latest state (keeps only the latest). Never blocks.

        Published retained at most ``state_rate_hz`` and only when something other than
        ``ts`` changed; an unchanged state is re-sent every ``state_heartbeat_s``.
        """
        self.outbox.state = payload
        self.outbox.state_fresh = True
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
        self.outbox.state_source = state
        self.outbox.diagnostics_source = diagnostics
        if state is not None:
            self.outbox.state_fresh = True
        self._wake.set()

    def nudge(self) -> None:
        """Something changed: look at the state now rather than at the next poll."""
        self._wake.set()

    def publish_event(self, payload: dict[str, object]) -> None:
        """Queue an event (QoS 1, not retained). Never blocks.

        When ``event_queue_size`` events are waiting, the oldest is dropped and counted
        in ``events_dropped``. Events queued while disconnected go out after reconnecting.
        """
        self.outbox.put_event(payload)
        self._wake.set()

    def publish_session(self, payload: dict[str, object]) -> None:
        """Hand over the training session (QoS 1, retained, latest only). Never blocks."""
        self.outbox.session = payload
        self.outbox.session_dirty = True
        self._wake.set()

    @property
    def stats(self) -> MqttStats:
        outbox, intake = self.outbox, self.intake
        return MqttStats(
            connected=self._connected,
            connects=self._connects,
            state_published=outbox.state_published,
            events_published=outbox.events_published,
            events_dropped=outbox.events_dropped,
            commands_received=intake.received,
            commands_rejected=intake.rejected,
            last_error=self._last_error,
            commands_dropped=intake.dropped,
            rejections_folded=intake.rejections_folded,
            stop_path_connected=intake.stop_path_up,
        )

    def _discovery_wanted(self) -> None:
        """Home Assistant announced itself: discovery, availability and state again."""
        self._discovery_due = True
        self._wake.set()

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
                if not settled and protocol is aiomqtt.ProtocolVersion.V5 and refuses_v5(exc):
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
                reason = describe_error(exc)
                if not settled and self._connects == connects_before and timed_out(exc):
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
                        protocol_name(protocol),
                        BROKER_TIMEOUT_S,
                        protocol_name(other),
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
        found = leaves(exc)
        bugs = [leaf for leaf in found if not isinstance(leaf, aiomqtt.MqttError)]
        if not bugs:
            return describe_error(found[0])
        logger.error("MQTT publisher: unexpected error, reconnecting", exc_info=bugs[0])
        return f"unexpected error: {describe_error(bugs[0])}"

    def _set_incoming(self, queue: asyncio.Queue[aiomqtt.Message]) -> None:
        self._incoming = queue

    async def _connect_and_serve(self, protocol: aiomqtt.ProtocolVersion, baseline: int) -> None:
        """One connection, from connect to loss; ends only by raising."""
        self._protocol = protocol
        intake = self.intake
        client = main_client(
            self._settings,
            protocol,
            queue_type=incoming_queue_type(
                intake.stop_topic, intake.count_dropped, self._set_incoming, intake.admit
            ),
            max_queued=INCOMING_QUEUE_SIZE,
        )
        async with client:
            self._connects += 1
            try:
                raise_if_cancel_was_swallowed(baseline)
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
        would make :func:`raise_if_cancel_was_swallowed` see a cancellation that is not
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
        raise_if_cancel_was_swallowed()
        await self._announce(client)
        self._connected = True
        logger.info(
            "MQTT disconnected -> connected (%s:%d, MQTT %s, as %s)",
            self._settings.host,
            self._settings.port,
            protocol_name(self._protocol),
            self._settings.client_id,
        )

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self._settings.availability_topic, b"online", qos=1, retain=True)
        raise_if_cancel_was_swallowed()
        for topic, payload in self._discovery:
            await client.publish(topic, payload.encode("utf-8"), qos=1, retain=True)
            raise_if_cancel_was_swallowed()
        self.outbox.after_connect()  # the current state, diagnostics and session again now
        self._discovery_due = False

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Best effort on shutdown: flush events and state, then ``offline``."""
        outbox = self.outbox
        outbox.saying_goodbye = True  # this task is being cancelled on purpose now
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await outbox.flush_events(client)
                outbox.state_due_now()
                await outbox.maybe_publish_state(client)
                await client.publish(
                    self._settings.availability_topic, b"offline", qos=1, retain=True
                )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            logger.warning("MQTT: could not publish offline on shutdown (%s)", exc)
        finally:
            outbox.saying_goodbye = False

    # ------------------------------------------------------------------ the stop path

    async def _stop_path(self) -> None:
        """A second connection subscribed to ``cmd/stop`` only, for as long as the main one
        is up: a stop never waits behind other commands in the main connection's stream,
        however many arrive. Each stop then arrives twice; the first copy counts
        (:meth:`CommandIntake.stop_is_twin`). Broker trouble here only retries; the main
        connection still carries stops meanwhile."""
        s = self._settings
        intake = self.intake
        delay_s = s.reconnect_min_s
        while True:
            try:
                async with stop_path_client(s, self._protocol) as client:
                    await client.subscribe(intake.stop_topic, qos=1)
                    intake.set_stop_path(up=True)
                    delay_s = s.reconnect_min_s
                    async for message in client.messages:
                        intake.handle(
                            message.topic.value, message.payload, retain=message.retain, path=1
                        )
            except aiomqtt.MqttError as exc:
                logger.debug("MQTT stop path: %s; retrying in %.2f s", exc, delay_s)
            finally:
                intake.set_stop_path(up=False)
            await asyncio.sleep(delay_s)
            delay_s = min(s.reconnect_max_s, delay_s * 2)

    # ------------------------------------------------------------------ incoming

    async def _read_loop(self, client: aiomqtt.Client) -> None:
        # Wait for a message, then handle what else has piled up in batches of at most
        # READ_BATCH before yielding: a flood is handled quickly (few messages dropped)
        # and still interleaved with the control loop's timer, never starving it.
        handle = self.intake.handle
        async for message in client.messages:
            handle(message.topic.value, message.payload, retain=message.retain)
            handled = 1
            queue = self._incoming
            while queue is not None and not queue.empty():
                queued = queue.get_nowait()
                handle(queued.topic.value, queued.payload, retain=queued.retain)
                handled += 1
                if handled % READ_BATCH == 0:
                    await asyncio.sleep(0)

    # ------------------------------------------------------------------ outgoing

    async def _write_loop(self, client: aiomqtt.Client) -> None:
        await self._start_session(client)
        outbox = self.outbox
        while True:
            self._wake.clear()
            if self._discovery_due:
                self._discovery_due = False
                await self._announce(client)
            self.intake.publish_folded_rejections()
            await outbox.flush_events(client)
            await outbox.publish_session(client)
            wait_s = await outbox.maybe_publish_state(client)
            diagnostics_wait_s = await outbox.maybe_publish_diagnostics(client)
            if diagnostics_wait_s is not None:
                wait_s = diagnostics_wait_s if wait_s is None else min(wait_s, diagnostics_wait_s)
            if self._wake.is_set():
                continue
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

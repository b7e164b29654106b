"""Helpers for tests that talk to a real broker: observers, a publisher runner, a ticker.

Nothing here sleeps for correctness: :func:`wait_until` polls a condition with a
timeout, and :class:`Ticker` only measures how late a 50 Hz loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import aiomqtt
import pytest

from controller.adapters.mqtt.commands import ParsedCommand
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings
from tests.broker import MosquittoBroker

_observer_ids = itertools.count(1)


async def wait_until(
    predicate: Callable[[], bool], *, what: str, timeout_s: float = 5.0, poll_s: float = 0.005
) -> float:
    """Poll ``predicate`` until true; return the seconds it took. Fails naming ``what``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout_s:
            msg = f"timed out after {timeout_s} s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(poll_s)
    return loop.time() - start


class BrokerAccess(Protocol):
    """What make_settings() needs from a broker (MosquittoBroker has it)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def credentials(self, name: str) -> tuple[str, str]: ...


def make_settings(
    broker: BrokerAccess, treadmill_id: str, *, user: str | None = "controller", **overrides: Any
) -> MqttSettings:
    """Settings for a publisher on ``broker`` as ``user``; fast reconnects for tests."""
    username, password = broker.credentials(user) if user is not None else (None, None)
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "treadmill_id": treadmill_id,
        "client_id": f"controller-{treadmill_id}",
        "keepalive_s": 5,
        "username": username,
        "password": password,
        "device_name": f"Treadmill {treadmill_id}",
        "sw_version": "0.1.0-test",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.4,
        "max_stage": 4,
        "max_speed_kmh": 8.0,
    }
    values.update(overrides)
    return MqttSettings(**values)


@dataclass
class CommandLog:
    """Collects what ``on_command`` receives."""

    commands: list[ParsedCommand] = field(default_factory=list)

    def __call__(self, command: ParsedCommand) -> None:
        self.commands.append(command)

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [c for c in self.commands if isinstance(c, kind)]


async def broker_has_handled_all(publisher: MqttPublisher) -> None:
    """Return once the broker has handled everything ``publisher`` sent so far.

    The state goes out at QoS 0, so ``state_published`` counts it written, not handled: a
    client subscribing right then may get it live (not retained). A QoS 1 marker event is
    acknowledged only after the broker has handled every packet before it on the same
    connection.
    """
    marked = publisher.stats.events_published + 1
    publisher.publish_event({"kind": "marker", "message": "the broker has all before this"})
    await wait_until(lambda: publisher.stats.events_published >= marked, what="the marker event")


@dataclass(frozen=True)
class Sent:
    """A payload as the publisher handed it to its MQTT client."""

    topic: str
    payload: Any
    at_s: float  # monotonic clock (the publisher's, and the event loop's) when it went out


def record_sends(publisher: MqttPublisher, monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Record every JSON payload ``publisher`` sends, with the time it sent it.

    The rates and intervals of the state throttle are the publisher's: measured where a
    subscriber receives them they also carry the broker's delivery jitter (a broker
    descheduled for 0.1 s on a busy machine delivers two states 0.1 s apart that were sent
    0.2 s apart). A subscriber still checks what arrives; the clock is read here.
    """
    sends: list[Sent] = []
    publish_json = publisher.outbox.publish_json

    async def spy(client: aiomqtt.Client, topic: str, payload: Any, **kwargs: Any) -> bool:
        sends.append(Sent(topic, payload, time.monotonic()))
        return await publish_json(client, topic, payload, **kwargs)

    monkeypatch.setattr(publisher.outbox, "publish_json", spy)
    return sends


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``publisher.run()`` for the duration of the block, then cancel it cleanly."""
    task = asyncio.create_task(publisher.run(), name="mqtt-publisher")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at_s: float  # loop time when it arrived

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


class Observer:
    """An MQTT client logged in as one of the broker's users, recording what it receives.

    ``async with Observer(broker, "homeassistant", ["homeassistant/#"]) as obs:``
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        user: str,
        topics: Iterable[str] = (),
        *,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
    ) -> None:
        username, password = broker.credentials(user)
        self.messages: list[Received] = []
        self._topics = list(topics)
        self._client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=username,
            password=password,
            identifier=f"observer-{user}-{next(_observer_ids)}",
            protocol=protocol,
            timeout=5,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        for topic in self._topics:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read(), name="observer-read")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self._client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.messages.append(
                    Received(message.topic.value, payload, bool(message.retain), loop.time())
                )

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        await self._client.publish(topic, payload, qos=qos, retain=retain)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def next_on(
        self,
        topic: str,
        predicate: Callable[[Received], bool] = lambda _m: True,
        *,
        after: int = 0,
        timeout_s: float = 5.0,
    ) -> Received:
        """The first message on ``topic`` (from index ``after`` on) matching ``predicate``."""
        found: list[Received] = []

        def match() -> bool:
            found[:] = [m for m in self.messages[after:] if m.topic == topic and predicate(m)][:1]
            return bool(found)

        await wait_until(match, what=f"a matching message on {topic}", timeout_s=timeout_s)
        return found[0]


@dataclass
class Ticker:
    """A stand-in for the control loop: wakes at absolute 50 Hz deadlines and records how
    late each wake-up was (deadline = t0 + k * period; missed ticks are skipped).

    ``lateness_s`` is the raw wall-clock lateness. ``own_lateness_s`` bounds the part of
    it this thread could have caused: ``min(lateness, CPU time the thread used since the
    previous wake-up)``. Time the thread spent off the CPU (another process running on
    a busy machine) cannot be blocking by this event loop, so it does not count there.
    """

    period_s: float = 0.02
    lateness_s: list[float] = field(default_factory=list)
    own_lateness_s: list[float] = field(default_factory=list)
    overruns: int = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        cpu_s = time.thread_time()
        tick = 0
        while True:
            tick += 1
            deadline = start + tick * self.period_s
            future: asyncio.Future[None] = loop.create_future()
            handle = loop.call_at(deadline, future.set_result, None)
            try:
                await future
            finally:
                handle.cancel()
            late = loop.time() - deadline
            cpu_now_s = time.thread_time()
            self.lateness_s.append(late)
            self.own_lateness_s.append(min(late, cpu_now_s - cpu_s))
            cpu_s = cpu_now_s
            if late > self.period_s:
                self.overruns += 1
                tick += int(late // self.period_s)

    def reset(self) -> None:
        self.lateness_s.clear()
        self.own_lateness_s.clear()
        self.overruns = 0

    def percentile_ms(self, pct: float, *, own: bool = False) -> float:
        ordered = sorted(self.own_lateness_s if own else self.lateness_s)
        index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def summary(self) -> str:
        return (
            f"{len(self.lateness_s)} ticks, lateness p50 {self.percentile_ms(50):.2f} ms, "
            f"p99 {self.percentile_ms(99):.2f} ms, max {max(self.lateness_s) * 1000:.2f} ms, "
            f"mean {statistics.fmean(self.lateness_s) * 1000:.2f} ms, overruns {self.overruns}; "
            f"on-CPU part p99 {self.percentile_ms(99, own=True):.2f} ms, "
            f"max {max(self.own_lateness_s) * 1000:.2f} ms"
        )


class GcPauses:
    """Records the longest garbage-collection pause while the block runs."""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self.longest_generation: int | None = None
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._started) * 1000
        if pause_ms > self.longest_ms:
            self.longest_ms = pause_ms
            self.longest_generation = info["generation"]

    async def __aenter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    async def __aexit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


@contextlib.asynccontextmanager
async def ticking(ticker: Ticker) -> AsyncIterator[Ticker]:
    task = asyncio.create_task(ticker.run(), name="ticker")
    try:
        yield ticker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Mqtt311OnlyProxy:
    """A TCP proxy in front of a real broker that behaves like an MQTT 3.1.1-only broker
    (mosquitto 1.x): an MQTT 5 CONNECT gets CONNACK "unacceptable protocol version"
    (``20 02 00 01``) and the connection is closed; anything else is passed through."""

    target_host: str
    target_port: int
    host: str = "127.0.0.1"
    port: int = 0
    refused_v5: int = 0
    passed: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(1)
            length, multiplier, raw_length = 0, 1, b""
            while True:
                byte = await reader.readexactly(1)
                raw_length += byte
                length += (byte[0] & 0x7F) * multiplier
                multiplier *= 128
                if not byte[0] & 0x80:
                    break
            body = await reader.readexactly(length)
            if first[0] >> 4 == 1 and body[6] == 5:  # CONNECT, protocol level 5
                self.refused_v5 += 1
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            self.passed += 1
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            up_writer.write(first + raw_length + body)
            pipes = [
                asyncio.create_task(_pipe(reader, up_writer)),
                asyncio.create_task(_pipe(up_reader, writer)),
            ]
            self._tasks.update(pipes)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for task in pipes:
                task.cancel()
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

"""The publisher when things go wrong: a dead controller, a dead broker, a command flood.

Timing figures (how fast the will fires, how late a 50 Hz loop runs meanwhile) are
printed in the "MQTT measured figures" section at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.adapters.mqtt.commands import CommandRejected, ParsedCommand
from controller.adapters.mqtt.discovery import discovery_messages
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings
from controller.rules.model import RemoteLowerTarget, RemoteStop
from controller.settings.bounds import MQTT_BOUNDS
from tests.broker import MosquittoBroker
from tests.mqtt.helpers import (
    CommandLog,
    GcPauses,
    Mqtt311OnlyProxy,
    Observer,
    Ticker,
    broker_has_handled_all,
    make_settings,
    running,
    ticking,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
P99_BUDGET_MS = 20.0
"""Budget for the 99th percentile of the 50 Hz loop's lateness that this process could
have caused (see Ticker.own_lateness_s: time preempted by other processes on a busy
2-core machine is not counted). Raw lateness is reported in the figures."""


@contextlib.asynccontextmanager
async def child_publisher(settings: MqttSettings) -> AsyncIterator[asyncio.subprocess.Process]:
    """A publisher in its own process; yields once it says it is connected."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.mqtt.publisher_child",
        json.dumps(dataclasses.asdict(settings)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        assert line == b"connected\n", line
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_killed_controller_reads_offline_at_once(
    mosquitto: MosquittoBroker, treadmill_id: str, figures: list[str]
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    loop = asyncio.get_running_loop()
    async with (
        Observer(mosquitto, "dashboard", [settings.availability_topic]) as obs,
        child_publisher(settings) as process,
    ):
        await obs.next_on(settings.availability_topic, lambda m: m.text == "online")
        killed_at = loop.time()
        process.send_signal(signal.SIGKILL)
        offline = await obs.next_on(
            settings.availability_topic, lambda m: m.text == "offline", timeout_s=5
        )
    latency_s = offline.at_s - killed_at
    figures.append(
        f"controller SIGKILLed -> availability 'offline' after {latency_s * 1000:.1f} ms"
    )
    assert latency_s < 1.0  # the kernel closes the socket; the broker sends the will at once


#: mosquitto 2.0.11 (Debian 12, src/keepalive.c) judges keepalives in whole seconds of its
#: monotonic clock: it drops a client at the first check where ``now_s - last_msg_in`` exceeds
#: ``keepalive * 3 / 2`` (integer division: 7 s for 5 s), and it checks only when
#: ``last_check + 5 < now_s``, i.e. every 6 s, from a loop that wakes at least every 100 ms.
#: Later versions check every second: the will comes sooner.
KEEPALIVE_CHECK_EVERY_S = 6
BROKER_LOOP_WAKE_S = 0.1
#: The will's way to the observer and the observer's own clock reading on a loaded host.
WILL_DELIVERY_ALLOWANCE_S = 0.5


def latest_will_s(keepalive_s: int) -> float:
    """The latest the will can come after a frozen client's last packet. A packet just after
    second R is too old from second R + keepalive*3//2 + 1 on, and the first check at or
    after that can come one check period minus one second later: for 5 s, R + 8 .. R + 13,
    plus the broker's loop wake: 13.1 s (the old bound took 1.5 x 5 s + 5 s = 12.5 s)."""
    too_old_s = keepalive_s * 3 // 2 + 1
    return (
        too_old_s + (KEEPALIVE_CHECK_EVERY_S - 1) + BROKER_LOOP_WAKE_S + WILL_DELIVERY_ALLOWANCE_S
    )


def test_the_frozen_controller_window_covers_the_slowest_keepalive_check() -> None:
    """A client frozen just after a packet, in the worst phase of mosquitto 2.0.11's check,
    gave its will 13.02 s after the freeze (twice); the old bound, 13.0 s, failed that."""
    assert latest_will_s(5) == pytest.approx(8 + 5 + 0.1 + WILL_DELIVERY_ALLOWANCE_S)
    assert latest_will_s(5) - WILL_DELIVERY_ALLOWANCE_S > 13.02
    assert latest_will_s(30) == pytest.approx(46 + 5 + 0.1 + WILL_DELIVERY_ALLOWANCE_S)


async def test_frozen_controller_reads_offline_after_the_keepalive(
    mosquitto: MosquittoBroker, treadmill_id: str, figures: list[str]
) -> None:
    keepalive_s = MQTT_BOUNDS["keepalive_s"].low  # the shortest the config accepts: 5 s
    settings = make_settings(mosquitto, treadmill_id, keepalive_s=int(keepalive_s))
    loop = asyncio.get_running_loop()
    async with (
        Observer(mosquitto, "dashboard", [settings.availability_topic]) as obs,
        child_publisher(settings) as process,
    ):
        await obs.next_on(settings.availability_topic, lambda m: m.text == "online")
        frozen_at = loop.time()
        process.send_signal(signal.SIGSTOP)  # socket open, nothing sent: like a hung Pi
        try:
            offline = await obs.next_on(
                settings.availability_topic, lambda m: m.text == "offline", timeout_s=20
            )
        finally:
            process.send_signal(signal.SIGCONT)
    latency_s = offline.at_s - frozen_at
    figures.append(
        f"controller frozen (SIGSTOP), keepalive {settings.keepalive_s} s -> 'offline' after "
        f"{latency_s:.2f} s"
    )
    assert settings.keepalive_s <= latency_s <= latest_will_s(settings.keepalive_s), figures[-1]


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_restart_reconnects_republishes_and_the_loop_keeps_time(
    fresh_broker: MosquittoBroker, treadmill_id: str, figures: list[str], how: str
) -> None:
    broker = fresh_broker
    settings = make_settings(broker, treadmill_id)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    publisher.publish_state({"ts": "2025-01-01T00:00:00.000Z", "state": "idle", "n": 1})
    publisher.publish_session({"session_id": 3, "elapsed_s": 0})
    ticker = Ticker()
    loop = asyncio.get_running_loop()
    async with ticking(ticker), running(publisher) as task:
        await wait_until(lambda: publisher.stats.state_published == 1, what="first state")
        await asyncio.to_thread(broker.stop if how == "stop" else broker.kill)
        await wait_until(lambda: not publisher.stats.connected, what="the disconnection")
        # The control loop carries on handing over data while the broker is gone.
        publisher.publish_state({"ts": "2025-01-01T00:00:01.000Z", "state": "running", "n": 2})
        publisher.publish_event({"kind": "while_down", "message": "queued"})
        await wait_until(
            lambda: publisher.stats.last_error is not None, what="a failed reconnect attempt"
        )
        down_ticks = len(ticker.lateness_s)
        await wait_until(  # a second of failing reconnect attempts under the ticker
            lambda: len(ticker.lateness_s) >= down_ticks + 50, what="a second of ticks"
        )
        started_at = loop.time()
        await asyncio.to_thread(broker.start)  # same port, nothing retained
        await wait_until(lambda: publisher.stats.connects == 2, what="reconnect", timeout_s=10)
        await wait_until(lambda: publisher.stats.connected, what="online again")
        reconnect_s = loop.time() - started_at
        await wait_until(lambda: publisher.stats.events_published == 1, what="queued event")
        await wait_until(lambda: publisher.stats.state_published >= 2, what="state republished")
        await broker_has_handled_all(publisher)  # so the late dashboard finds it retained
        topics = [f"treadmill/{treadmill_id}/#", f"homeassistant/+/treadmill_{treadmill_id}/#"]
        async with Observer(broker, "homeassistant", topics) as late:
            discovery = dict(discovery_messages(settings))
            await wait_until(
                lambda: {m.topic for m in late.messages} >= set(discovery),
                what="discovery republished",
            )
            availability = await late.next_on(settings.availability_topic)
            state = await late.next_on(settings.state_topic)
            session = await late.next_on(settings.session_topic)
        assert not task.done()
    assert (availability.text, availability.retain) == ("online", True)
    assert state.json()["n"] == 2  # the latest state, not the one from before the outage
    assert state.retain
    assert session.json() == {"session_id": 3, "elapsed_s": 0}
    figures.append(
        f"broker {how} + restart: reconnected {reconnect_s * 1000:.0f} ms after the broker came "
        f"back (backoff 0.05-0.4 s); 50 Hz loop meanwhile: {ticker.summary()}"
    )
    assert ticker.percentile_ms(99, own=True) < P99_BUDGET_MS, ticker.summary()


async def test_command_flood_does_not_starve_the_loop(
    mosquitto: MosquittoBroker, treadmill_id: str, figures: list[str]
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    # Like the service: count and keep only what is needed (no list of 40 000 commands).
    counts: Counter[str] = Counter()
    accepted: set[ParsedCommand] = set()

    def on_command(command: ParsedCommand) -> None:
        counts[type(command).__name__] += 1
        if not isinstance(command, CommandRejected):
            accepted.add(command)

    publisher = MqttPublisher(settings, on_command=on_command)
    username, password = mosquitto.credentials("trainer")
    payloads = ["1.0", "fast", "NaN", '{"speed_kmh": 2}', "[1]", "99", '"x"', "true"]
    floods = {
        "target_kmh": [payloads[i % len(payloads)] for i in range(16000)],
        "launch": [f"junk {i}" for i in range(4000)],
    }
    total = sum(len(lines) for lines in floods.values())
    ticker = Ticker()
    loop = asyncio.get_running_loop()
    async with (
        Observer(mosquitto, "trainer") as trainer,
        running(publisher),
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        # Freeze what the test session has accumulated (hypothesis, other tests) so that
        # a full collection costs what it would in the service, not in this process.
        gc.collect()
        gc.freeze()
        async with ticking(ticker), GcPauses() as gc_pauses:
            ticker.reset()
            started_at = loop.time()
            for name, lines in floods.items():  # one flooding client at a time
                process = await asyncio.create_subprocess_exec(
                    "mosquitto_pub",
                    *("-h", mosquitto.host, "-p", str(mosquitto.port)),
                    *("-u", username, "-P", password, "-q", "0", "-l"),
                    *("-t", f"{settings.command_prefix}{name}"),
                    stdin=asyncio.subprocess.PIPE,
                )
                await process.communicate(("\n".join(lines) + "\n").encode())
                assert process.returncode == 0
            await trainer.publish(f"{settings.command_prefix}stop", "PRESS")
            await wait_until(lambda: counts["RemoteStop"] == 1, what="the stop", timeout_s=30)
            # QoS 0 from other connections may still trail the stop through the broker.
            await wait_until(
                lambda: (
                    publisher.stats.commands_received + publisher.stats.commands_dropped
                    == total + 1
                ),
                what="every command handled or counted as dropped",
                timeout_s=30,
            )
            flood_s = loop.time() - started_at
    gc.unfreeze()
    stats = publisher.stats
    figures.append(
        f"flood of {total} commands (QoS 0, 2 clients in turn) handled in {flood_s:.2f} s "
        f"({stats.commands_received / flood_s:.0f} commands/s, {stats.commands_dropped} dropped "
        f"on arrival (intake limit) or by the incoming queue, {stats.rejections_folded} "
        f"rejection events folded, {stats.events_dropped} events dropped); "
        f"50 Hz loop meanwhile: {ticker.summary()}; longest garbage collection meanwhile "
        f"{gc_pauses.longest_ms:.1f} ms (generation {gc_pauses.longest_generation})"
    )
    # The stop got through; the queue never drops a stop.
    assert counts["RemoteStop"] == 1
    assert counts.total() == stats.commands_received
    assert accepted == {RemoteStop(), RemoteLowerTarget(1.0), RemoteLowerTarget(2.0)}
    assert counts["CommandRejected"] == stats.commands_rejected
    assert ticker.percentile_ms(99, own=True) < P99_BUDGET_MS, ticker.summary()


async def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(
    mosquitto: MosquittoBroker, treadmill_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="controller.adapters.mqtt.publisher")
    log = CommandLog()
    async with (
        Mqtt311OnlyProxy(mosquitto.host, mosquitto.port) as proxy,
        Observer(mosquitto, "dashboard") as dashboard,
    ):
        settings = make_settings(mosquitto, treadmill_id, port=proxy.port)
        publisher = MqttPublisher(settings, on_command=log)
        async with running(publisher):
            await wait_until(lambda: publisher.stats.connected, what="connected")
            await wait_until(lambda: publisher.stats.stop_path_connected, what="stop path")
            await dashboard.publish(f"{settings.command_prefix}stop", "PRESS")
            await wait_until(lambda: log.commands == [RemoteStop()], what="a stop over 3.1.1")
    # The main connection and the stop path, both in 3.1.1 after the one refusal.
    assert (proxy.refused_v5, proxy.passed) == (1, 2)
    assert "refused MQTT 5" in caplog.text
    assert "MQTT 3.1.1, as controller-" in caplog.text
    assert publisher.stats.connects == 1

"""The publisher when things go wrong: a dead controller, a dead broker, a command flood.

Timing figures (how fast the will fires, how late a 50 Hz loop runs meanwhile) are
printed in the "MQTT measured figures" section at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.commands import CommandRejected
from controller.discovery import discovery_messages
from controller.model import RemoteLowerTarget, RemoteStop
from controller.mqtt import MqttPublisher, MqttSettings
from tests.broker import MosquittoBroker, free_port
from tests.mqtt.helpers import (
    CommandLog,
    Observer,
    Ticker,
    make_settings,
    running,
    ticking,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
P99_BUDGET_MS = 20.0  # generous: the 2-core test machine is shared with other work


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
    settings = make_settings(mosquitto, treadmill_id, keepalive_s=1)
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


async def test_frozen_controller_reads_offline_after_the_keepalive(
    mosquitto: MosquittoBroker, treadmill_id: str, figures: list[str]
) -> None:
    settings = make_settings(mosquitto, treadmill_id, keepalive_s=1)
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
                settings.availability_topic, lambda m: m.text == "offline", timeout_s=6
            )
        finally:
            process.send_signal(signal.SIGCONT)
    latency_s = offline.at_s - frozen_at
    figures.append(
        f"controller frozen (SIGSTOP), keepalive 1 s -> 'offline' after {latency_s:.2f} s"
    )
    assert 1.0 <= latency_s <= 3.5  # mosquitto allows 1.5 x keepalive


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
        started_at = loop.time()
        await asyncio.to_thread(broker.start)  # same port, nothing retained
        await wait_until(lambda: publisher.stats.connects == 2, what="reconnect", timeout_s=10)
        await wait_until(lambda: publisher.stats.connected, what="online again")
        reconnect_s = loop.time() - started_at
        await wait_until(lambda: publisher.stats.events_published == 1, what="queued event")
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
    assert ticker.percentile_ms(99) < P99_BUDGET_MS, ticker.summary()


async def test_command_flood_does_not_starve_the_loop(
    mosquitto: MosquittoBroker, treadmill_id: str, figures: list[str]
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    username, password = mosquitto.credentials("trainer")
    payloads = ["1.0", "fast", "NaN", '{"speed_kmh": 2}', "[1]", "99", '"x"', "true"]
    floods = {
        "target_kmh": [payloads[i % len(payloads)] for i in range(4000)],
        "launch": [f"junk {i}" for i in range(1000)],
    }
    total = sum(len(lines) for lines in floods.values())
    ticker = Ticker()
    loop = asyncio.get_running_loop()
    async with (
        Observer(mosquitto, "trainer") as trainer,
        running(publisher),
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        async with ticking(ticker):
            ticker.lateness_s.clear()
            started_at = loop.time()
            processes = []
            for name, lines in floods.items():
                process = await asyncio.create_subprocess_exec(
                    "mosquitto_pub",
                    *("-h", mosquitto.host, "-p", str(mosquitto.port)),
                    *("-u", username, "-P", password, "-q", "0", "-l"),
                    *("-t", f"{settings.command_prefix}{name}"),
                    stdin=asyncio.subprocess.PIPE,
                )
                assert process.stdin is not None
                process.stdin.write(("\n".join(lines) + "\n").encode())
                process.stdin.close()
                processes.append(process)
            codes = [await asyncio.wait_for(p.wait(), timeout=30) for p in processes]
            assert codes == [0, 0]
            await trainer.publish(f"{settings.command_prefix}stop", "PRESS")
            await wait_until(lambda: RemoteStop() in log.commands, what="the stop", timeout_s=30)
            flood_s = loop.time() - started_at
    stats = publisher.stats
    figures.append(
        f"flood of {total} commands (QoS 0, 2 publishers) handled in {flood_s:.2f} s "
        f"({stats.commands_received / flood_s:.0f} commands/s, {stats.commands_dropped} dropped "
        f"by the incoming queue, {stats.events_dropped} rejection events dropped); "
        f"50 Hz loop meanwhile: {ticker.summary()}"
    )
    # Everything was either handled or counted as dropped, and the stop got through.
    assert stats.commands_received + stats.commands_dropped == total + 1
    assert log.commands[-1] == RemoteStop()
    assert len(log.commands) == stats.commands_received
    accepted = log.of_type(RemoteLowerTarget)
    assert all(
        command == RemoteLowerTarget(1.0) or command == RemoteLowerTarget(2.0)
        for command in accepted
    )
    assert len(log.of_type(CommandRejected)) == stats.commands_rejected
    assert ticker.percentile_ms(99) < P99_BUDGET_MS, ticker.summary()


AMQTT_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


async def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(
    tmp_path: Path, treadmill_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # amqtt speaks only MQTT 3.1.1 and refuses an MQTT 5 CONNECT.
    port = free_port()
    config = tmp_path / "amqtt.yaml"
    config.write_text(AMQTT_CONFIG.format(port=port), encoding="utf-8")
    amqtt = Path(sys.executable).parent / "amqtt"
    assert amqtt.exists(), "amqtt is a dev dependency (pip install -e '.[demo]')"
    process = await asyncio.create_subprocess_exec(
        str(amqtt),
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def accepts() -> bool:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        for _attempt in range(300):
            if await accepts():
                break
            await asyncio.sleep(0.05)  # polling for the port; not a correctness sleep
        else:
            pytest.fail("amqtt did not open its port within 15 s")
        settings = MqttSettings(
            host="127.0.0.1",
            port=port,
            treadmill_id=treadmill_id,
            device_name="t",
            sw_version="t",
            max_stage=4,
            max_speed_kmh=8.0,
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
        publisher = MqttPublisher(settings, on_command=CommandLog())
        caplog.set_level("INFO", logger="controller.mqtt")
        async with running(publisher):
            await wait_until(lambda: publisher.stats.connected, what="connected", timeout_s=15)
        assert "using MQTT 3.1.1" in caplog.text
        assert "MQTT 3.1.1, as treadmill-" in caplog.text
        assert publisher.stats.connects == 1
    finally:
        process.terminate()
        await process.wait()

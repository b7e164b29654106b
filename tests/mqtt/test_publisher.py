"""The publisher against a real mosquitto with passwords and the documented ACL."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
import trustme

from controller.adapters.mqtt.commands import AssignClient, CommandRejected, ParsedCommand
from controller.adapters.mqtt.discovery import discovery_messages
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings, TlsSettings
from controller.adapters.mqtt.telemetry import state_payload
from controller.rules.model import (
    CoreState,
    GripLossAction,
    Inputs,
    Mode,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    SafetyConfig,
    StageConfig,
)
from tests.broker import MosquittoBroker, start_or_fail
from tests.mqtt.helpers import (
    CommandLog,
    Observer,
    Received,
    broker_has_handled_all,
    make_settings,
    record_sends,
    running,
    wait_until,
)

SAFETY = SafetyConfig(
    stages=(
        StageConfig(
            1, "assisted backward walk", 2.0, 0.5, 0.2, 3.6, 1, GripLossAction.STOP_LATCH, 300
        ),
    ),
    machine_max_kmh=8.0,
)


def sample_state(target_kmh: float = 0.0, *, second: int = 0) -> dict[str, object]:
    return state_payload(
        ts=datetime(2025, 3, 1, 12, 0, second, tzinfo=UTC),
        now_ms=10_000,
        core=CoreState(mode=Mode.IDLE, stage=1, target_kmh=target_kmh, commanded_kmh=0.0),
        inputs=Inputs(
            grip_left=False,
            grip_right=False,
            estop_pressed=False,
            safety_key_present=True,
            firmware=None,
        ),
        safety=SAFETY,
        belt_kmh=None,
        link={"frames_ok": 0},
        session=None,
    )


STATE_FIELDS = {
    "ts",
    "state",
    "stage",
    "stage_name",
    "stage_max_kmh",
    "speed_kmh",
    "target_kmh",
    "commanded_kmh",
    "grip",
    "safety_key",
    "estop",
    "fault",
    "session",
    "link",
    "warnings",
    "firmware",
}


async def test_connect_publishes_availability_discovery_and_state(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    publisher.publish_state(sample_state())
    expected_discovery = dict(discovery_messages(settings))
    async with running(publisher):
        await wait_until(lambda: publisher.stats.state_published == 1, what="the first state")
        await broker_has_handled_all(publisher)
        # A client that arrives later sees everything retained, as Home Assistant would.
        topics = [f"treadmill/{treadmill_id}/#", f"homeassistant/+/treadmill_{treadmill_id}/#"]
        async with Observer(mosquitto, "homeassistant", topics) as late:
            availability = await late.next_on(settings.availability_topic)
            state = await late.next_on(settings.state_topic)
            await wait_until(
                lambda: (
                    len({m.topic for m in late.messages} & set(expected_discovery))
                    == len(expected_discovery)
                ),
                what="every discovery config",
            )
    assert (availability.text, availability.retain) == ("online", True)
    assert state.retain
    assert set(state.json()) >= STATE_FIELDS
    assert state.json() == json.loads(json.dumps(sample_state()))
    for message in late.messages:
        if message.topic in expected_discovery:
            assert message.retain
            assert message.json() == json.loads(expected_discovery[message.topic])
    stats = publisher.stats
    assert stats.connects == 1
    assert stats.last_error is None


async def test_cancel_publishes_offline_and_disconnects(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    async with running(publisher):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        publisher.publish_event({"kind": "stopped", "message": "service stopping"})
    assert not publisher.stats.connected
    async with Observer(mosquitto, "dashboard", [f"treadmill/{treadmill_id}/availability"]) as obs:
        message = await obs.next_on(settings.availability_topic)
    assert (message.text, message.retain) == ("offline", True)
    assert publisher.stats.events_published == 1  # flushed before saying goodbye
    assert "Client controller-" + treadmill_id + " disconnected." in mosquitto.log_text()


async def test_state_is_sent_only_when_changed_and_at_most_at_the_rate(
    mosquitto: MosquittoBroker, treadmill_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(mosquitto, treadmill_id, state_rate_hz=5.0)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    sends = record_sends(publisher, monkeypatch)
    async with (
        Observer(mosquitto, "dashboard", [settings.state_topic]) as obs,
        running(publisher),
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        # Only ts changes: nothing new goes out after the first.
        for second in range(30):
            publisher.publish_state(sample_state(0.0, second=second))
            await asyncio.sleep(0)
        await obs.next_on(settings.state_topic)
        # Many changes in a burst: only the latest is sent, after the rate interval.
        for step in range(1, 101):
            publisher.publish_state(sample_state(step / 100))
        await obs.next_on(settings.state_topic, lambda m: m.json()["target_kmh"] == 1.0)
        # A steady 50 Hz producer of changing states: at most 5 states per second go out.
        before = len(obs.on(settings.state_topic))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in range(50):
            publisher.publish_state(sample_state(2 + step / 100))
            await asyncio.sleep(0.02)  # paces the producer at about 50 Hz
        final = await obs.next_on(settings.state_topic, lambda m: m.json()["target_kmh"] == 2.49)
        elapsed_s = loop.time() - start
        # The rate is the publisher's: timed where it sends (record_sends), not on arrival.
        sent = [m for m in sends if m.topic == settings.state_topic]
    states = obs.on(settings.state_topic)
    assert [m.json()["target_kmh"] for m in states[:2]] == [0.0, 1.0]
    assert [m.payload["target_kmh"] for m in sent] == [m.json()["target_kmh"] for m in states]
    assert sent[1].at_s - sent[0].at_s >= 0.2 - 0.01  # rate interval respected
    sent_during_stream = len(states) - before
    assert sent_during_stream <= elapsed_s * 5 + 2, (sent_during_stream, elapsed_s)
    intervals = [b.at_s - a.at_s for a, b in itertools.pairwise(sent)]
    assert min(intervals) >= 0.2 - 0.01, intervals
    assert final.json()["target_kmh"] == 2.49  # the latest state always gets out


async def test_unchanged_fresh_state_is_repeated_every_heartbeat(
    mosquitto: MosquittoBroker, treadmill_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(mosquitto, treadmill_id, state_heartbeat_s=1.0)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    sends = record_sends(publisher, monkeypatch)
    async with (
        Observer(mosquitto, "dashboard", [settings.state_topic]) as obs,
        running(publisher),
    ):
        second = 0

        def feed() -> bool:
            nonlocal second
            second = (second + 1) % 60
            publisher.publish_state(sample_state(0.0, second=second))
            return len(obs.on(settings.state_topic)) >= 2

        await wait_until(feed, what="a heartbeat state", timeout_s=5.0, poll_s=0.05)
    first, again = obs.on(settings.state_topic)[:2]
    sent = [m for m in sends if m.topic == settings.state_topic][:2]
    assert [m.payload["ts"] for m in sent] == [first.json()["ts"], again.json()["ts"]]
    assert 0.99 <= sent[1].at_s - sent[0].at_s <= 1.5  # timed where the publisher sends
    assert first.json()["ts"] != again.json()["ts"]  # the heartbeat carries the newest ts


async def test_session_is_published_retained(mosquitto: MosquittoBroker, treadmill_id: str) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    session = {"session_id": 12, "client_id": "p-017", "elapsed_s": 0, "stage": 1}
    async with (
        Observer(mosquitto, "dashboard", [settings.session_topic]) as live,
        running(publisher),
    ):
        publisher.publish_session(session)
        await live.next_on(settings.session_topic)
        async with Observer(mosquitto, "dashboard", [settings.session_topic]) as late:
            message = await late.next_on(settings.session_topic)
    assert message.json() == session
    assert message.retain


async def test_events_keep_order_and_drop_the_oldest_when_full(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id, event_queue_size=100)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    for number in range(150):  # queued while not connected
        publisher.publish_event({"kind": "test", "message": "m", "n": number})
    assert publisher.stats.events_dropped == 50
    async with (
        Observer(mosquitto, "dashboard", [settings.event_topic]) as obs,
        running(publisher),
    ):
        await wait_until(lambda: len(obs.on(settings.event_topic)) == 100, what="100 events")
        publisher.publish_event({"kind": "test", "message": "m", "n": 150})
        await obs.next_on(settings.event_topic, lambda m: m.json()["n"] == 150)
    numbers = [m.json()["n"] for m in obs.on(settings.event_topic)]
    assert numbers == list(range(50, 151))
    assert all(not m.retain for m in obs.on(settings.event_topic))
    stats = publisher.stats
    assert (stats.events_published, stats.events_dropped) == (101, 50)


async def test_remote_stop_from_a_dashboard_arrives_as_remote_stop(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    async with Observer(mosquitto, "dashboard") as dashboard, running(publisher):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        for payload in ("PRESS", "", "STOP", "{}"):
            await dashboard.publish(f"{settings.command_prefix}stop", payload)
        await wait_until(lambda: len(log.commands) == 4, what="four stops")
    assert log.commands == [RemoteStop()] * 4
    assert publisher.stats.commands_received == 4
    assert publisher.stats.commands_rejected == 0


async def test_dashboard_cannot_send_anything_but_stop(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    async with Observer(mosquitto, "dashboard") as dashboard, running(publisher):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        await dashboard.publish(f"{settings.command_prefix}target_kmh", "0.5")
        await dashboard.publish(f"{settings.command_prefix}stage_cap", "1")
        await dashboard.publish(f"{settings.command_prefix}client", '{"client_id": null}')
        await dashboard.publish(f"{settings.availability_topic}", "offline", retain=True)
        await dashboard.publish(f"{settings.command_prefix}stop", "PRESS")  # sentinel
        await wait_until(lambda: RemoteStop() in log.commands, what="the stop")
        async with Observer(mosquitto, "trainer", [settings.availability_topic]) as late:
            availability = await late.next_on(settings.availability_topic)
    # Same connection, same order: had the broker let the others through, they would
    # have arrived before the stop.
    assert log.commands == [RemoteStop()]
    assert publisher.stats.commands_received == 1
    assert availability.text == "online"  # the dashboard could not overwrite it


async def test_trainer_commands_arrive_parsed(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    async with Observer(mosquitto, "trainer") as trainer, running(publisher):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        await trainer.publish(f"{settings.command_prefix}target_kmh", '{"speed_kmh": 1.5}')
        await trainer.publish(f"{settings.command_prefix}stage_cap", "2")
        await trainer.publish(f"{settings.command_prefix}client", '{"client_id": "p-017"}')
        await wait_until(lambda: len(log.commands) == 3, what="three commands")
    assert log.commands == [RemoteLowerTarget(1.5), RemoteLowerStageCap(2), AssignClient("p-017")]


async def test_anonymous_and_wrong_password_are_refused(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    anonymous = aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"anon-{treadmill_id}")
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
        async with anonymous:
            pass
    for settings in (
        make_settings(mosquitto, treadmill_id, user=None),
        make_settings(mosquitto, treadmill_id, password="wrong"),  # noqa: S106 -- a wrong password is the test
    ):
        refused = MqttPublisher(settings, on_command=CommandLog())

        def refusal(publisher: MqttPublisher = refused) -> bool:
            return "refused" in str(publisher.stats.last_error)

        async with running(refused) as task:
            await wait_until(refusal, what="the refusal")
            assert not task.done()  # it keeps retrying, it never raises
        stats = refused.stats
        assert not stats.connected
        assert stats.connects == 0
        assert "Not authorized" in str(stats.last_error) or "Bad user name" in str(stats.last_error)


# (topic suffix, payload, word the reason must contain)
MALFORMED: list[tuple[str, bytes, str]] = [
    ("target_kmh", b"x" * 2000, "over the limit"),
    ("target_kmh", b"\xff\xfe", "not UTF-8"),
    ("target_kmh", b"fast please", "not valid JSON"),
    ("target_kmh", b'"1.0"', "the string"),
    ("target_kmh", b"true", "boolean"),
    ("target_kmh", b"NaN", "NaN"),
    ("target_kmh", b"Infinity", "Infinity"),
    ("target_kmh", b"-1", "out of range"),
    ("target_kmh", b"99", "out of range"),
    ("target_kmh", b'{"speed": 1}', "keys [speed]"),
    ("stage_cap", b"0", "out of range"),
    ("stage_cap", b"1.5", "the number 1.5"),
    ("stage_cap", b"false", "boolean"),
    ("client", b'{"client_id": "no spaces allowed"}', "client_id"),
    ("client", b"17", "the integer 17"),
    ("start", b"", "at the console"),
    ("speed_up", b"", "unknown command"),
    ("stop/now", b"", "unknown command cmd/stop/now"),
]


async def test_malformed_commands_are_rejected_with_an_event_and_nothing_else(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    async with (
        Observer(mosquitto, "trainer", [settings.event_topic]) as trainer,
        running(publisher),
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        for name, payload, _word in MALFORMED:
            await trainer.publish(f"{settings.command_prefix}{name}", payload)
        await trainer.publish(f"{settings.command_prefix}stop", b"PRESS")  # sentinel
        await wait_until(lambda: RemoteStop() in log.commands, what="the stop")
        await wait_until(
            lambda: len(trainer.on(settings.event_topic)) == len(MALFORMED),
            what="one event per rejection",
        )
    rejected = log.commands[:-1]
    assert log.commands[-1] == RemoteStop()
    assert len(rejected) == len(MALFORMED)
    events = [m.json() for m in trainer.on(settings.event_topic)]
    for (name, _payload, word), command, event in zip(MALFORMED, rejected, events, strict=True):
        assert isinstance(command, CommandRejected), command
        assert command.command == name
        assert word in command.reason, (word, command.reason)
        assert event["kind"] == "command_rejected"
        assert event["command"] == name
        assert event["reason"] == command.reason
        assert event["source"] == "mqtt"
        assert event["ts"].endswith("Z")
    stats = publisher.stats
    assert (stats.commands_received, stats.commands_rejected) == (
        len(MALFORMED) + 1,
        len(MALFORMED),
    )


async def test_stops_come_through_the_stop_path_once_each(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    """cmd/stop arrives on the main connection and on the stop path; each counts once."""
    settings = make_settings(mosquitto, treadmill_id)
    log = CommandLog()
    publisher = MqttPublisher(settings, on_command=log)
    async with Observer(mosquitto, "dashboard") as dashboard, running(publisher):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        await wait_until(lambda: publisher.stats.stop_path_connected, what="stop path")
        for _ in range(5):
            await dashboard.publish(f"{settings.command_prefix}stop", "PRESS")
        await wait_until(
            lambda: publisher.intake.stop_counts == [5, 5], what="every stop seen on both paths"
        )
        assert log.commands == [RemoteStop()] * 5
        assert publisher.stats.commands_received == 5


async def test_a_retained_command_is_not_acted_on(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    topic = f"{settings.command_prefix}target_kmh"
    log = CommandLog()
    async with Observer(mosquitto, "trainer") as trainer:
        await trainer.publish(topic, "1.0", retain=True)
        publisher = MqttPublisher(settings, on_command=log)
        async with running(publisher):
            await wait_until(lambda: bool(log.commands), what="the retained command")
        await trainer.publish(topic, b"", retain=True)  # clear it
    [command] = log.commands
    assert isinstance(command, CommandRejected)
    assert "retained command ignored" in command.reason
    assert publisher.stats.commands_rejected == 1


async def test_home_assistant_online_triggers_discovery_again(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    count = len(discovery_messages(settings))
    publisher = MqttPublisher(settings, on_command=CommandLog())
    topics = [f"homeassistant/+/treadmill_{treadmill_id}/+/config"]
    async with Observer(mosquitto, "homeassistant", topics) as ha, running(publisher):

        def configs() -> list[Received]:
            return [m for m in ha.messages if m.topic.endswith("/config")]

        await wait_until(lambda: len(configs()) == count, what="discovery")
        await ha.publish("homeassistant/status", "online")
        await wait_until(lambda: len(configs()) == 2 * count, what="discovery again")
        # A retained "online" (seen on subscribing) is not a restart: no third round.
        await ha.publish("homeassistant/status", "offline")
    assert len({m.topic for m in configs()}) == count
    assert publisher.stats.connects == 1


async def test_a_failing_on_command_does_not_stop_the_publisher(
    mosquitto: MosquittoBroker, treadmill_id: str
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    seen: list[ParsedCommand] = []

    def explode(command: ParsedCommand) -> None:
        seen.append(command)
        raise RuntimeError("consumer bug")

    publisher = MqttPublisher(settings, on_command=explode)
    async with Observer(mosquitto, "dashboard") as dashboard, running(publisher) as task:
        await wait_until(lambda: publisher.stats.connected, what="connected")
        await dashboard.publish(f"{settings.command_prefix}stop", "PRESS")
        await dashboard.publish(f"{settings.command_prefix}stop", "PRESS")
        await wait_until(lambda: len(seen) == 2, what="both stops")
        assert not task.done()
        assert publisher.stats.connects == 1


async def test_tls_with_a_client_certificate(tmp_path: Path, treadmill_id: str) -> None:
    broker = start_or_fail(MosquittoBroker(tmp_path / "tls", tls=True, require_client_cert=True))
    try:
        assert broker.ca_file is not None
        cert_file, key_file = broker.client_certificate("controller")
        good = make_settings(
            broker, treadmill_id, tls=TlsSettings(broker.ca_file, cert_file, key_file)
        )
        publisher = MqttPublisher(good, on_command=CommandLog())
        async with running(publisher):
            await wait_until(lambda: publisher.stats.connected, what="a TLS connection")
        no_cert = make_settings(broker, treadmill_id, tls=TlsSettings(broker.ca_file))
        refused = MqttPublisher(no_cert, on_command=CommandLog())
        async with running(refused):
            await wait_until(
                lambda: refused.stats.last_error is not None, what="an error", timeout_s=15
            )
        assert refused.stats.connects == 0
        other_ca = tmp_path / "other-ca.crt"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        untrusted = make_settings(
            broker, treadmill_id, tls=TlsSettings(other_ca, cert_file, key_file)
        )
        wary = MqttPublisher(untrusted, on_command=CommandLog())
        async with running(wary):
            await wait_until(lambda: wary.stats.last_error is not None, what="an error")
        assert "CERTIFICATE_VERIFY_FAILED" in str(wary.stats.last_error)
        assert wary.stats.connects == 0
    finally:
        broker.close()


async def test_payloads_that_are_not_json_are_dropped_and_the_rest_goes_out(
    mosquitto: MosquittoBroker, treadmill_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(mosquitto, treadmill_id)
    publisher = MqttPublisher(settings, on_command=CommandLog())
    async with (
        Observer(mosquitto, "dashboard", [settings.event_topic, settings.state_topic]) as obs,
        running(publisher) as task,
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        publisher.publish_event({"kind": "bad", "value": float("nan")})
        publisher.publish_event({"kind": "bad", "value": object()})
        publisher.publish_event({"kind": "good"})
        publisher.publish_state({"ts": "x", "bad": {1, 2}})
        await obs.next_on(settings.event_topic)
        publisher.publish_state({"ts": "x", "good": True})
        state = await obs.next_on(settings.state_topic)
        assert not task.done()
    assert [m.json()["kind"] for m in obs.on(settings.event_topic)] == ["good"]
    assert state.json() == {"ts": "x", "good": True}
    assert publisher.stats.events_published == 1
    assert publisher.stats.state_published == 1
    assert "is not JSON, dropped" in caplog.text


async def test_pulled_state_measurements_throttled_state_fields_at_once(
    mosquitto: MosquittoBroker, treadmill_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One throttle: the state is built by the publisher at most ``state_rate_hz``; a state
    where only the speeds change goes out every ``measurement_interval_s``, one where only
    the session counters change every ``counter_interval_s``, a changed state field at once."""
    settings = make_settings(
        mosquitto,
        treadmill_id,
        state_rate_hz=10.0,
        measurement_interval_s=0.5,
        counter_interval_s=2.0,
        diagnostics_interval_s=5.0,  # the shortest the config accepts
    )
    publisher = MqttPublisher(settings, on_command=CommandLog())
    # Timed where the publisher builds and sends: a broker delayed on a busy machine must not
    # move a state from one window to the next.
    sends = record_sends(publisher, monkeypatch)
    builds_s: list[float] = []
    current: dict[str, object] = {"target": 0.0, "speed": 0.0, "elapsed": 0.0, "moving": True}

    def states_sent(after_s: float, until_s: float = math.inf) -> list[float]:
        """When the states sent in ``(after_s, until_s]`` went out, relative to ``after_s``."""
        return [
            m.at_s - after_s
            for m in sends
            if m.topic == settings.state_topic and after_s < m.at_s <= until_s
        ]

    def build() -> dict[str, object]:
        builds_s.append(time.monotonic())
        state = sample_state(float(str(current["target"])))
        if current["moving"]:
            current["speed"] = round(float(str(current["speed"])) + 0.01, 2)
        current["elapsed"] = round(float(str(current["elapsed"])) + 0.1, 1)
        state["speed_kmh"] = current["speed"]
        state["session"] = {"session_id": "a1", "elapsed_s": current["elapsed"]}
        return state

    publisher.set_sources(state=build, diagnostics=lambda: {"ts": "x", "crc_errors": 0})
    loop = asyncio.get_running_loop()
    async with (
        Observer(mosquitto, "dashboard", [settings.state_topic, settings.diagnostics_topic]) as obs,
        running(publisher),
    ):
        await wait_until(lambda: publisher.stats.connected, what="connected")
        await obs.next_on(settings.state_topic)
        start = loop.time()
        await wait_until(lambda: loop.time() - start > 2.0, what="2 s of walking", timeout_s=5)
        walking = states_sent(start, start + 2.0)
        # speeds change on every build: 2 s / 0.5 s = 4 states (+1 for the edges)
        assert 3 <= len(walking) <= 5, walking
        built = [t for t in builds_s if start < t <= start + 2.0]
        assert len(built) <= 2.0 * 10 + 2  # built at the poll rate, not more
        # a state field changes: out within one poll interval (not the 0.5 s interval)
        changed_at = loop.time()
        current["target"] = 1.5
        arrived = await obs.next_on(settings.state_topic, lambda m: m.json()["target_kmh"] == 1.5)
        changed = next(m for m in sends if m.topic == settings.state_topic and m.at_s > changed_at)
        assert changed.payload["target_kmh"] == 1.5  # the first state sent after the change
        assert changed.at_s - changed_at < 0.35
        # the belt at rest, the session counting: every counter_interval_s only
        current["moving"] = False
        await wait_until(lambda: loop.time() - arrived.at_s > 0.6, what="speed settled")
        rest_start = loop.time()
        await wait_until(lambda: loop.time() - rest_start > 4.5, what="4.5 s at rest", timeout_s=8)
        at_rest = states_sent(rest_start, rest_start + 4.5)
        assert 1 <= len(at_rest) <= 3, at_rest
        diagnostics = obs.on(settings.diagnostics_topic)
        assert len(diagnostics) >= 2  # after the connect, then every 5 s
        assert diagnostics[0].json() == {"ts": "x", "crc_errors": 0}


@pytest.mark.slow
async def test_auto_protocol_falls_back_to_3_1_1_when_the_broker_ignores_mqtt_5() -> None:
    """amqtt 0.12 neither answers nor refuses an MQTT 5 CONNECT with a will: after the
    connect timeout the publisher tries 3.1.1 at once and gets through."""
    from controller.tools.broker import DemoBroker

    async with DemoBroker("amqtt") as broker:
        settings = MqttSettings(
            host=broker.host,
            port=broker.port,
            treadmill_id="fallback",
            device_name="Fallback",
            sw_version="0",
            max_stage=4,
            max_speed_kmh=8.0,
        )
        publisher = MqttPublisher(settings, on_command=CommandLog())
        async with running(publisher):
            await wait_until(
                lambda: publisher.stats.connected, what="connected over 3.1.1", timeout_s=20
            )
        assert publisher.stats.connects == 1

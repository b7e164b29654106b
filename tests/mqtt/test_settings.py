"""MqttSettings validation, the credentials file, and the publisher's non-blocking API
(no broker needed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings, TlsSettings
from controller.errors import CredentialsError
from controller.settings.bounds import MQTT_BOUNDS, Bound
from controller.settings.credentials import read_mqtt_credentials
from controller.settings.schema import MqttSection, Range
from tests.mqtt.helpers import CommandLog, wait_until


def settings(**overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": "broker.lan",
        "treadmill_id": "lab1",
        "device_name": "Lab 1",
        "sw_version": "1.0",
        "max_stage": 4,
        "max_speed_kmh": 8.0,
    }
    values.update(overrides)
    return MqttSettings(**values)


def test_defaults_derive_topics_from_the_treadmill_id() -> None:
    s = settings()
    assert s.topic_prefix == "treadmill/lab1"
    assert s.client_id == "treadmill-lab1"
    assert s.availability_topic == "treadmill/lab1/availability"
    assert s.state_topic == "treadmill/lab1/state"
    assert s.event_topic == "treadmill/lab1/event"
    assert s.session_topic == "treadmill/lab1/session"
    assert s.command_prefix == "treadmill/lab1/cmd/"
    assert s.ha_status_topic == "homeassistant/status"
    assert (s.port, s.keepalive_s, s.state_rate_hz, s.event_queue_size) == (1883, 30, 5.0, 100)


def test_password_is_not_in_the_repr() -> None:
    secret = "hunter2"  # noqa: S105 -- a made-up password that must not leak into repr()
    assert secret not in repr(settings(username="controller", password=secret))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"treadmill_id": "lab 1"}, ("mqtt.treadmill_id", "'lab 1'", "A-Z a-z 0-9 _ -")),
        ({"treadmill_id": ""}, ("mqtt.treadmill_id",)),
        ({"topic_prefix": "treadmill/#"}, ("mqtt.topic_prefix", "no + #")),
        ({"topic_prefix": "/treadmill"}, ("mqtt.topic_prefix", "none empty")),
        ({"discovery_prefix": "home+assistant"}, ("mqtt.discovery_prefix",)),
        ({"host": ""}, ("mqtt.host",)),
        ({"port": 0}, ("mqtt.port", "from 1 to 65535")),
        ({"keepalive_s": 0}, ("mqtt.keepalive_s", "from 5 to 600 s")),
        ({"password": "x"}, ("mqtt.password", "without a username")),
        ({"state_rate_hz": 0.0}, ("mqtt.state_rate_hz",)),
        ({"state_rate_hz": float("nan")}, ("mqtt.state_rate_hz",)),
        ({"state_heartbeat_s": 0.5}, ("mqtt.state_heartbeat_s",)),
        ({"max_payload_bytes": 8}, ("mqtt.max_payload_bytes", "from 256 to 65536 bytes")),
        ({"max_stage": 0}, ("mqtt.max_stage",)),
        ({"max_speed_kmh": float("inf")}, ("mqtt.max_speed_kmh",)),
        ({"event_queue_size": 0}, ("mqtt.event_queue_size",)),
        ({"reconnect_min_s": 0.0}, ("mqtt.reconnect_min_s",)),
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, ("mqtt.reconnect_max_s", "at least")),
    ],
)
def test_bad_settings_name_the_field_the_value_and_the_range(
    overrides: dict[str, Any], words: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as info:  # noqa: PT011 -- the message is checked below
        settings(**overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    TlsSettings(tmp_path / "ca.crt")
    TlsSettings(tmp_path / "ca.crt", tmp_path / "c.crt", tmp_path / "c.key")
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        TlsSettings(tmp_path / "ca.crt", cert_file=tmp_path / "c.crt")


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.credentials"
    path.write_text("controller:pa:ss word\n", encoding="utf-8")
    path.chmod(0o600)
    credentials = read_mqtt_credentials(path)
    assert (credentials.username, credentials.password) == ("controller", "pa:ss word")
    assert not credentials.open_to_others
    path.chmod(0o644)
    assert read_mqtt_credentials(path).open_to_others


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", ("found 0 non-empty lines",)),
        ("controller\n", ("no ':'",)),
        (":secret\n", ("username is empty",)),
        (" controller :secret\n", ("spaces around",)),
        ("controller:\n", ("password after ':' is empty",)),
        ("a:b\nc:d\n", ("found 2 non-empty lines",)),
    ],
)
def test_bad_credentials_files_name_the_file_and_never_the_password(
    tmp_path: Path, content: str, words: tuple[str, ...]
) -> None:
    path = tmp_path / "creds"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CredentialsError) as info:
        read_mqtt_credentials(path)
    message = str(info.value)
    assert str(path) in message
    assert "username:password" in message
    for word in words:
        assert word in message
    assert "secret" not in message


def test_missing_and_binary_credentials_files(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read"):
        read_mqtt_credentials(tmp_path / "nope")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe:\x00")
    with pytest.raises(CredentialsError, match="not UTF-8"):
        read_mqtt_credentials(binary)


async def test_handing_over_data_never_blocks_and_keeps_bounds() -> None:
    publisher = MqttPublisher(settings(event_queue_size=10), on_command=CommandLog())
    started = time.perf_counter()
    for number in range(10_000):
        publisher.publish_state({"ts": "x", "n": number})
        publisher.publish_event({"kind": "k", "n": number})
        publisher.publish_session({"n": number})
    per_call_us = (time.perf_counter() - started) / 30_000 * 1e6
    stats = publisher.stats
    assert stats.events_dropped == 9_990
    assert not stats.connected
    assert stats.connects == 0
    assert per_call_us < 50, per_call_us  # a few microseconds each in practice


async def test_run_against_nothing_keeps_retrying_and_stops_on_cancel() -> None:
    # Port 1 on localhost: connection refused at once.
    publisher = MqttPublisher(
        settings(host="127.0.0.1", port=1, reconnect_min_s=0.01, reconnect_max_s=0.05),
        on_command=CommandLog(),
    )
    task = asyncio.create_task(publisher.run(), name="mqtt")
    try:
        await wait_until(lambda: publisher.stats.last_error is not None, what="an error")
        assert "Connection refused" in str(publisher.stats.last_error)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_incoming_queue_drops_the_oldest_non_stop_and_never_a_stop() -> None:
    import aiomqtt

    from controller.adapters.mqtt.intake import incoming_queue_type

    dropped: list[int] = []
    created: list[object] = []
    queue_type = incoming_queue_type("p/cmd/stop", lambda: dropped.append(1), created.append)
    queue = queue_type(maxsize=3)
    assert created == [queue]

    def message(topic: str, mid: int) -> aiomqtt.Message:
        return aiomqtt.Message(topic, b"", qos=1, retain=False, mid=mid, properties=None)

    queue.put_nowait(message("p/cmd/target_kmh", 1))
    queue.put_nowait(message("p/cmd/stop", 2))
    queue.put_nowait(message("p/cmd/target_kmh", 3))
    queue.put_nowait(message("p/cmd/target_kmh", 4))  # full: drops mid 1
    queue.put_nowait(message("p/cmd/stop", 5))  # full: drops mid 3
    assert [queue.get_nowait().mid for _ in range(3)] == [2, 4, 5]
    for mid in (6, 7, 8):
        queue.put_nowait(message("p/cmd/stop", mid))
    queue.put_nowait(message("p/cmd/target_kmh", 9))  # all stops: the newcomer goes
    assert [queue.get_nowait().mid for _ in range(3)] == [6, 7, 8]
    assert queue.empty()
    assert len(dropped) == 3


def test_a_missing_mosquitto_fails_the_test_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import broker as broker_module

    monkeypatch.setattr(broker_module, "MOSQUITTO", tmp_path / "no-mosquitto")
    broker = broker_module.MosquittoBroker(tmp_path / "b")
    with pytest.raises(broker_module.MosquittoNotInstalledError, match="apt-get install mosquitto"):
        broker.start()
    with pytest.raises(pytest.fail.Exception, match="mosquitto is not installed"):
        broker_module.start_or_fail(broker)


# ---------------------------------------------------------------- one table of bounds


def _edges(bound: Bound, integer: bool) -> tuple[list[float], list[float]]:
    """Values just inside and just outside ``bound``."""
    step = 1 if integer else 1e-6 * max(1.0, abs(bound.high))
    inside = [bound.high] + ([] if bound.low_open else [bound.low])
    outside = [bound.high + step, bound.low if bound.low_open else bound.low - step]
    return inside, outside


def test_mqtt_bounds_one_table_for_the_config_and_the_adapter() -> None:
    """Every number of the config's mqtt section is in MQTT_BOUNDS with the same range, and
    every bound of the table is the one both MqttSection (the config) and MqttSettings (the
    adapter) enforce: each accepts its edges and refuses just outside them."""
    numeric = {
        name
        for name, info in MqttSection.model_fields.items()
        if info.annotation in (int, float, "int", "float")
        or any(isinstance(m, Range) for m in info.metadata)
    }
    in_config = {key for key, bound in MQTT_BOUNDS.items() if bound.in_config}
    assert numeric == in_config, "a number of the mqtt section is not in MQTT_BOUNDS"
    for key in in_config:
        ranges = [m for m in MqttSection.model_fields[key].metadata if isinstance(m, Range)]
        assert ranges == [Range.of(MQTT_BOUNDS[key])], key
    for key, bound in MQTT_BOUNDS.items():
        integer = key in ("port", "keepalive_s", "max_payload_bytes", "event_queue_size",
                          "max_stage")  # fmt: skip
        inside, outside = _edges(bound, integer)
        # reconnect_max_s >= reconnect_min_s: the other one out of the way
        extra = {"reconnect_max_s": {"reconnect_min_s": 0.01}, "reconnect_min_s": {
            "reconnect_max_s": 3600.0}}.get(key, {})  # fmt: skip
        for value in inside:
            typed = int(value) if integer else float(value)
            settings(**{**extra, key: typed})
            if bound.in_config:
                MqttSection.model_validate({key: typed})
        for value in outside:
            typed = int(value) if integer else float(value)
            with pytest.raises(ValueError, match=f"mqtt.{key}: got"):
                settings(**{**extra, key: typed})
            if bound.in_config:
                with pytest.raises(ValueError, match="must be"):
                    MqttSection.model_validate({key: typed})

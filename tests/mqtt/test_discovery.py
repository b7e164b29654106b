"""Home Assistant discovery: every entity's template renders to a valid value on real payloads.

The payloads come from the real service on the simulator (running, faulted, at rest) and
the real session record; the templates are rendered with Jinja2 as Home Assistant does
(``value_json`` is the parsed payload). The docs' entity table is generated from the table.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest

from controller.adapters.mqtt.discovery import (
    ENTITIES,
    EVENT_TYPES,
    HA_STATE_MAX_CHARS,
    discovery_messages,
    entity_reference_markdown,
    node_id,
)
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.settings import MqttSettings
from controller.adapters.mqtt.telemetry import event_payload
from controller.rules.model import Event
from controller.runtime.service import Service
from tests.service.harness import running_service
from tests.training.helpers import record
from tests.waiting import wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
SETTINGS = MqttSettings(
    host="localhost",
    treadmill_id="lab1",
    device_name="Lab treadmill 1",
    sw_version="1.2.3",
    max_stage=4,
    max_speed_kmh=8.0,
)
JINJA = jinja2.Environment(autoescape=False)  # noqa: S701 - renders JSON/text, never HTML


def configs() -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in discovery_messages(SETTINGS)}


def render(template: str, payload: dict[str, Any]) -> str:
    return JINJA.from_string(template).render(value_json=payload).strip()


@pytest.fixture(scope="module")
def payloads() -> dict[str, list[dict[str, Any]]]:
    """Real payloads per topic: filled by :func:`collect` (a module-wide service run)."""
    return {"state": [], "diagnostics": [], "event": [], "session": []}


@pytest.fixture
async def collected(
    tmp_path: Path, payloads: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    if not payloads["state"]:
        async with running_service(tmp_path) as service:
            await collect(service, payloads)
        payloads["session"].append(record(session_id="a1b2c3").to_json())
    return payloads


async def collect(service: Service, payloads: dict[str, list[dict[str, Any]]]) -> None:
    def snapshot() -> None:
        payloads["state"].append(service.telemetry(service.now_ms(), with_link=False))
        payloads["diagnostics"].append(service.diagnostics())

    panel = service.mock_panel
    assert panel is not None
    snapshot()  # at rest, idle
    panel.grip("both")
    await wait_until(
        lambda: service.last_inputs is not None and service.last_inputs.grip_left,
        timeout_s=2,
        what="grip seen",
    )
    panel.press("start")
    panel.target(1.0)
    await wait_until(lambda: service.state.mode.value == "running", timeout_s=5, what="running")
    await wait_until(
        lambda: (service.last_inputs is not None and service.last_inputs.firmware is not None
                 and service.last_inputs.firmware.measured_kmh > 0.3
                 and service.last_inputs.belt_sensor is not None
                 and service.last_inputs.belt_sensor.speed_kmh > 0.3),
        timeout_s=10,
        what="belt moving",
    )  # fmt: skip
    snapshot()  # running
    panel.grip("none")
    await wait_until(lambda: service.state.fault is not None, timeout_s=3, what="grip fault")
    snapshot()  # faulted
    payloads["event"].extend(
        event_payload(ts=datetime.now(UTC), event=event) for _now, event in service.event_log
    )
    payloads["event"].append(
        event_payload(ts=datetime.now(UTC), event=Event("start_refused", "start refused: x"))
    )


def test_topics_ids_and_components() -> None:
    found = configs()
    topic_re = re.compile(
        r"homeassistant/(sensor|binary_sensor|button|number|select|event)/treadmill_lab1/"
        r"[a-z0-9_]+/config"
    )
    assert all(topic_re.fullmatch(t) for t in found), list(found)
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids) == len(ENTITIES)
    assert node_id(SETTINGS) == "treadmill_lab1"
    by_component: dict[str, int] = {}
    for topic in found:
        by_component[topic.split("/")[1]] = by_component.get(topic.split("/")[1], 0) + 1
    assert by_component == {
        "sensor": 23,
        "binary_sensor": 8,
        "button": 1,
        "number": 1,
        "select": 1,
        "event": 1,
    }


def test_every_entity_has_the_device_availability_and_its_topic() -> None:
    for topic, config in configs().items():
        assert config["availability_topic"] == "treadmill/lab1/availability", topic
        assert config["device"] == {
            "identifiers": ["treadmill_lab1"],
            "name": "Lab treadmill 1",
            "manufacturer": "treadmill-controller",
            "model": "Backward-walking treadmill controller",
            "sw_version": "1.2.3",
        }
        state_topic = config.get("state_topic")
        if "/button/" in topic:
            assert state_topic is None
            assert config["command_topic"] == "treadmill/lab1/cmd/stop"
            continue
        assert state_topic in {
            "treadmill/lab1/state",
            "treadmill/lab1/session",
            "treadmill/lab1/diagnostics",
            "treadmill/lab1/event",
        }, topic
        expected_expiry = {"treadmill/lab1/state": 90, "treadmill/lab1/diagnostics": 180}
        assert config.get("expire_after") == expected_expiry.get(state_topic), topic


def test_SR_REMOTE_2_3_number_and_select_write_only_the_lower_only_commands() -> None:
    """Home Assistant may offer any value; the command parser and the core refuse a raise
    (tests/core, SR-REMOTE-2/3). The entities write nothing else."""
    found = configs()
    writers = {t: c["command_topic"] for t, c in found.items() if "command_topic" in c}
    assert sorted(writers.values()) == [
        "treadmill/lab1/cmd/stage_cap",
        "treadmill/lab1/cmd/stop",
        "treadmill/lab1/cmd/target_kmh",
    ]
    number = found["homeassistant/number/treadmill_lab1/target_speed/config"]
    assert (number["min"], number["max"], number["step"]) == (0.0, 8.0, 0.1)
    select = found["homeassistant/select/treadmill_lab1/stage_cap/config"]
    assert select["options"] == ["1", "2", "3", "4"]
    assert all(c.get("retain") is False for c in found.values() if "command_topic" in c)


async def test_every_template_renders_a_valid_value_on_real_payloads(
    collected: dict[str, list[dict[str, Any]]],
) -> None:
    topics = {
        "treadmill/lab1/state": "state",
        "treadmill/lab1/diagnostics": "diagnostics",
        "treadmill/lab1/event": "event",
        "treadmill/lab1/session": "session",
    }
    rendered = 0
    for topic, config in configs().items():
        template = config.get("value_template")
        if template is None:
            continue
        for payload in collected[topics[config["state_topic"]]]:
            value = render(template, payload)
            rendered += 1
            component = topic.split("/")[1]
            assert len(value) <= HA_STATE_MAX_CHARS, (topic, value)
            if component == "binary_sensor":
                assert value in ("ON", "OFF"), (topic, value)
            elif component == "select":
                assert value in config["options"], (topic, value)
            elif component == "event":
                if value:
                    fired = json.loads(value)
                    assert fired["event_type"] in EVENT_TYPES
                    assert fired["message"]
            elif config.get("device_class") == "enum":
                assert value in config["options"], (topic, value)
            elif "unit_of_measurement" in config or "state_class" in config:
                if value != "None":  # unknown in Home Assistant
                    float(value)
            else:
                assert value not in ("", "None"), (topic, value)
            attributes = config.get("json_attributes_template")
            if attributes is not None:
                assert isinstance(json.loads(render(attributes, payload)), dict)
    assert rendered > 80  # 3 states, 3 diagnostics, the events and a session record
    fired = [
        render(configs()["homeassistant/event/treadmill_lab1/safety_event/config"]
               ["value_template"], e)
        for e in collected["event"]
    ]  # fmt: skip
    assert {json.loads(f)["event_type"] for f in fired if f} == set(EVENT_TYPES)


async def test_real_payloads_show_what_the_entities_promise(
    collected: dict[str, list[dict[str, Any]]],
) -> None:
    found = configs()

    def value(object_id: str, component: str, payload: dict[str, Any]) -> str:
        config = found[f"homeassistant/{component}/treadmill_lab1/{object_id}/config"]
        return render(config["value_template"], payload)

    idle, running, faulted = collected["state"][:3]
    assert value("state", "sensor", running) == "running"
    assert value("fault_code", "sensor", idle) == "none"
    assert value("fault_code", "sensor", faulted) == "grip_lost"
    assert value("stop_reason", "sensor", faulted) == "grip_lost"
    assert value("fault", "binary_sensor", faulted) == "ON"
    assert value("firmware_version", "sensor", running) != "unknown"
    assert float(value("speed", "sensor", running)) > 0.3
    # The Pi's belt sensor (demo config: two channels): read, and agreeing with the firmware.
    assert float(value("belt_sensor_speed", "sensor", running)) > 0.3
    assert running["channels_agree"] is True
    assert value("channels_disagree", "binary_sensor", running) == "OFF"
    assert value("channels_disagree", "binary_sensor", {**running, "channels_agree": False}) == "ON"
    assert value("drive_mode", "sensor", running) == "firmware"
    assert value("key_relay", "binary_sensor", running) == "OFF"
    assert value("key_relay", "binary_sensor", {**running, "key_relay": "closed"}) == "ON"
    assert value("stage_cap", "select", running) == str(running["stage_cap"])  # training cap
    uncapped = {**running, "stage_cap": 4, "remote_stage_cap": None}
    assert value("stage_cap", "select", uncapped) == "4"
    assert value("stage_cap", "select", {**uncapped, "remote_stage_cap": 2}) == "2"
    assert float(value("target_speed", "number", running)) == 1.0
    diagnostics = collected["diagnostics"][-1]
    assert int(value("link_crc_errors", "sensor", diagnostics)) == 0
    assert float(value("loop_lateness_p99", "sensor", diagnostics)) >= 0
    session = collected["session"][0]
    assert float(value("last_session_distance", "sensor", session)) > 0
    assert int(value("last_session_grip_losses", "sensor", session)) == 0


def test_docs_entity_table_is_the_discovery_table() -> None:
    text = DOC.read_text()
    begin = text.index("<!-- entities:begin -->\n") + len("<!-- entities:begin -->\n")
    end = text.index("<!-- entities:end -->")
    assert text[begin:end] == entity_reference_markdown(), (
        "docs/mqtt.md is out of date: paste "
        "controller.adapters.mqtt.discovery.entity_reference_markdown()"
        " between the entities markers"
    )


def test_discovery_prefix_and_topic_prefix_follow_the_settings() -> None:
    custom = MqttSettings(
        host="h",
        treadmill_id="b2",
        topic_prefix="gym/treadmills/b2",
        discovery_prefix="ha",
        state_heartbeat_s=10,
        device_name="B2",
        sw_version="x",
        max_stage=3,
        max_speed_kmh=6.0,
    )
    messages = discovery_messages(custom)
    assert all(topic.startswith("ha/") for topic, _ in messages)
    for _topic, payload in messages:
        config = json.loads(payload)
        assert config["availability_topic"] == "gym/treadmills/b2/availability"
        if config.get("state_topic") == "gym/treadmills/b2/state":
            assert config["expire_after"] == 30
        assert str(config.get("command_topic", "gym/treadmills/b2/cmd/")).startswith(
            "gym/treadmills/b2/cmd/"
        )


# ---------------------------------------------------------------- docs/mqtt.md examples

TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def doc_examples() -> dict[str, list[dict[str, Any]]]:
    """The JSON examples of docs/mqtt.md by section (``state``, ``event``, ...)."""
    examples: dict[str, list[dict[str, Any]]] = {}
    section = ""
    in_json = False
    block: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("### "):
            section = line[4:].strip()
        elif line.strip() == "```json":
            in_json, block = True, []
        elif line.strip() == "```" and in_json:
            in_json = False
            examples.setdefault(section, []).append(json.loads("\n".join(block)))
        elif in_json:
            block.append(line)
    return examples


def json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_same_shape(doc: dict[str, Any], real: dict[str, Any], where: str) -> None:
    """Same keys; same JSON types where both are known; timestamps in the one format."""
    assert set(doc) == set(real), f"{where}: docs {sorted(set(doc) ^ set(real))} differ"
    for key, documented in doc.items():
        actual = real[key]
        if isinstance(documented, str) and (key in {"ts", "since"} or key.endswith("_utc")):
            assert TIMESTAMP_RE.fullmatch(documented), f"{where}.{key}: {documented}"
        if isinstance(actual, str) and (key in {"ts", "since"} or key.endswith("_utc")):
            assert TIMESTAMP_RE.fullmatch(actual), f"{where}.{key}: {actual}"
        if documented is None or actual is None:
            continue
        assert json_kind(documented) == json_kind(actual), f"{where}.{key}"
        if isinstance(documented, dict) and key not in ("stage_s", "continuous_s_at_kmh"):
            assert_same_shape(documented, actual, f"{where}.{key}")


async def test_docs_examples_have_the_shape_of_real_payloads(
    collected: dict[str, list[dict[str, Any]]],
) -> None:
    examples = doc_examples()
    idle, running, faulted = collected["state"][:3]
    state_doc, fault_doc = examples["state"]
    assert running["session"] is not None, "the demo config runs the training program"
    assert_same_shape(state_doc, running, "state")
    assert_same_shape(fault_doc["fault"], faulted["fault"], "state.fault")
    (diagnostics_doc,) = examples["diagnostics"]
    # The service under test runs without MQTT: add a real publisher's counters.
    publisher_stats = dataclasses.asdict(MqttPublisher(SETTINGS, on_command=print).stats)
    real_diagnostics = {**collected["diagnostics"][-1], "mqtt": publisher_stats}
    assert_same_shape(diagnostics_doc, real_diagnostics, "diagnostics")
    (session_doc,) = examples["session"]
    assert_same_shape(session_doc, collected["session"][0], "session")
    assert re.fullmatch(r"[0-9a-f]{32}", str(running["session"]["session_id"]))
    assert re.fullmatch(r"[0-9a-f]{32}", session_doc["session_id"])
    real_events = {e["kind"]: e for e in collected["event"]}
    for event_doc in examples["event"]:
        assert {"ts", "kind", "message"} <= set(event_doc)
        assert TIMESTAMP_RE.fullmatch(event_doc["ts"])
        real = real_events.get(event_doc["kind"])
        if real is not None:
            assert set(event_doc) <= set(real) | {"stage", "speed_kmh"}, event_doc["kind"]
    assert idle["state"] == "idle"

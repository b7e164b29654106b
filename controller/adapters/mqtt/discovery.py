"""Home Assistant MQTT discovery configs for one treadmill, from a table.

Pure: builds ``(topic, JSON payload)`` pairs that the publisher sends retained after
every connect and whenever Home Assistant announces ``online`` on
``homeassistant/status``. :data:`ENTITIES` is the whole dashboard: one row per entity,
naming the topic it reads (``state``, ``session``, ``diagnostics``, ``event``) or writes
(``command``), its template and its Home Assistant options. The entity table in
docs/mqtt.md is generated from it (:func:`entity_reference_markdown`).

Every entity goes ``unavailable`` when ``<prefix>/availability`` reads ``offline`` (the
broker publishes that will when the controller's connection dies). Entities on the state
topic also expire when no state has arrived for ``expire_after`` seconds (3 x the state
heartbeat), those on the diagnostics topic after 3 x its interval.

Conventions (docs/mqtt.md, "Home Assistant"):

* binary_sensor ``grip``: **on = at least one hand on a rail**.
* binary_sensor ``safety_key`` and ``estop`` (device class ``safety``): **on = unsafe**,
  i.e. the key is removed / the mushroom stop is pressed.
* binary_sensor ``fault`` (``problem``): on = a fault is latched; its attributes carry
  ``code``, ``message`` and ``since``.
* binary_sensor ``channels_disagree`` (``problem``): on = the two belt speed channels
  disagree (SR-CHAN-2); off when they agree or cannot be compared (one channel).
* binary_sensor ``key_relay``: on = the Pi holds the key-circuit relay closed (key-relay
  mode, SR-MON-1); always off when our firmware drives the belt.
* button ``stop``: publishes ``PRESS`` to ``<prefix>/cmd/stop``.
* number ``target_speed`` and select ``stage_cap`` **can only lower** (SR-REMOTE-2,
  SR-REMOTE-3): Home Assistant offers the whole range, the controller refuses a raise
  with a ``command_rejected`` event and the entity snaps back to the real value.
* event ``safety_event``: ``grip_lost``, ``fault`` and ``start_refused`` from the event topic.

Per-entity discovery topics (not the single device payload): they work with every Home
Assistant release that has the ``event`` entity (2023.8); the device payload needs 2024.12.
There is no ``configuration_url`` (the controller has no web page) and no serial number
(the firmware's HELLO carries none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from controller.rules.model import FaultCode, Mode

if TYPE_CHECKING:  # only attribute access at run time: keeps this module free of aiomqtt
    from controller.adapters.mqtt.settings import MqttSettings

__all__ = [
    "DRIVE_MODES",
    "ENTITIES",
    "EVENT_TYPES",
    "MANUFACTURER",
    "MODEL",
    "Entity",
    "discovery_messages",
    "entity_reference_markdown",
    "node_id",
]

MANUFACTURER: Final[str] = "treadmill-controller"
MODEL: Final[str] = "Backward-walking treadmill controller"
ORIGIN_NAME: Final[str] = "treadmill-controller"
EVENT_TYPES: Final[tuple[str, ...]] = ("grip_lost", "fault", "start_refused")
"""Event kinds the ``event`` entity fires on (the others stay on the event topic only)."""
DRIVE_MODES: Final[tuple[str, ...]] = ("firmware", "key_relay")
"""Values of the state's ``drive_mode`` (``drive.mode`` in the config)."""
HA_STATE_MAX_CHARS: Final[int] = 255
"""Home Assistant refuses a sensor state longer than this."""

Source = Literal["state", "session", "diagnostics", "event", "command"]


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: where it reads (or writes), and its options.

    ``value`` is the Jinja ``value_template`` (``None`` for buttons); ``options`` are the
    remaining discovery keys (device class, unit, icon, ...). ``command`` is the command
    name under ``<prefix>/cmd/`` for buttons, numbers and selects.
    """

    component: Literal["sensor", "binary_sensor", "button", "number", "select", "event"]
    object_id: str
    name: str
    source: Source
    value: str | None
    options: Mapping[str, object] = field(default_factory=dict)
    attributes: str | None = None  # json_attributes_template on the same topic
    command: str | None = None
    diagnostic: bool = False
    what: str = ""  # one line for the docs


def _v(path: str) -> str:
    return f"{{{{ value_json.{path} }}}}"


def _on_when(condition: str) -> str:
    return f"{{{{ 'ON' if {condition} else 'OFF' }}}}"


def _session_field(name: str) -> str:
    return f"{{{{ value_json.session.{name} if value_json.session else None }}}}"


_SPEED: Final[Mapping[str, object]] = {
    "device_class": "speed",
    "unit_of_measurement": "km/h",
    "state_class": "measurement",
    "suggested_display_precision": 1,
}
_COUNT: Final[Mapping[str, object]] = {"state_class": "total_increasing", "icon": "mdi:counter"}

ENTITIES: Final[tuple[Entity, ...]] = (
    # ------------------------------------------------------------ live state
    Entity("sensor", "speed", "Belt speed", "state", _v("speed_kmh"),
           {**_SPEED, "icon": "mdi:speedometer"}, what="measured belt speed"),
    Entity("sensor", "target", "Target speed", "state", _v("target_kmh"), _SPEED,
           what="the speed asked for"),
    Entity("sensor", "commanded", "Commanded speed", "state", _v("commanded_kmh"), _SPEED,
           diagnostic=True, what="the ramped set-point sent to the firmware"),
    Entity("sensor", "stage", "Stage", "state", _v("stage"), {"icon": "mdi:stairs"},
           attributes=(
               "{{ {'stage_name': value_json.stage_name,"
               " 'stage_max_kmh': value_json.stage_max_kmh,"
               " 'stage_cap': value_json.stage_cap,"
               " 'remote_stage_cap': value_json.remote_stage_cap} | tojson }}"
           ),
           what="current stage; attributes: name, limit, caps"),
    Entity("sensor", "state", "State", "state", _v("state"),
           {"device_class": "enum", "options": [m.value for m in Mode]},
           attributes=(
               "{{ {'stop_reason': value_json.stop_reason,"
               " 'warnings': value_json.warnings} | tojson }}"
           ),
           what="idle, running, stopping, faulted"),
    Entity("sensor", "fault_code", "Fault", "state",
           "{{ value_json.fault.code if value_json.fault else 'none' }}",
           {"device_class": "enum", "options": ["none", *(c.value for c in FaultCode)],
            "icon": "mdi:alert-octagon"},
           what="the latched fault's code, `none` when clear"),
    Entity("sensor", "fault_message", "Fault message", "state",
           "{{ (value_json.fault.message if value_json.fault else 'none')"
           f"[:{HA_STATE_MAX_CHARS}] }}}}",
           {"icon": "mdi:message-alert"},
           what="what was seen and what to do (first 255 characters)"),
    Entity("sensor", "stop_reason", "Last stop reason", "state",
           "{{ value_json.stop_reason or 'none' }}", {"icon": "mdi:stop-circle-outline"},
           what="why the belt last stopped (`stop_button`, `grip_lost`, ...)"),
    Entity("sensor", "session_time", "Session time", "state", _session_field("elapsed_s"),
           {"device_class": "duration", "unit_of_measurement": "s"},
           what="the running session's time"),
    Entity("sensor", "session_remaining", "Session time remaining", "state",
           _session_field("remaining_s"),
           {"device_class": "duration", "unit_of_measurement": "s"},
           what="time left of the stage's session limit"),
    Entity("sensor", "session_distance", "Session distance", "state",
           _session_field("distance_m"),
           {"device_class": "distance", "unit_of_measurement": "m",
            "state_class": "total_increasing"},
           what="the running session's distance"),
    Entity("sensor", "firmware_version", "Firmware version", "state",
           "{{ value_json.firmware.version or 'unknown' }}", {"icon": "mdi:chip"},
           diagnostic=True, what="from the firmware's HELLO"),
    Entity("binary_sensor", "grip", "Handrail grip", "state",
           _on_when("value_json.grip != 'none'"), {"icon": "mdi:hand-back-right"},
           attributes="{{ {'grip': value_json.grip} | tojson }}",
           what="on = at least one hand on a rail"),
    Entity("binary_sensor", "safety_key", "Safety key removed", "state",
           _on_when("not value_json.safety_key"), {"device_class": "safety"},
           what="on = unsafe: the key is out"),
    Entity("binary_sensor", "estop", "Emergency stop pressed", "state",
           _on_when("value_json.estop"), {"device_class": "safety"},
           what="on = unsafe: the mushroom stop is pressed"),
    Entity("binary_sensor", "fault", "Fault latched", "state", _on_when("value_json.fault"),
           {"device_class": "problem"},
           attributes="{{ (value_json.fault or {}) | tojson }}",
           what="on = a fault is latched; attributes: code, message, since, stop"),
    Entity("binary_sensor", "running", "Belt running", "state",
           _on_when("value_json.state in ['running', 'stopping']"),
           {"device_class": "running"}, what="running or stopping"),
    Entity("binary_sensor", "firmware_link", "Firmware link", "state",
           _on_when("value_json.firmware.link"), {"device_class": "connectivity"},
           diagnostic=True, what="fresh STATUS from the firmware"),
    Entity("sensor", "belt_sensor_speed", "Pi belt sensor speed", "state",
           _v("belt_sensor_kmh"), _SPEED,
           what="the Pi's own belt sensor (second channel); unknown when not fitted"),
    Entity("binary_sensor", "channels_disagree", "Speed channels disagree", "state",
           _on_when("value_json.channels_agree == false"),
           {"device_class": "problem"},
           what="on = the firmware's and the Pi's readings differ (SR-CHAN-2); off "
                "when they agree or cannot be compared"),
    Entity("sensor", "drive_mode", "Drive mode", "state", _v("drive_mode"),
           {"device_class": "enum", "options": list(DRIVE_MODES), "icon": "mdi:cog"},
           diagnostic=True, what="`firmware` or `key_relay`"),
    Entity("binary_sensor", "key_relay", "Key relay closed", "state",
           _on_when("value_json.key_relay == 'closed'"),
           {"icon": "mdi:electric-switch-closed"},
           what="key-relay mode: on = the Pi holds the key circuit closed (SR-MON-1)"),
    # ------------------------------------------------------------ remote: only safer
    Entity("button", "stop", "Stop", "command", None,
           {"icon": "mdi:stop-circle", "payload_press": "PRESS"}, command="stop",
           what="controlled stop (SR-REMOTE-1)"),
    Entity("number", "target_speed", "Lower target speed", "state", _v("target_kmh"),
           {"device_class": "speed", "unit_of_measurement": "km/h", "min": 0.0,
            "step": 0.1, "mode": "box", "icon": "mdi:speedometer-slow"},
           command="target_kmh",
           what="lower only (SR-REMOTE-2): a raise is refused; 0 stops the belt"),
    Entity("select", "stage_cap", "Lower stage cap", "state", None,
           {"icon": "mdi:stairs-down"}, command="stage_cap",
           what="lower only (SR-REMOTE-3); lifted by a RESET at the console"),
    # ------------------------------------------------------------ events
    Entity("event", "safety_event", "Safety event", "event",
           "{{ {'event_type': value_json.kind, 'message': value_json.message} | tojson"
           f" if value_json.kind in {list(EVENT_TYPES)} else '' }}}}",
           {"event_types": list(EVENT_TYPES), "icon": "mdi:alert"},
           what="fires on " + ", ".join(f"`{k}`" for k in EVENT_TYPES)),
    # ------------------------------------------------------------ the last session
    Entity("sensor", "last_session_distance", "Last session distance", "session",
           _v("distance_m"), {"device_class": "distance", "unit_of_measurement": "m"},
           what="from the retained session record"),
    Entity("sensor", "last_session_moving_time", "Last session moving time", "session",
           _v("moving_s"), {"device_class": "duration", "unit_of_measurement": "s"},
           what="time the belt moved"),
    Entity("sensor", "last_session_max_speed", "Last session top speed", "session",
           _v("max_kmh"), {k: v for k, v in _SPEED.items() if k != "state_class"},
           what="highest measured speed"),
    Entity("sensor", "last_session_avg_speed", "Last session average speed", "session",
           _v("avg_kmh"), {k: v for k, v in _SPEED.items() if k != "state_class"},
           what="distance / moving time"),
    Entity("sensor", "last_session_grip_losses", "Last session grip losses", "session",
           _v("grip_losses"), {"icon": "mdi:hand-back-right-off"},
           what="grip missing beyond the grace time"),
    # ------------------------------------------------------------ diagnostics
    Entity("sensor", "link_crc_errors", "Link CRC errors", "diagnostics",
           _v("crc_errors"), _COUNT, diagnostic=True, what="serial frames with a bad CRC"),
    Entity("sensor", "link_retransmits", "Link retransmits", "diagnostics",
           _v("retransmits"), _COUNT, diagnostic=True, what="commands sent again"),
    Entity("sensor", "link_reconnects", "Link reconnects", "diagnostics",
           _v("reconnects"), _COUNT, diagnostic=True, what="serial port re-opened"),
    Entity("sensor", "loop_lateness_p99", "Control loop lateness p99", "diagnostics",
           _v("loop.lateness_p99_ms"),
           {"unit_of_measurement": "ms", "state_class": "measurement",
            "suggested_display_precision": 2, "icon": "mdi:timer-alert"},
           diagnostic=True, what="99th percentile of the 50 Hz tick lateness"),
)  # fmt: skip


def node_id(settings: MqttSettings) -> str:
    """The discovery node id, ``treadmill_<treadmill_id>``."""
    return f"treadmill_{settings.treadmill_id}"


def _topic_of(settings: MqttSettings, source: Source) -> str | None:
    return {
        "state": settings.state_topic,
        "session": settings.session_topic,
        "diagnostics": settings.diagnostics_topic,
        "event": settings.event_topic,
        "command": None,
    }[source]


def _config(entity: Entity, settings: MqttSettings) -> dict[str, object]:
    """The discovery config of ``entity`` without the shared keys."""
    config: dict[str, object] = {"name": entity.name, **entity.options}
    topic = _topic_of(settings, entity.source)
    if topic is not None:
        config["state_topic"] = topic
    if entity.value is not None:
        config["value_template"] = entity.value
    if entity.attributes is not None:
        config["json_attributes_topic"] = topic
        config["json_attributes_template"] = entity.attributes
    if entity.source == "state":
        config["expire_after"] = math.ceil(3 * settings.state_heartbeat_s)
    elif entity.source == "diagnostics":
        config["expire_after"] = math.ceil(3 * settings.diagnostics_interval_s)
    if entity.diagnostic:
        config["entity_category"] = "diagnostic"
    if entity.command is not None:
        config.update(
            command_topic=f"{settings.command_prefix}{entity.command}", qos=1, retain=False
        )
    if entity.component == "number":
        config["max"] = settings.max_speed_kmh
    if entity.component == "select":
        stages = [str(n) for n in range(1, settings.max_stage + 1)]
        config["options"] = stages
        # The cap in force: the lower of the training program's and the remote one.
        config["value_template"] = (
            f"{{{{ ([value_json.stage_cap or {settings.max_stage},"
            f" value_json.remote_stage_cap or {settings.max_stage}] | min) | string }}}}"
        )
    return config


def discovery_messages(settings: MqttSettings) -> list[tuple[str, str]]:
    """Every discovery config for ``settings``' treadmill as ``(topic, JSON payload)``.

    Topics are ``<discovery_prefix>/<component>/treadmill_<id>/<object_id>/config``;
    publish them retained (QoS 1). An empty retained payload on a topic deletes that
    entity in Home Assistant.
    """
    node = node_id(settings)
    common: dict[str, object] = {
        "availability_topic": settings.availability_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [node],
            "name": settings.device_name,
            "manufacturer": MANUFACTURER,
            "model": MODEL,
            "sw_version": settings.sw_version,
        },
        "origin": {"name": ORIGIN_NAME, "sw_version": settings.sw_version},
    }
    messages: list[tuple[str, str]] = []
    for entity in ENTITIES:
        payload = {**_config(entity, settings), **common, "unique_id": f"{node}_{entity.object_id}"}
        topic = f"{settings.discovery_prefix}/{entity.component}/{node}/{entity.object_id}/config"
        messages.append((topic, json.dumps(payload, sort_keys=True)))
    return messages


def entity_reference_markdown() -> str:
    """The entity table of docs/mqtt.md ("Home Assistant"), generated from :data:`ENTITIES`."""
    lines = [
        "| component | object id | name | reads | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in ENTITIES:
        reads = f"`cmd/{e.command}`" if e.source == "command" else f"`{e.source}`"
        if e.command is not None and e.source != "command":
            reads += f", writes `cmd/{e.command}`"
        name = e.name + (" (diagnostic)" if e.diagnostic else "")
        lines.append(f"| {e.component} | `{e.object_id}` | {name} | {reads} | {e.what} |")
    return "\n".join(lines) + "\n"

"""Home Assistant MQTT discovery configs for one treadmill.

Pure: builds ``(topic, JSON payload)`` pairs that the publisher sends retained after
every connect and whenever Home Assistant announces ``online`` on
``homeassistant/status``. Every entity reads the retained ``<prefix>/state`` JSON
(:func:`controller.telemetry.state_payload`) through a ``value_template`` and goes
``unavailable`` when ``<prefix>/availability`` reads ``offline`` (the broker publishes
that will when the controller's connection dies) or when no state has arrived for
``expire_after`` seconds (the publisher re-sends an unchanged state every
``state_heartbeat_s``).

Conventions (docs/mqtt.md, "Home Assistant"):

* binary_sensor ``grip``: **on = at least one hand on a rail**.
* binary_sensor ``safety_key`` and ``estop`` (device class ``safety``): **on = unsafe**,
  i.e. the key is removed / the mushroom stop is pressed.
* binary_sensor ``fault`` (``problem``): on = a fault is latched; its attributes carry
  ``code``, ``message`` and ``since``.
* binary_sensor ``firmware_link`` (``connectivity``): on = fresh firmware STATUS.
* button ``stop``: publishes ``PRESS`` to ``<prefix>/cmd/stop``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Final

from controller.model import Mode

if TYPE_CHECKING:  # only attribute access at run time: keeps this module free of aiomqtt
    from controller.mqtt import MqttSettings

__all__ = ["MANUFACTURER", "MODEL", "discovery_messages", "node_id"]

MANUFACTURER: Final[str] = "treadmill-controller"
MODEL: Final[str] = "Backward-walking treadmill controller"
ORIGIN_NAME: Final[str] = "treadmill-controller"


def node_id(settings: MqttSettings) -> str:
    """The discovery node id, ``treadmill_<treadmill_id>``."""
    return f"treadmill_{settings.treadmill_id}"


def _session_field(field: str) -> str:
    return f"{{{{ value_json.session.{field} if value_json.session else None }}}}"


def discovery_messages(settings: MqttSettings) -> list[tuple[str, str]]:
    """Every discovery config for ``settings``' treadmill as ``(topic, JSON payload)``.

    Topics are ``<discovery_prefix>/<component>/treadmill_<id>/<object_id>/config``;
    publish them retained (QoS 1). An empty retained payload on a topic deletes that
    entity in Home Assistant.
    """
    node = node_id(settings)
    prefix = settings.topic_prefix
    state_topic = f"{prefix}/state"
    expire_after_s = math.ceil(3 * settings.state_heartbeat_s)
    device = {
        "identifiers": [node],
        "name": settings.device_name,
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "sw_version": settings.sw_version,
    }
    common: dict[str, object] = {
        "availability_topic": f"{prefix}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": ORIGIN_NAME, "sw_version": settings.sw_version},
    }
    from_state: dict[str, object] = {
        "state_topic": state_topic,
        "expire_after": expire_after_s,
    }

    def speed(field: str, name: str, **extra: object) -> dict[str, object]:
        return {
            "name": name,
            "device_class": "speed",
            "unit_of_measurement": "km/h",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "value_template": f"{{{{ value_json.{field} }}}}",
            **from_state,
            **extra,
        }

    def on_when(condition: str) -> str:
        return f"{{{{ 'ON' if {condition} else 'OFF' }}}}"

    entities: list[tuple[str, str, dict[str, object]]] = [
        ("sensor", "speed", speed("speed_kmh", "Belt speed", icon="mdi:speedometer")),
        ("sensor", "target", speed("target_kmh", "Target speed")),
        (
            "sensor",
            "commanded",
            speed("commanded_kmh", "Commanded speed", entity_category="diagnostic"),
        ),
        (
            "sensor",
            "stage",
            {
                "name": "Stage",
                "icon": "mdi:stairs",
                "value_template": "{{ value_json.stage }}",
                "json_attributes_topic": state_topic,
                "json_attributes_template": (
                    "{{ {'stage_name': value_json.stage_name,"
                    " 'stage_max_kmh': value_json.stage_max_kmh,"
                    " 'stage_cap': value_json.stage_cap,"
                    " 'remote_stage_cap': value_json.remote_stage_cap} | tojson }}"
                ),
                **from_state,
            },
        ),
        (
            "sensor",
            "state",
            {
                "name": "State",
                "device_class": "enum",
                "options": [m.value for m in Mode],
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": state_topic,
                "json_attributes_template": (
                    "{{ {'stop_reason': value_json.stop_reason,"
                    " 'warnings': value_json.warnings} | tojson }}"
                ),
                **from_state,
            },
        ),
        (
            "sensor",
            "session_time",
            {
                "name": "Session time",
                "device_class": "duration",
                "unit_of_measurement": "s",
                "value_template": _session_field("elapsed_s"),
                **from_state,
            },
        ),
        (
            "sensor",
            "session_remaining",
            {
                "name": "Session time remaining",
                "device_class": "duration",
                "unit_of_measurement": "s",
                "value_template": _session_field("remaining_s"),
                **from_state,
            },
        ),
        (
            "sensor",
            "session_distance",
            {
                "name": "Session distance",
                "device_class": "distance",
                "unit_of_measurement": "m",
                "state_class": "total_increasing",
                "value_template": _session_field("distance_m"),
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "grip",
            {
                "name": "Handrail grip",
                "icon": "mdi:hand-back-right",
                "value_template": on_when("value_json.grip != 'none'"),
                "json_attributes_topic": state_topic,
                "json_attributes_template": "{{ {'grip': value_json.grip} | tojson }}",
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "safety_key",
            {
                "name": "Safety key removed",
                "device_class": "safety",
                "value_template": on_when("not value_json.safety_key"),
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "estop",
            {
                "name": "Emergency stop pressed",
                "device_class": "safety",
                "value_template": on_when("value_json.estop"),
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "fault",
            {
                "name": "Fault",
                "device_class": "problem",
                "value_template": on_when("value_json.fault"),
                "json_attributes_topic": state_topic,
                "json_attributes_template": "{{ (value_json.fault or {}) | tojson }}",
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "running",
            {
                "name": "Belt running",
                "device_class": "running",
                "value_template": on_when("value_json.state in ['running', 'stopping']"),
                **from_state,
            },
        ),
        (
            "binary_sensor",
            "firmware_link",
            {
                "name": "Firmware link",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "value_template": on_when("value_json.firmware.link"),
                **from_state,
            },
        ),
        (
            "button",
            "stop",
            {
                "name": "Stop",
                "icon": "mdi:stop-circle",
                "command_topic": f"{prefix}/cmd/stop",
                "payload_press": "PRESS",
                "qos": 1,
                "retain": False,
            },
        ),
    ]
    messages: list[tuple[str, str]] = []
    for component, object_id, config in entities:
        payload = {
            **config,
            **common,
            "unique_id": f"{node}_{object_id}",
        }
        topic = f"{settings.discovery_prefix}/{component}/{node}/{object_id}/config"
        messages.append((topic, json.dumps(payload, sort_keys=True)))
    return messages

"""The MQTT adapter's settings: broker, TLS, topics, rates and the credentials file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from controller.settings.bounds import MQTT_BOUNDS

PROTOCOLS: Final[tuple[str, ...]] = ("auto", "5", "3.1.1")
"""Accepted ``MqttSettings.protocol`` values."""


_ID_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the broker. ``ca_file`` verifies the broker (hostname checked);
    ``cert_file``/``key_file`` give a client certificate when the broker asks for one."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            msg = (
                f"mqtt.tls: cert_file and key_file go together, got cert_file={self.cert_file} "
                f"and key_file={self.key_file}; give both for a client certificate, or neither"
            )
            raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """Everything the publisher needs. Validated here too, against the same bounds as the
    config (:data:`controller.settings.bounds.MQTT_BOUNDS`); errors name the field.

    ``topic_prefix`` defaults to ``treadmill/<treadmill_id>`` and ``client_id`` to
    ``treadmill-<treadmill_id>`` when left empty. ``max_stage`` (the number of stages)
    and ``max_speed_kmh`` (the machine ceiling) bound what the command parser accepts;
    the core still decides whether a value lowers the current one.
    ``state_heartbeat_s``: an unchanged but fresh state is re-sent this often, so Home
    Assistant's ``expire_after`` (3 x heartbeat) only fires when the controller stops
    producing states. Rates (docs/mqtt.md, "Rates"): a state whose state fields changed goes
    out at most ``state_rate_hz``; one where only measurements (speeds) changed at most every
    ``measurement_interval_s``; one where only the session counters changed at most every
    ``counter_interval_s``. ``protocol``: ``auto`` (MQTT 5, then 3.1.1 if the broker refuses
    5 or does not answer a 5 CONNECT), ``5`` or ``3.1.1``.
    """

    host: str
    port: int = 1883
    treadmill_id: str
    topic_prefix: str = ""
    client_id: str = ""
    keepalive_s: int = 30
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    state_rate_hz: float = 5.0
    measurement_interval_s: float = 1.0
    counter_interval_s: float = 10.0
    diagnostics_interval_s: float = 60.0
    state_heartbeat_s: float = 30.0
    protocol: str = "auto"
    max_payload_bytes: int = 1024
    event_queue_size: int = 100
    device_name: str
    sw_version: str
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_stage: int
    max_speed_kmh: float

    def __post_init__(self) -> None:
        def bad(key: str, seen: object, allowed: str) -> ValueError:
            return ValueError(f"mqtt.{key}: got {seen!r}; allowed: {allowed}")

        if _ID_RE.fullmatch(self.treadmill_id) is None:
            raise bad("treadmill_id", self.treadmill_id, "1-32 characters of A-Z a-z 0-9 _ -")
        if not self.topic_prefix:
            object.__setattr__(self, "topic_prefix", f"treadmill/{self.treadmill_id}")
        if not self.client_id:
            object.__setattr__(self, "client_id", f"treadmill-{self.treadmill_id}")
        for key in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, key)
            levels = value.split("/")
            if any(not level or any(c in level for c in "+#\0") for level in levels):
                raise bad(key, value, "topic levels separated by '/', none empty, no + # or NUL")
        if not self.host:
            raise bad("host", self.host, "a host name or address")
        if self.password is not None and self.username is None:
            raise ValueError("mqtt.password: a password was given without a username")
        for key, bound in MQTT_BOUNDS.items():
            value = getattr(self, key)
            if not bound.contains(value):
                raise bad(key, value, bound.describe())
        if self.reconnect_max_s < self.reconnect_min_s:
            raise bad(
                "reconnect_max_s",
                self.reconnect_max_s,
                f"at least reconnect_min_s ({self.reconnect_min_s:g} s)",
            )
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", self.protocol, ", ".join(PROTOCOLS))

    @property
    def availability_topic(self) -> str:
        return f"{self.topic_prefix}/availability"

    @property
    def state_topic(self) -> str:
        return f"{self.topic_prefix}/state"

    @property
    def diagnostics_topic(self) -> str:
        return f"{self.topic_prefix}/diagnostics"

    @property
    def event_topic(self) -> str:
        return f"{self.topic_prefix}/event"

    @property
    def session_topic(self) -> str:
        return f"{self.topic_prefix}/session"

    @property
    def command_prefix(self) -> str:
        """``<prefix>/cmd/``; the command name is the rest of the topic."""
        return f"{self.topic_prefix}/cmd/"

    @property
    def ha_status_topic(self) -> str:
        return f"{self.discovery_prefix}/status"

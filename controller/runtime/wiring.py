"""The service's wiring: the config translated into each adapter's settings, and the firmware's
STATUS into the core's vocabulary.
"""

from __future__ import annotations

import logging
from pathlib import Path

from controller import version
from controller.adapters.gpio.inputs import (
    InputSpec,
)
from controller.adapters.mqtt.settings import MqttSettings, TlsSettings
from controller.rules.model import (
    FirmwareState,
    FirmwareStatus,
)
from controller.settings.credentials import read_mqtt_credentials
from controller.settings.schema import AppConfig
from firmware_bridge.port.bridge import FirmwareLimits, StatusSnapshot

logger = logging.getLogger(__name__)


def input_specs(config: AppConfig) -> list[InputSpec]:
    """GPIO wiring from the config, in the adapter's vocabulary."""
    specs = []
    for name, wiring in config.gpio.inputs.items():
        specs.append(
            InputSpec(
                name=name, pin=wiring.pin, active_high=wiring.active == "high", pull=wiring.pull
            )
        )
    return specs


def firmware_limits(config: AppConfig) -> FirmwareLimits:
    fw = config.firmware
    return FirmwareLimits(
        max_speed_kmh=fw.max_speed_kmh,
        max_accel_kmh_s=fw.max_accel_kmh_s,
        max_decel_kmh_s=fw.max_decel_kmh_s,
        max_lease_ms=fw.lease_ms,
    )


def software_version() -> str:
    """The controller's version (:func:`controller.version`, the one source)."""
    return version()


def mqtt_settings(config: AppConfig) -> MqttSettings:
    """The publisher's settings from the config (reads the credentials file)."""
    section = config.mqtt
    username = password = None
    if section.credentials_file is not None:
        credentials = read_mqtt_credentials(Path(section.credentials_file))
        if credentials.open_to_others:
            logger.warning(
                "%s: credentials file is readable by others; run chmod 600 on it",
                section.credentials_file,
            )
        username, password = credentials.username, credentials.password
    tls = None
    if section.tls is not None:
        tls = TlsSettings(
            ca_file=Path(section.tls.ca_file),
            cert_file=Path(section.tls.cert_file) if section.tls.cert_file else None,
            key_file=Path(section.tls.key_file) if section.tls.key_file else None,
        )
    return MqttSettings(
        host=section.host,
        port=section.port,
        treadmill_id=config.treadmill.id,
        topic_prefix=config.mqtt_topic_prefix,
        client_id=config.mqtt_client_id,
        keepalive_s=section.keepalive_s,
        tls=tls,
        username=username,
        password=password,
        discovery=section.discovery,
        discovery_prefix=section.discovery_prefix,
        state_rate_hz=section.state_rate_hz,
        measurement_interval_s=section.measurement_interval_s,
        counter_interval_s=section.counter_interval_s,
        diagnostics_interval_s=section.diagnostics_interval_s,
        protocol=section.protocol,
        max_payload_bytes=section.max_payload_bytes,
        event_queue_size=section.event_queue_size,
        device_name=config.treadmill.name,
        sw_version=software_version(),
        max_stage=len(config.stages),
        max_speed_kmh=config.firmware.max_speed_kmh,
    )


def firmware_status(snapshot: StatusSnapshot | None) -> FirmwareStatus | None:
    """Translate the bridge's latest STATUS into the core's vocabulary."""
    if snapshot is None:
        return None
    status = snapshot.status
    return FirmwareStatus(
        received_ms=snapshot.received_ms,
        measured_kmh=status.measured_kmh,
        commanded_kmh=status.commanded_kmh,
        state=FirmwareState(status.state.name.lower()),
        fault_code=int(status.fault),
        safety_key_closed=status.safety_key_closed,
        config_checksum=status.config_checksum,
        expected_config_checksum=snapshot.config_checksum_expected,
        boot_id=snapshot.boot_id,
    )

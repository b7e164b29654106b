"""The application configuration: YAML file -> validated, frozen :class:`AppConfig`.

Loading happens in three passes, and every problem of a pass is reported together, each as
``PATH:LINE:COL: key.path: message`` (see ``docs/configuration.md``):

1. **YAML** (:mod:`controller.yaml_loader`): syntax, duplicate keys, aliases, odd keys.
2. **Schema** (pydantic, ``extra="forbid"``, strict types): unknown keys, missing keys, wrong
   types, values outside their range. Range messages state the allowed range and the unit.
3. **Rules across keys**: fail-safe GPIO wiring, duplicate pins, limits above the firmware's
   ceilings, then :func:`controller.config_rules.check_safety_config` on the
   :class:`~controller.model.SafetyConfig` built from the file, and the training program's
   checks against the stage table. Their key paths are mapped back to the YAML.

Nothing here is a warning that lets a bad file through: a refused file means the service does
not start (exit status :data:`EXIT_CONFIG`, 78) and a reload keeps the previous config.
Warnings (things that work but are unwise, such as a ``/dev/ttyUSB0`` port) are returned by
:func:`load_config_report` and logged by :func:`load_config`.

A refused file gives lines such as::

    /etc/treadmill/treadmill.yaml:88:7: stages[1].max_kmh: must be more than 0 and at
      most 25 km/h; got 30   (on one line)
    /etc/treadmill/treadmill.yaml:52:18: gpio.inputs.grip_left.active: unsafe wiring: ...
"""

from __future__ import annotations

import logging
import math
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from controller.config_rules import (
    GRIP_GRACE_BOUND_MS,
    LEASE_MIN_MS,
    MACHINE_MAX_KMH_BOUND,
    STAGE_RATE_BOUND_KMH_S,
    STALE_MAX_MS,
    STOP_DECEL_MAX_KMH_S,
    STOP_DECEL_MIN_KMH_S,
    WIRE_RATE_MIN_KMH_S,
    check_safety_config,
)
from controller.errors import ConfigError, ConfigIssue, CredentialsError
from controller.model import (
    ChannelConfig,
    GripLossAction,
    KeyRelayConfig,
    SafetyConfig,
    StageConfig,
)
from controller.schema_errors import model_of as _model_of
from controller.schema_errors import number_text as _number
from controller.schema_errors import schema_issue
from controller.schema_errors import shown as _shown
from controller.training.config import TrainingConfig, check_against_stages
from controller.yaml_loader import (
    EXIT_CONFIG,
    KeyPart,
    KeyPath,
    YamlDocument,
    format_key_path,
    parse_yaml,
    read_config_text,
)

__all__ = [
    "EXIT_CONFIG",
    "SIM_PORT",
    "AppConfig",
    "ConfigError",
    "ConfigIssue",
    "LoadReport",
    "MqttCredentials",
    "load_config",
    "load_config_report",
    "load_config_text",
    "read_mqtt_credentials",
    "yaml_key_path",
]

logger = logging.getLogger(__name__)

#: ``serial.port: "sim://"`` runs the firmware simulator in-process instead of opening a port.
SIM_PORT = "sim://"

#: Baud rates the firmware's USB-serial bridge is built for.
STANDARD_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

#: Serial devices that use the Pi's own UART on BCM 14 (TXD) and 15 (RXD).
PI_UART_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")

#: Longest path a Unix socket accepts (sun_path is 108 bytes with the terminating NUL).
MAX_UNIX_SOCKET_PATH = 107


# --------------------------------------------------------------------------
# Range: a bound with a message that states the range and the unit
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """``Annotated[float, Range(0, 20, "km/h/s", low_open=True)]``: bounded number.

    A value outside is refused with "must be from 10 to 200 Hz; got 500" (or "more than 0
    and at most 20 km/h/s" when the low end is open). ``unit`` may be empty.
    """

    low: float
    high: float
    unit: str = ""
    low_open: bool = False

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.low_open:
            return f"more than {_number(self.low)} and at most {_number(self.high)}{unit}"
        return f"from {_number(self.low)} to {_number(self.high)}{unit}"

    def check(self, value: float) -> float:
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise PydanticCustomError(
                "out_of_range",
                "must be {allowed}; got {got}",
                {"allowed": self.describe(), "got": _number(value)},
            )
        return value

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source_type))


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

_SECTION = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

_ID_PATTERN = re.compile(r"[a-z0-9_-]{1,32}")
_CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOPIC_PART_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def _absolute_path(value: str, what: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{what} must be an absolute path (starting with /); got {value!r}")
    return value


class _Section(BaseModel):
    model_config = _SECTION


class TreadmillSection(_Section):
    """Which machine this is. ``id`` appears in MQTT topics and the session log."""

    id: str = Field(
        description="Machine id used in MQTT topics and the session log: 1 to 32 of a-z 0-9 _ -"
    )
    name: str = Field(default="Treadmill", min_length=1, max_length=64, description="Display name")
    model: str = Field(default="", max_length=64, description="Make and model, for reference")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"must be 1 to 32 characters from a-z, 0-9, '_' and '-'; got {value!r}"
            )
        return value


class SerialSection(_Section):
    """The USB serial link to the motor-controller firmware."""

    port: str = Field(
        description="Serial device, preferably /dev/serial/by-id/...; 'sim://' runs the "
        "firmware simulator in-process"
    )
    baud: int = Field(
        default=115200, description="Baud rate: " + ", ".join(map(str, STANDARD_BAUDS))
    )
    handshake_timeout_ms: Annotated[int, Range(100, 10_000, "ms")] = Field(
        default=1000, description="Wait this long for the firmware's HELLO reply"
    )
    link_timeout_ms: Annotated[int, Range(50, 5_000, "ms")] = Field(
        default=500, description="No valid frame for this long: the link is down, reconnect"
    )

    @field_validator("port")
    @classmethod
    def _valid_port(cls, value: str) -> str:
        if value == SIM_PORT:
            return value
        return _absolute_path(value, f"a serial port (or {SIM_PORT!r} for the simulator)")

    @field_validator("baud")
    @classmethod
    def _valid_baud(cls, value: int) -> int:
        if value not in STANDARD_BAUDS:
            raise ValueError(f"must be one of {', '.join(map(str, STANDARD_BAUDS))}; got {value}")
        return value

    @property
    def is_simulator(self) -> bool:
        """True when ``port`` asks for the in-process firmware simulator."""
        return self.port == SIM_PORT


class FirmwareSection(_Section):
    """Limits sent to the firmware in CONFIGURE; it also has compiled-in ceilings."""

    max_speed_kmh: Annotated[float, Range(0.5, MACHINE_MAX_KMH_BOUND, "km/h")] = Field(
        description="Machine ceiling: no stage and no command may go above it"
    )
    max_accel_kmh_s: Annotated[float, Range(WIRE_RATE_MIN_KMH_S, 5.0, "km/h/s")] = Field(
        default=1.0, description="Firmware acceleration ceiling; every stage's accel_kmh_s <= it"
    )
    max_decel_kmh_s: Annotated[float, Range(STOP_DECEL_MIN_KMH_S, 20.0, "km/h/s")] = Field(
        default=3.6,
        description="Firmware ceiling for controlled stops; stage and stop decelerations <= it",
    )
    lease_ms: Annotated[int, Range(LEASE_MIN_MS, STALE_MAX_MS, "ms")] = Field(
        default=300,
        description="Motion lease: the firmware stops unless SET_SPEED renews it; at most "
        "stale_ms and at least 3 control ticks",
    )
    stale_ms: Annotated[int, Range(50, STALE_MAX_MS, "ms")] = Field(
        default=500, description="Firmware STATUS older than this: stop and latch link_stale"
    )

    @field_validator("max_speed_kmh", "max_accel_kmh_s", "max_decel_kmh_s")
    @classmethod
    def _wire_resolution(cls, value: float) -> float:
        hundredths = value * 100.0
        if abs(hundredths - round(hundredths)) > 1e-6:
            raise ValueError(
                f"must be a multiple of 0.01, the resolution of the firmware link; got {value!r}"
            )
        return value


class OverspeedSection(_Section):
    """Overspeed fault: measured speed above the limit by max(abs_kmh, rel x limit)."""

    abs_kmh: Annotated[float, Range(0.05, 2.0, "km/h")] = Field(
        default=0.3, description="Absolute margin above the limit"
    )
    rel: Annotated[float, Range(0.0, 0.5)] = Field(
        default=0.05, description="Relative margin (fraction of the limit)"
    )
    duration_ms: Annotated[int, Range(50, 2000, "ms")] = Field(
        default=500, description="...for longer than this"
    )
    runaway_accel_kmh_s: Annotated[float, Range(0.1, 10.0, "km/h/s")] = Field(
        default=1.0,
        description="Above the limit plus margin and accelerating faster than this: runaway, "
        "ESTOP at once (no command accelerates this fast)",
    )
    runaway_window_ms: Annotated[int, Range(40, 1000, "ms")] = Field(
        default=200, description="The acceleration must be seen through both halves of this"
    )


class FollowSection(_Section):
    """Not-following fault: measured speed off the set-point by max(tol_kmh, rel x set-point)."""

    tol_kmh: Annotated[float, Range(0.1, 3.0, "km/h")] = Field(
        default=0.5, description="Absolute tolerance"
    )
    rel: Annotated[float, Range(0.0, 0.5)] = Field(
        default=0.10, description="Relative tolerance (fraction of the set-point)"
    )
    duration_ms: Annotated[int, Range(200, 10_000, "ms")] = Field(
        default=2000, description="...for longer than this"
    )
    lag_ms: Annotated[int, Range(0, 5000, "ms")] = Field(
        default=1000,
        description="Belt lag allowed while ramping: adds rate x lag to the tolerance",
    )


class LinkSection(_Section):
    """The serial link's health as the safety core judges it (SR-LINK-2, SR-LINK-3)."""

    settle_ms: Annotated[int, Range(0, 10_000, "ms")] = Field(
        default=500, description="Link up and fresh this long before a START is accepted"
    )
    window_ms: Annotated[int, Range(100, 10_000, "ms")] = Field(
        default=1000, description="Link-quality window"
    )
    loss_max: Annotated[float, Range(0.01, 0.9)] = Field(
        default=0.5,
        description="More than this share of the firmware's frames lost in a window: fault",
    )
    window_min_frames: Annotated[int, Range(1, 1000)] = Field(
        default=10, description="A window with fewer frames sent is not judged"
    )


class ControlSection(_Section):
    """The control loop and the plausibility checks of the safety core."""

    rate_hz: Annotated[int, Range(10, 200, "Hz")] = Field(
        default=50, description="Control loop rate; must divide 1000 (whole-ms ticks)"
    )
    stop_decel_kmh_s: Annotated[
        float, Range(STOP_DECEL_MIN_KMH_S, STOP_DECEL_MAX_KMH_S, "km/h/s")
    ] = Field(
        default=3.6,
        description="Deceleration of controller-initiated (Cat 1) stops (at most "
        "firmware.max_decel_kmh_s)",
    )
    standstill_kmh: Annotated[float, Range(0.0, 0.5, "km/h", low_open=True)] = Field(
        default=0.1, description="At or below this the belt counts as at rest"
    )
    speed_step_kmh: Annotated[float, Range(0.05, 1.0, "km/h")] = Field(
        default=0.1, description="FASTER / SLOWER button step"
    )
    overspeed: OverspeedSection = Field(default_factory=OverspeedSection)
    follow: FollowSection = Field(default_factory=FollowSection)
    link: LinkSection = Field(default_factory=LinkSection)
    moving_at_rest_ms: Annotated[int, Range(50, 2000, "ms")] = Field(
        default=500, description="Belt measured moving while it should be at rest this long: fault"
    )
    shutdown_timeout_s: Annotated[float, Range(1.0, 120.0, "s")] = Field(
        default=15.0,
        description="On SIGTERM, wait this long for the belt to stand still; at least a "
        "stop from max_speed_kmh plus 1 s",
    )

    @field_validator("rate_hz")
    @classmethod
    def _whole_ms_tick(cls, value: int) -> int:
        if 1000 % value:
            divisors = [hz for hz in range(10, 201) if 1000 % hz == 0]
            raise ValueError(
                f"must divide 1000 so that a tick is a whole number of milliseconds: one of "
                f"{', '.join(map(str, divisors))}; got {value}"
            )
        return value

    @property
    def tick_ms(self) -> int:
        """Control period in whole milliseconds (``rate_hz`` divides 1000)."""
        return 1000 // self.rate_hz


class GripSensorSection(_Section):
    """Handrail grip sensors: debounce and the plausibility of their signal."""

    debounce_ms: Annotated[int, Range(0, 500, "ms")] = Field(
        default=50, description="A touch counts once stable this long (a release counts at once)"
    )
    chatter_edges: Annotated[int, Range(2, 100)] = Field(
        default=10, description="This many grip edges..."
    )
    chatter_window_ms: Annotated[int, Range(100, 60_000, "ms")] = Field(
        default=1000, description="...inside this window flags the sensor as chattering"
    )
    stuck_window_ms: Annotated[int, Range(10_000, 86_400_000, "ms")] = Field(
        default=1_800_000, description="Grip reading unchanged this long while running: flag it"
    )
    max_grace_ms: Annotated[int, Range(0, GRIP_GRACE_BOUND_MS, "ms")] = Field(
        default=2000, description="Upper bound for any stage's grip.grace_ms"
    )
    regrip_ms: Annotated[int, Range(0, 2000, "ms")] = Field(
        default=500,
        description="During a grip loss a touch ends the loss only once held this long",
    )


InputName = Literal[
    "grip_left",
    "grip_right",
    "estop",
    "safety_key",
    "start",
    "stop",
    "faster",
    "slower",
    "stage_up",
    "stage_down",
    "reset",
    "trainer_key",
]


class InputPin(_Section):
    """Wiring of one GPIO input.

    ``active`` is the level the pin reads when the input is *asserted*: a hand on the grip,
    the e-stop pressed, the safety key **in place**, a button pressed, the trainer key on.
    ``pull`` is the Pi's internal resistor, which sets what an open circuit (a broken wire,
    an unplugged connector) reads: ``up`` -> high, ``down`` -> low.
    """

    pin: Annotated[int, Range(0, 27)] = Field(description="BCM GPIO number")
    active: Literal["high", "low"] = Field(description="Level that means asserted")
    pull: Literal["up", "down", "none"] = Field(description="Internal pull resistor")

    @property
    def active_high(self) -> bool:
        return self.active == "high"

    def open_circuit_reads_active(self) -> bool | None:
        """What a broken wire reads as: True asserted, False not, None floating (no pull)."""
        if self.pull == "none":
            return None
        return (self.pull == "up") == self.active_high


class GpioInputs(_Section):
    """Every GPIO input. ``trainer_key`` is optional (a key switch for trainer actions)."""

    grip_left: InputPin
    grip_right: InputPin
    estop: InputPin
    safety_key: InputPin
    start: InputPin
    stop: InputPin
    faster: InputPin
    slower: InputPin
    stage_up: InputPin
    stage_down: InputPin
    reset: InputPin
    trainer_key: InputPin | None = None

    def items(self) -> tuple[tuple[str, InputPin], ...]:
        """``(name, wiring)`` for every configured input, in schema order."""
        result: list[tuple[str, InputPin]] = []
        for name in type(self).model_fields:
            wiring = getattr(self, name)
            if wiring is not None:
                result.append((name, wiring))
        return tuple(result)


class GpioSection(_Section):
    """GPIO pin factory and input wiring."""

    pin_factory: Literal["lgpio", "mock"] = Field(
        default="lgpio", description="'lgpio' on a Raspberry Pi, 'mock' for the demo and tests"
    )
    mock_socket: str | None = Field(
        default=None,
        description="Only with mock: Unix socket through which the demo drives the mock pins",
    )
    inputs: GpioInputs

    @field_validator("mock_socket")
    @classmethod
    def _valid_socket(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _absolute_path(value, "mock_socket")
        if len(value.encode()) > MAX_UNIX_SOCKET_PATH:
            raise ValueError(
                f"a Unix socket path may be at most {MAX_UNIX_SOCKET_PATH} bytes; this one is "
                f"{len(value.encode())}: choose a shorter path"
            )
        return value


class BeltSensorAgree(_Section):
    """How closely the two belt speed channels must agree (SR-CHAN-2)."""

    abs_kmh: Annotated[float, Range(0.1, 2.0, "km/h")] = Field(
        default=0.4, description="Allowed difference: max(abs_kmh, rel x the higher reading)..."
    )
    rel: Annotated[float, Range(0.0, 0.5)] = Field(
        default=0.10, description="...relative part (fraction of the higher reading)"
    )
    lag_ms: Annotated[int, Range(0, 2000, "ms")] = Field(
        default=500, description="...plus ramp rate x lag_ms (the channels lag differently)"
    )
    duration_ms: Annotated[int, Range(100, 3000, "ms")] = Field(
        default=1000, description="Disagreement for longer than this: emergency stop, latched"
    )


class BeltSensorSection(_Section):
    """The Pi's own belt sensor (reed, hall or optical on a roller): a second speed channel,
    independent of the motor controller's sensor. Leave the section out when none is fitted
    (``treadmill verify-config`` then lists the double faults left uncovered)."""

    pin: Annotated[int, Range(2, 27)] = Field(description="BCM GPIO number of the sensor output")
    active: Literal["high", "low"] = Field(
        description="Level while a magnet (or mark) passes: a pulse starts at this edge"
    )
    pull: Literal["up", "down", "none"] = Field(
        description="Internal pull resistor (up for an open-collector hall sensor or a reed)"
    )
    distance_per_pulse_mm: Annotated[float, Range(5.0, 1000.0, "mm")] = Field(
        description="Belt travel per pulse: roller circumference / magnets (e.g. 250.9 / 4)"
    )
    debounce_ms: Annotated[float, Range(0.0, 20.0, "ms")] = Field(
        default=2.0, description="A pulse closer than this to the last one is contact bounce"
    )
    stale_ms: Annotated[int, Range(100, 3000, "ms")] = Field(
        default=1000, description="No pulse for this long: the sensor reads 0 km/h"
    )
    agree: BeltSensorAgree = Field(default_factory=BeltSensorAgree)

    def channel(self) -> ChannelConfig:
        """The core's view of this sensor (SR-CHAN-*)."""
        return ChannelConfig(
            agree_abs_kmh=self.agree.abs_kmh,
            agree_rel=self.agree.rel,
            agree_lag_ms=self.agree.lag_ms,
            disagree_ms=self.agree.duration_ms,
            distance_per_pulse_mm=self.distance_per_pulse_mm,
            debounce_ms=self.debounce_ms,
            stale_ms=self.stale_ms,
        )


class KeyRelaySection(_Section):
    """The key-circuit relay output (key-relay mode): toggled every control tick while motion
    is allowed, feeding a retriggerable monostable relay in series with the treadmill's safety
    key (docs/install.md)."""

    pin: Annotated[int, Range(2, 27)] = Field(description="BCM GPIO number of the relay output")
    hold_off_ms: Annotated[int, Range(20, 500, "ms")] = Field(
        default=100,
        description="The relay circuit's hold-off as built: it drops out this long after the "
        "last toggle (at least 3 control ticks)",
    )
    start_window_ms: Annotated[int, Range(2000, 60_000, "ms")] = Field(
        default=15_000,
        description="After START the belt must be seen moving within this, or the relay opens",
    )
    max_belt_decel_kmh_s: Annotated[float, Range(5.0, 50.0, "km/h/s")] = Field(
        default=15.0,
        description="A reading falling faster than this is a failed sensor, not a stopping belt",
    )


class DriveSection(_Section):
    """Who drives the belt: our motor-controller firmware, or the treadmill's own console
    with the Pi holding a key-circuit relay (key-relay mode, docs/safety.md SR-MON-*)."""

    mode: Literal["firmware", "key_relay"] = Field(
        default="firmware",
        description="firmware: our firmware drives the belt; key_relay: the treadmill's console "
        "drives it and the Pi can only stop it through its safety-key circuit",
    )
    key_relay: KeyRelaySection | None = Field(
        default=None, description="Only with mode: key_relay: the relay output"
    )


class StageGrip(_Section):
    """The grip interlock of one stage."""

    hands_required: Annotated[int, Range(0, 2, "hands")] = Field(
        description="Hands that must be on the rails (0 = grip not watched)"
    )
    on_loss: Literal["stop_latch", "slow", "warn", "none"] = Field(
        description="Once the grace time has passed: stop_latch, slow, warn or none"
    )
    grace_ms: Annotated[int, Range(0, GRIP_GRACE_BOUND_MS, "ms")] = Field(
        default=0,
        description="Grip may be missing this long before on_loss acts (at most "
        "grip_sensor.max_grace_ms)",
    )
    slow_to_kmh: Annotated[float, Range(0.0, MACHINE_MAX_KMH_BOUND, "km/h")] = Field(
        default=0.0, description="Only with on_loss: slow: ramp down to this speed"
    )


class StageSection(_Section):
    """One training stage. Its number is its position in the list, starting at 1."""

    name: str = Field(min_length=1, max_length=40, description="Display name")
    max_kmh: Annotated[float, Range(0.0, MACHINE_MAX_KMH_BOUND, "km/h", low_open=True)] = Field(
        description="Highest speed at this stage (at most firmware.max_speed_kmh)"
    )
    start_kmh: Annotated[float, Range(0.0, MACHINE_MAX_KMH_BOUND, "km/h", low_open=True)] = Field(
        description="The belt starts (from standstill) at this speed: above "
        "control.standstill_kmh, at most max_kmh"
    )
    accel_kmh_s: Annotated[float, Range(WIRE_RATE_MIN_KMH_S, STAGE_RATE_BOUND_KMH_S, "km/h/s")] = (
        Field(description="Acceleration towards a higher target (at most firmware.max_accel_kmh_s)")
    )
    decel_kmh_s: Annotated[float, Range(WIRE_RATE_MIN_KMH_S, STAGE_RATE_BOUND_KMH_S, "km/h/s")] = (
        Field(description="Deceleration towards a lower target (at most firmware.max_decel_kmh_s)")
    )
    grip: StageGrip
    clip_required: bool = Field(
        default=True, description="The safety key (clip cord) must be in place"
    )


class TlsSection(_Section):
    """TLS to the broker. ``cert_file`` and ``key_file`` go together (client certificate)."""

    ca_file: str = Field(description="CA certificate(s) that signed the broker's certificate")
    cert_file: str | None = Field(default=None, description="Client certificate (PEM)")
    key_file: str | None = Field(default=None, description="Client private key (PEM)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_path(value, "a TLS file")


class MqttSection(_Section):
    """Telemetry and remote commands over MQTT. Never on the safety path."""

    enabled: bool = Field(default=True, description="Publish telemetry and accept commands")
    host: str = Field(default="localhost", min_length=1, max_length=253, description="Broker")
    port: Annotated[int, Range(1, 65535)] = Field(default=1883, description="Broker port")
    client_id: str | None = Field(
        default=None, description="MQTT client id; default treadmill-<treadmill.id>"
    )
    keepalive_s: Annotated[int, Range(5, 600, "s")] = Field(
        default=30, description="MQTT keepalive"
    )
    tls: TlsSection | None = Field(default=None, description="TLS settings; null = plain TCP")
    credentials_file: str | None = Field(
        default=None,
        description="File holding one line 'username:password'; mode 600, owner treadmill",
    )
    topic_prefix: str = Field(
        default="treadmill/{id}", description="Topic prefix; {id} is replaced by treadmill.id"
    )
    discovery: bool = Field(default=True, description="Publish Home Assistant discovery")
    discovery_prefix: str = Field(
        default="homeassistant", description="Home Assistant discovery prefix"
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="MQTT version: auto tries 5, then 3.1.1 if the broker refuses or ignores 5",
    )
    state_rate_hz: Annotated[float, Range(0.2, 20.0, "Hz")] = Field(
        default=5.0, description="Highest rate of state messages (a state field changed)"
    )
    measurement_interval_s: Annotated[float, Range(0.2, 60.0, "s")] = Field(
        default=1.0, description="A state where only the speeds changed: at most this often"
    )
    counter_interval_s: Annotated[float, Range(1.0, 600.0, "s")] = Field(
        default=10.0,
        description="A state where only the session counters changed: at most this often",
    )
    diagnostics_interval_s: Annotated[float, Range(5.0, 3600.0, "s")] = Field(
        default=60.0, description="Link, loop and MQTT counters on <prefix>/diagnostics"
    )
    max_payload_bytes: Annotated[int, Range(256, 65_536, "bytes")] = Field(
        default=1024, description="Incoming command payloads larger than this are refused"
    )
    event_queue_size: Annotated[int, Range(10, 10_000, "events")] = Field(
        default=100, description="Events waiting for the broker; the oldest are dropped first"
    )

    @field_validator("client_id")
    @classmethod
    def _valid_client_id(cls, value: str | None) -> str | None:
        if value is not None and not _CLIENT_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'; got {value!r}"
            )
        return value

    @field_validator("credentials_file")
    @classmethod
    def _absolute_credentials(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_path(value, "credentials_file")

    @field_validator("topic_prefix")
    @classmethod
    def _valid_topic_prefix(cls, value: str) -> str:
        _check_topic(value.replace("{id}", "x"), allow_placeholder_hint=True)
        return value

    @field_validator("discovery_prefix")
    @classmethod
    def _valid_discovery_prefix(cls, value: str) -> str:
        _check_topic(value, allow_placeholder_hint=False)
        return value


def _check_topic(value: str, *, allow_placeholder_hint: bool) -> None:
    parts = value.split("/")
    if not value or any(not _TOPIC_PART_PATTERN.fullmatch(part) for part in parts):
        hint = " ('{id}' is replaced by treadmill.id)" if allow_placeholder_hint else ""
        raise ValueError(
            "must be topic levels of A-Z, a-z, 0-9, '_' and '-' separated by '/', with no "
            f"wildcards (+ #), no empty level and no leading or trailing '/'{hint}; got "
            f"{value!r}"
        )


class LoggingSection(_Section):
    """Log level and format (``journal``: no timestamps, journald adds them)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level"
    )
    format: Literal["journal", "plain"] = Field(
        default="journal", description="journal (for systemd) or plain (with timestamps)"
    )


class AppConfig(_Section):
    """The whole configuration file, validated. Frozen: build a new one to change it."""

    treadmill: TreadmillSection
    serial: SerialSection
    firmware: FirmwareSection
    control: ControlSection = Field(default_factory=ControlSection)
    grip_sensor: GripSensorSection = Field(default_factory=GripSensorSection)
    gpio: GpioSection
    drive: DriveSection = Field(default_factory=DriveSection)
    belt_sensor: BeltSensorSection | None = Field(
        default=None, description="The Pi's own belt sensor (second speed channel); optional"
    )
    stages: tuple[StageSection, ...] = Field(
        strict=False,  # a YAML list becomes a tuple: the config stays immutable
        min_length=1,
        max_length=20,
        description="The stage table, stage 1 first",
    )
    mqtt: MqttSection = Field(default_factory=MqttSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    state_dir: str = Field(
        default="/var/lib/treadmill", description="Writable directory for the session log"
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: str) -> str:
        return _absolute_path(value, "state_dir")

    def stage_configs(self) -> tuple[StageConfig, ...]:
        """The stage table in the safety core's vocabulary (numbers from 1)."""
        return tuple(
            StageConfig(
                number=index + 1,
                name=stage.name,
                max_kmh=stage.max_kmh,
                start_kmh=stage.start_kmh,
                accel_kmh_s=stage.accel_kmh_s,
                decel_kmh_s=stage.decel_kmh_s,
                grip_hands_required=stage.grip.hands_required,
                on_grip_loss=GripLossAction(stage.grip.on_loss),
                grip_grace_ms=stage.grip.grace_ms,
                grip_slow_kmh=stage.grip.slow_to_kmh,
                clip_required=stage.clip_required,
            )
            for index, stage in enumerate(self.stages)
        )

    def safety(self) -> SafetyConfig:
        """Every number the safety core decides with (see :data:`SAFETY_TO_YAML`)."""
        control = self.control
        grip = self.grip_sensor
        return SafetyConfig(
            stages=self.stage_configs(),
            machine_max_kmh=self.firmware.max_speed_kmh,
            stop_decel_kmh_s=control.stop_decel_kmh_s,
            lease_ms=self.firmware.lease_ms,
            stale_ms=self.firmware.stale_ms,
            standstill_kmh=control.standstill_kmh,
            speed_step_kmh=control.speed_step_kmh,
            overspeed_abs_kmh=control.overspeed.abs_kmh,
            overspeed_rel=control.overspeed.rel,
            overspeed_ms=control.overspeed.duration_ms,
            follow_tol_kmh=control.follow.tol_kmh,
            follow_rel=control.follow.rel,
            follow_ms=control.follow.duration_ms,
            follow_lag_ms=control.follow.lag_ms,
            moving_at_rest_ms=control.moving_at_rest_ms,
            grip_chatter_edges=grip.chatter_edges,
            grip_chatter_window_ms=grip.chatter_window_ms,
            grip_stuck_window_ms=grip.stuck_window_ms,
            max_grip_grace_ms=grip.max_grace_ms,
            second_channel=self.belt_sensor.channel() if self.belt_sensor is not None else None,
            link_settle_ms=control.link.settle_ms,
            link_window_ms=control.link.window_ms,
            link_loss_max=control.link.loss_max,
            link_window_min_frames=control.link.window_min_frames,
            grip_regrip_ms=grip.regrip_ms,
            runaway_accel_kmh_s=control.overspeed.runaway_accel_kmh_s,
            runaway_window_ms=control.overspeed.runaway_window_ms,
            key_relay=self.key_relay_config(),
        )

    def key_relay_config(self) -> KeyRelayConfig | None:
        """The core's key-relay settings in key-relay mode (None with our firmware)."""
        relay = self.drive.key_relay
        if self.drive.mode != "key_relay" or relay is None:
            return None
        return KeyRelayConfig(
            hold_off_ms=relay.hold_off_ms,
            start_window_ms=relay.start_window_ms,
            max_belt_decel_kmh_s=relay.max_belt_decel_kmh_s,
        )

    @property
    def mqtt_topic_prefix(self) -> str:
        """``mqtt.topic_prefix`` with ``{id}`` replaced by ``treadmill.id``."""
        return self.mqtt.topic_prefix.replace("{id}", self.treadmill.id)

    @property
    def mqtt_client_id(self) -> str:
        """``mqtt.client_id``, or ``treadmill-<id>`` when it is not set."""
        return self.mqtt.client_id or f"treadmill-{self.treadmill.id}"


# --------------------------------------------------------------------------
# SafetyConfig field -> YAML key path (one table, used to place rule problems)
# --------------------------------------------------------------------------

#: Where each :class:`~controller.model.SafetyConfig` field is written in the YAML.
SAFETY_TO_YAML: dict[str, KeyPath] = {
    "stages": ("stages",),
    "machine_max_kmh": ("firmware", "max_speed_kmh"),
    "lease_ms": ("firmware", "lease_ms"),
    "stale_ms": ("firmware", "stale_ms"),
    "stop_decel_kmh_s": ("control", "stop_decel_kmh_s"),
    "standstill_kmh": ("control", "standstill_kmh"),
    "speed_step_kmh": ("control", "speed_step_kmh"),
    "overspeed_abs_kmh": ("control", "overspeed", "abs_kmh"),
    "overspeed_rel": ("control", "overspeed", "rel"),
    "overspeed_ms": ("control", "overspeed", "duration_ms"),
    "follow_tol_kmh": ("control", "follow", "tol_kmh"),
    "follow_rel": ("control", "follow", "rel"),
    "follow_ms": ("control", "follow", "duration_ms"),
    "follow_lag_ms": ("control", "follow", "lag_ms"),
    "moving_at_rest_ms": ("control", "moving_at_rest_ms"),
    "grip_chatter_edges": ("grip_sensor", "chatter_edges"),
    "grip_chatter_window_ms": ("grip_sensor", "chatter_window_ms"),
    "grip_stuck_window_ms": ("grip_sensor", "stuck_window_ms"),
    "max_grip_grace_ms": ("grip_sensor", "max_grace_ms"),
    "link_settle_ms": ("control", "link", "settle_ms"),
    "link_window_ms": ("control", "link", "window_ms"),
    "link_loss_max": ("control", "link", "loss_max"),
    "link_window_min_frames": ("control", "link", "window_min_frames"),
    "grip_regrip_ms": ("grip_sensor", "regrip_ms"),
    "runaway_accel_kmh_s": ("control", "overspeed", "runaway_accel_kmh_s"),
    "runaway_window_ms": ("control", "overspeed", "runaway_window_ms"),
    "second_channel": ("belt_sensor",),
    "key_relay": ("drive", "key_relay"),
}

#: Where each :class:`~controller.model.ChannelConfig` field is written under ``belt_sensor``.
CHANNEL_TO_YAML: dict[str, KeyPath] = {
    "agree_abs_kmh": ("agree", "abs_kmh"),
    "agree_rel": ("agree", "rel"),
    "agree_lag_ms": ("agree", "lag_ms"),
    "disagree_ms": ("agree", "duration_ms"),
    "distance_per_pulse_mm": ("distance_per_pulse_mm",),
    "debounce_ms": ("debounce_ms",),
    "stale_ms": ("stale_ms",),
}

#: Where each :class:`~controller.model.StageConfig` field is written inside a stage entry.
STAGE_TO_YAML: dict[str, KeyPath] = {
    "number": (),
    "name": ("name",),
    "max_kmh": ("max_kmh",),
    "start_kmh": ("start_kmh",),
    "accel_kmh_s": ("accel_kmh_s",),
    "decel_kmh_s": ("decel_kmh_s",),
    "grip_hands_required": ("grip", "hands_required"),
    "on_grip_loss": ("grip", "on_loss"),
    "grip_grace_ms": ("grip", "grace_ms"),
    "grip_slow_kmh": ("grip", "slow_to_kmh"),
    "clip_required": ("clip_required",),
}

_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _split_key_path(text: str) -> KeyPath:
    parts: list[KeyPart] = []
    for match in _PATH_PART.finditer(text):
        name, index = match.groups()
        parts.append(int(index) if index is not None else name)
    return tuple(parts)


def yaml_key_path(safety_key_path: str) -> KeyPath:
    """Map a key path of :class:`SafetyConfig` (``"stages[2].grip_grace_ms"``,
    ``"lease_ms"``) to where it is written in the YAML (``("stages", 2, "grip", "grace_ms")``,
    ``("firmware", "lease_ms")``). A path that already names YAML keys is returned as is.
    """
    parts = _split_key_path(safety_key_path)
    if not parts:
        return ()
    head = parts[0]
    if head == "stages" and len(parts) >= 2 and isinstance(parts[1], int):
        rest = parts[2:]
        if rest and isinstance(rest[0], str) and rest[0] in STAGE_TO_YAML:
            return ("stages", parts[1], *STAGE_TO_YAML[rest[0]], *rest[1:])
        return parts
    if head == "second_channel" and len(parts) == 2 and parts[1] in CHANNEL_TO_YAML:
        return ("belt_sensor", *CHANNEL_TO_YAML[str(parts[1])])
    if isinstance(head, str) and head in SAFETY_TO_YAML:
        return (*SAFETY_TO_YAML[head], *parts[1:])
    return parts


# --------------------------------------------------------------------------
# Rules across keys
# --------------------------------------------------------------------------

#: Inputs whose open circuit must read *not asserted*: a broken wire must never look like a
#: hand on a rail, a key in place, or a press that starts, speeds up or resets.
OPEN_READS_INACTIVE: tuple[str, ...] = (
    "grip_left",
    "grip_right",
    "safety_key",
    "start",
    "faster",
    "stage_up",
    "reset",
    "trainer_key",
)
#: Inputs whose open circuit must read *asserted* (normally-closed contacts).
OPEN_READS_ACTIVE: tuple[str, ...] = ("estop",)

_INPUT_MEANING = {
    "grip_left": ("a hand on the left rail", "gripping"),
    "grip_right": ("a hand on the right rail", "gripping"),
    "estop": ("the e-stop pressed", "pressed"),
    "safety_key": ("the safety key in place", "in place"),
    "start": ("a START press", "pressed"),
    "stop": ("a STOP press", "pressed"),
    "faster": ("a FASTER press", "pressed"),
    "slower": ("a SLOWER press", "pressed"),
    "stage_up": ("a STAGE UP press", "pressed"),
    "stage_down": ("a STAGE DOWN press", "pressed"),
    "reset": ("a RESET press", "pressed"),
    "trainer_key": ("the trainer key turned on", "on"),
}

Problem = tuple[KeyPath, str]


def _wiring_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    used: dict[int, str] = {}
    uart = config.serial.port in PI_UART_PORTS
    for name, wiring in config.gpio.inputs.items():
        where: KeyPath = ("gpio", "inputs", name)
        asserted, state = _INPUT_MEANING[name]
        open_level = {"up": "high", "down": "low"}.get(wiring.pull)
        if wiring.pull == "none":
            problems.append(
                (
                    (*where, "pull"),
                    f"pull: none leaves the pin floating when a wire breaks, so a broken wire "
                    f"could read as {asserted} or not; use pull: up or pull: down so that an "
                    "open circuit has a defined level",
                )
            )
        elif name in OPEN_READS_INACTIVE and wiring.open_circuit_reads_active():
            other = "low" if wiring.active == "high" else "high"
            problems.append(
                (
                    (*where, "active"),
                    f"unsafe wiring: with pull: {wiring.pull} a broken wire reads "
                    f"{open_level}, which is active: {wiring.active} ({state}), so a broken "
                    f"wire would look like {asserted}. Wire the contact so that {state} drives "
                    f"the pin {other} and set active: {other}",
                )
            )
        elif name in OPEN_READS_ACTIVE and not wiring.open_circuit_reads_active():
            problems.append(
                (
                    (*where, "active"),
                    f"unsafe wiring: the e-stop must use normally-closed contacts, so that a "
                    f"broken wire reads as pressed. With pull: {wiring.pull} an open circuit "
                    f"reads {open_level}, but active: {wiring.active} says pressed is "
                    f"{wiring.active}. Wire the normally-closed contact to "
                    f"{'ground' if wiring.pull == 'up' else '3.3 V'} and set active: "
                    f"{open_level}",
                )
            )
        if wiring.pin in used:
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is already used by gpio.inputs.{used[wiring.pin]}: "
                    "each input needs its own pin",
                )
            )
        else:
            used[wiring.pin] = name
        if wiring.pin in (0, 1):
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is reserved for the HAT ID EEPROM (ID_SD/ID_SC): "
                    "choose another pin",
                )
            )
        if uart and wiring.pin in (14, 15):
            problems.append(
                (
                    (*where, "pin"),
                    f"BCM {wiring.pin} is the UART {'TXD' if wiring.pin == 14 else 'RXD'} "
                    f"used by serial.port {config.serial.port}: choose another pin",
                )
            )
    sensor = config.belt_sensor
    if sensor is not None:
        where = ("belt_sensor", "pin")
        if sensor.pin in used:
            problems.append(
                (
                    where,
                    f"BCM {sensor.pin} is already used by gpio.inputs.{used[sensor.pin]}: the "
                    "belt sensor needs its own pin",
                )
            )
        if uart and sensor.pin in (14, 15):
            problems.append(
                (where, f"BCM {sensor.pin} is the UART used by serial.port: choose another pin")
            )
    drive = config.drive
    if drive.mode == "key_relay" and drive.key_relay is None:
        problems.append(
            (
                ("drive", "mode"),
                "mode: key_relay needs a drive.key_relay section with the relay output pin "
                "(docs/install.md)",
            )
        )
    if drive.mode != "key_relay" and drive.key_relay is not None:
        problems.append(
            (("drive", "key_relay"), "drive.key_relay works only with drive.mode: key_relay")
        )
    relay = drive.key_relay
    if relay is not None:
        where = ("drive", "key_relay", "pin")
        owner = used.get(relay.pin)
        if owner is None and sensor is not None and sensor.pin == relay.pin:
            owner = "belt_sensor"
        if owner is not None:
            problems.append(
                (where, f"BCM {relay.pin} is already used by {owner}: the relay needs its own pin")
            )
        least_ms = 3 * config.control.tick_ms
        if relay.hold_off_ms < least_ms:
            problems.append(
                (
                    ("drive", "key_relay", "hold_off_ms"),
                    f"hold-off {relay.hold_off_ms} ms is less than 3 control ticks "
                    f"({least_ms} ms at {config.control.rate_hz} Hz): one late tick would drop "
                    "the relay. Build the relay circuit with a longer hold-off",
                )
            )
    if config.gpio.mock_socket is not None and config.gpio.pin_factory != "mock":
        problems.append(
            (
                ("gpio", "mock_socket"),
                "mock_socket works only with pin_factory: mock; remove it for real pins",
            )
        )
    return problems


def _firmware_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    firmware = config.firmware
    control = config.control
    for index, stage in enumerate(config.stages):
        if stage.accel_kmh_s > firmware.max_accel_kmh_s:
            problems.append(
                (
                    ("stages", index, "accel_kmh_s"),
                    f"stage {index + 1} accelerates at {_number(stage.accel_kmh_s)} km/h/s, "
                    f"above the firmware ceiling firmware.max_accel_kmh_s = "
                    f"{_number(firmware.max_accel_kmh_s)} km/h/s: the firmware would refuse it",
                )
            )
        if stage.decel_kmh_s > firmware.max_decel_kmh_s:
            problems.append(
                (
                    ("stages", index, "decel_kmh_s"),
                    f"stage {index + 1} decelerates at {_number(stage.decel_kmh_s)} km/h/s, "
                    f"above the firmware ceiling firmware.max_decel_kmh_s = "
                    f"{_number(firmware.max_decel_kmh_s)} km/h/s",
                )
            )
    if control.stop_decel_kmh_s > firmware.max_decel_kmh_s:
        problems.append(
            (
                ("control", "stop_decel_kmh_s"),
                f"{_number(control.stop_decel_kmh_s)} km/h/s is above the firmware ceiling "
                f"firmware.max_decel_kmh_s = {_number(firmware.max_decel_kmh_s)} km/h/s",
            )
        )
    min_lease_ms = 3 * control.tick_ms
    if firmware.lease_ms < min_lease_ms:
        problems.append(
            (
                ("firmware", "lease_ms"),
                f"{firmware.lease_ms} ms is shorter than 3 control ticks ({min_lease_ms} ms at "
                f"{control.rate_hz} Hz): one late tick would stop the belt; use at least "
                f"{min_lease_ms} ms",
            )
        )
    stop_s = firmware.max_speed_kmh / min(control.stop_decel_kmh_s, firmware.max_decel_kmh_s)
    needed_s = math.ceil(stop_s + 1.0)
    if control.shutdown_timeout_s < needed_s:
        problems.append(
            (
                ("control", "shutdown_timeout_s"),
                f"a stop from {_number(firmware.max_speed_kmh)} km/h takes {stop_s:.1f} s: "
                f"the shutdown must wait at least {needed_s} s for the belt to stand still",
            )
        )
    return problems


def _mqtt_problems(config: AppConfig) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the MQTT files; nothing is checked when MQTT is off."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    mqtt = config.mqtt
    if not mqtt.enabled:
        return errors, warnings
    if mqtt.tls is not None:
        tls = mqtt.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            missing = "key_file" if tls.key_file is None else "cert_file"
            errors.append(
                (
                    ("mqtt", "tls", missing),
                    "a client certificate needs both cert_file and key_file; set "
                    f"{missing} or remove the other",
                )
            )
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, key)
            if value is not None:
                problem = _unreadable(Path(value))
                if problem:
                    errors.append((("mqtt", "tls", key), problem))
    if mqtt.credentials_file is not None:
        where: KeyPath = ("mqtt", "credentials_file")
        path = Path(mqtt.credentials_file)
        problem = _unreadable(path)
        if problem:
            errors.append((where, problem))
        else:
            try:
                read_mqtt_credentials(path)
            except ValueError as exc:
                errors.append((where, str(exc)))
            try:
                mode = path.stat().st_mode
            except OSError:  # removed since it was read: the read above already passed
                mode = 0
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(
                    (
                        where,
                        f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): run "
                        f"'chown treadmill:treadmill {path}' and 'chmod 600 {path}'",
                    )
                )
    return errors, warnings


def _unreadable(path: Path) -> str | None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    return None


@dataclass(frozen=True)
class MqttCredentials:
    """Broker user name and password from ``mqtt.credentials_file``.

    ``open_to_others``: the file can be read by its group or by other users (it should be
    ``chmod 600``); check-config warns, the service logs a warning.
    """

    username: str
    password: str = ""
    open_to_others: bool = False

    def __repr__(self) -> str:  # never print the password
        return f"MqttCredentials(username={self.username!r}, password='***')"


def read_mqtt_credentials(path: Path) -> MqttCredentials:
    """Read ``username:password`` (one line; the password may contain ':') from ``path``.

    The one reader of the credentials file: check-config, the service and ``treadmill
    monitor`` all use it, so a file that passes check-config also works at run time. Raises
    :class:`~controller.errors.CredentialsError` (a :class:`ValueError`) naming the file and
    what is wrong, never quoting the password.
    """
    hint = "it must hold exactly one line 'username:password'"
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        msg = f"{path}: cannot read the MQTT credentials file ({exc.strerror or exc}); {hint}"
        raise CredentialsError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: the MQTT credentials file is not UTF-8 text; {hint}"
        raise CredentialsError(msg) from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise CredentialsError(f"{path}: found {len(lines)} non-empty lines; {hint}")
    username, sep, password = lines[0].partition(":")
    if not sep:
        raise CredentialsError(f"{path}: line has no ':' between username and password; {hint}")
    if not username or username != username.strip():
        raise CredentialsError(f"{path}: the username is empty or has spaces around it; {hint}")
    if not password:
        raise CredentialsError(f"{path}: the password after ':' is empty; {hint}")
    return MqttCredentials(
        username=username,
        password=password,
        open_to_others=bool(mode & (stat.S_IRWXG | stat.S_IRWXO)),
    )


def _training_problems(config: AppConfig) -> list[Problem]:
    problems: list[Problem] = []
    training = config.training
    if (
        training.enabled
        and training.trainer.input == "trainer_key"
        and config.gpio.inputs.trainer_key is None
    ):
        problems.append(
            (
                ("gpio", "inputs", "trainer_key"),
                "the training program confirms stage unlocks with the trainer key "
                "(training.trainer.input: trainer_key, the default), but gpio.inputs has no "
                "trainer_key: wire a key switch and add it here, or set "
                "training.trainer.input: buttons",
            )
        )
    if not training.enabled:
        return problems
    for message in check_against_stages(training, config.stage_configs()):
        match = re.match(r"(unlock)\[(\d+)\]: |(session_length_min): ", message)
        if match is None:
            problems.append((("training", "unlock"), message))
        elif match.group(1):
            problems.append((("training", "unlock", int(match.group(2))), message[match.end() :]))
        else:
            problems.append((("training", "session_length_min"), message[match.end() :]))
    return problems


_SAFETY_WORDS = re.compile(
    r"(?<![\w.])("
    + "|".join(
        sorted(
            (name for name in {**SAFETY_TO_YAML, **STAGE_TO_YAML} if "_" in name),
            key=len,
            reverse=True,
        )
    )
    + r")\b"
)


def yaml_words(message: str) -> str:
    """Rewrite :class:`SafetyConfig` field names in ``message`` as the YAML keys a user edits:
    ``"up to machine_max_kmh"`` -> ``"up to firmware.max_speed_kmh"``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in SAFETY_TO_YAML:
            return format_key_path(SAFETY_TO_YAML[name])
        return format_key_path(STAGE_TO_YAML[name])

    return _SAFETY_WORDS.sub(replace, message)


def _safety_rule_problems(config: AppConfig) -> list[Problem]:
    return [
        (yaml_key_path(problem.key_path), yaml_words(problem.message))
        for problem in check_safety_config(config.safety())
    ]


# --------------------------------------------------------------------------
# Pydantic errors -> ConfigIssue
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    """A configuration that passed every check, and the warnings about it."""

    config: AppConfig
    warnings: tuple[ConfigIssue, ...]


RuleCheck = Callable[[AppConfig], list[Problem]]


def validate_document(document: YamlDocument) -> LoadReport:
    """Validate parsed YAML: schema, then the rules across keys. Raises :class:`ConfigError`."""
    if not isinstance(document.data, dict):
        raise ConfigError(
            [
                document.issue(
                    (),
                    f"the file must be a mapping of sections (treadmill:, serial:, ...); got "
                    f"{_shown(document.data)}",
                )
            ]
        )
    try:
        config = AppConfig.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(
            [schema_issue(document, error, AppConfig) for error in exc.errors(include_url=False)]
        ) from None
    errors: list[Problem] = []
    checks: tuple[RuleCheck, ...] = (
        _wiring_problems,
        _firmware_problems,
        _safety_rule_problems,
        _training_problems,
    )
    for check in checks:
        errors.extend(check(config))
    mqtt_errors, mqtt_warnings = _mqtt_problems(config)
    errors.extend(mqtt_errors)
    if errors:
        raise ConfigError(_unique(document.issue(path, message) for path, message in errors))
    warnings = [document.issue(path, message) for path, message in mqtt_warnings]
    warnings.extend(document.issue(path, message) for path, message in _advice(config))
    return LoadReport(config=config, warnings=tuple(warnings))


def _unique(issues: Iterator[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[ConfigIssue] = set()
    result: list[ConfigIssue] = []
    for issue in issues:
        if issue not in seen:
            seen.add(issue)
            result.append(issue)
    return result


def _advice(config: AppConfig) -> list[Problem]:
    """Things that work but are unwise."""
    advice: list[Problem] = []
    port = config.serial.port
    if port.startswith(("/dev/ttyUSB", "/dev/ttyACM")):
        advice.append(
            (
                ("serial", "port"),
                f"{port} may get another number after a reboot or replug; use the stable "
                "name under /dev/serial/by-id/ (ls -l /dev/serial/by-id/)",
            )
        )
    if not config.serial.is_simulator and not _exists(Path(port)):
        advice.append(
            (
                ("serial", "port"),
                f"{port} does not exist on this machine now: is the motor controller plugged "
                "in? (ls -l /dev/serial/by-id/)",
            )
        )
    pseudo_terminal = port.startswith("/dev/pts/")  # a simulator on a pty, as in the tests
    if config.gpio.pin_factory == "mock" and not (config.serial.is_simulator or pseudo_terminal):
        advice.append(
            (
                ("gpio", "pin_factory"),
                "mock pins with a real serial port: the grips, e-stop and key are not read "
                "from the machine",
            )
        )
    return advice


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. ENAMETOOLONG: not a device that exists
        return False


def load_config_text(text: str, source: str = "<text>") -> AppConfig:
    """Validate configuration ``text`` (named ``source`` in messages).

    Raises :class:`ConfigError` and nothing else, whatever the text.
    """
    return load_config_text_report(text, source).config


def load_config_text_report(text: str, source: str = "<text>") -> LoadReport:
    """Like :func:`load_config_text`, also returning the warnings."""
    return validate_document(parse_yaml(text, source))


def load_config_report(path: Path) -> LoadReport:
    """Read and validate the file at ``path``; return the config and its warnings."""
    return load_config_text_report(read_config_text(path), str(path))


def load_config(path: Path) -> AppConfig:
    """Read and validate the file at ``path``. Warnings are logged; problems raise
    :class:`ConfigError` (exit with :data:`EXIT_CONFIG`)."""
    report = load_config_report(path)
    for warning in report.warnings:
        logger.warning("%s", warning.text())
    return report.config


# --------------------------------------------------------------------------
# Key reference (docs/configuration.md is checked against it)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyReference:
    """One row of the key table in docs/configuration.md."""

    key: str
    kind: str
    default: str
    allowed: str
    description: str


def key_reference() -> list[KeyReference]:
    """Every key of the schema with its type, default, allowed values and description.

    ``training`` is one row: its keys are documented with the training program.
    """
    rows: list[KeyReference] = []
    _reference_rows(AppConfig, "", rows)
    return rows


def _reference_rows(model: type[BaseModel], prefix: str, rows: list[KeyReference]) -> None:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        nested = _model_of(annotation)
        description = info.description or (model.__doc__ or "").strip().split("\n")[0]
        if nested is TrainingConfig:
            rows.append(
                KeyReference(
                    key, "section", "defaults", "", "The training program: see docs/training.md"
                )
            )
            continue
        if nested is InputPin:
            optional = type(None) in get_args(annotation)
            rows.append(
                KeyReference(
                    key,
                    "input",
                    "absent" if optional else "required",
                    "{pin, active, pull}",
                    _INPUT_MEANING[name][0].capitalize() + (" (optional)" if optional else ""),
                )
            )
            continue
        if nested is not None:
            is_list = get_args(annotation)[1:2] == (Ellipsis,)
            kind = "list" if is_list else "section"
            if info.is_required():
                default = "required"
            elif type(None) in get_args(annotation):
                default = "null"
            else:
                default = "defaults"
            doc = info.description or (nested.__doc__ or "").strip().split("\n")[0]
            rows.append(KeyReference(key, kind, default, "", doc))
            _reference_rows(nested, f"{key}[]." if is_list else f"{key}.", rows)
            continue
        rows.append(
            KeyReference(
                key,
                _kind(annotation),
                "required" if info.is_required() else _default_text(info.default),
                _allowed(annotation, info.metadata),
                description,
            )
        )
    if model is GpioInputs:
        for name, info in InputPin.model_fields.items():
            rows.append(
                KeyReference(
                    f"{prefix}<input>.{name}",
                    _kind(info.annotation),
                    "required",
                    _allowed(info.annotation, info.metadata),
                    info.description or "",
                )
            )


def _kind(annotation: Any) -> str:
    args = get_args(annotation)
    if type(None) in args:
        inner = [arg for arg in args if arg is not type(None)]
        return f"{_kind(inner[0])} or null" if len(inner) == 1 else "value or null"
    if args and all(isinstance(arg, str) for arg in args):
        return "text"
    if args and not isinstance(args[0], type):
        return _kind(args[0])
    return {int: "integer", float: "number", str: "text", bool: "true/false"}.get(
        annotation, str(annotation)
    )


def _allowed(annotation: Any, metadata: Sequence[Any]) -> str:
    for item in metadata:
        if isinstance(item, Range):
            return item.describe()
    args = get_args(annotation)
    literal = [arg for arg in args if isinstance(arg, str)]
    if literal:
        return ", ".join(literal)
    inner = [arg for arg in args if arg is not type(None)]
    for arg in inner:
        for item in get_args(arg)[1:]:
            if isinstance(item, Range):
                return item.describe()
    return ""


def _default_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    return str(value)


def key_reference_markdown() -> str:
    """The key table of docs/configuration.md, as Markdown."""
    lines = [
        "| key | type | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in key_reference():
        description = row.description.replace("``", "`")
        cells = (f"`{row.key}`", row.kind, row.default, row.allowed, description)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"

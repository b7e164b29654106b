"""The configuration schema: every section and key of the YAML file with its type, default, allowed
range and unit, and the safety configuration built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from controller.rules.config_rules import (
    GRIP_GRACE_BOUND_MS,
    GRIP_REGRIP_MAX_MS,
    GRIP_REGRIP_MIN_MS,
    LEASE_MIN_MS,
    MACHINE_MAX_KMH_BOUND,
    STAGE_RATE_BOUND_KMH_S,
    STALE_MAX_MS,
    STOP_DECEL_MAX_KMH_S,
    STOP_DECEL_MIN_KMH_S,
    WIRE_RATE_MIN_KMH_S,
)
from controller.rules.model import (
    ChannelConfig,
    GripLossAction,
    KeyRelayConfig,
    SafetyConfig,
    StageConfig,
)
from controller.settings.bounds import MQTT_BOUNDS, Bound
from controller.settings.bounds import number_text as _number
from controller.settings.yaml_loader import (
    KeyPath,
)
from controller.training.config import TrainingConfig

#: ``serial.port: "sim://"`` runs the firmware simulator in-process instead of opening a port.
SIM_PORT = "sim://"


#: Baud rates the firmware's USB-serial bridge is built for.
STANDARD_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


#: Serial devices that use the Pi's own UART on BCM 14 (TXD) and 15 (RXD).
PI_UART_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")


#: Longest path a Unix socket accepts (sun_path is 108 bytes with the terminating NUL).
MAX_UNIX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Range(Bound):
    """``Annotated[float, Range(0, 20, "km/h/s", low_open=True)]``: bounded number.

    A value outside is refused with "must be from 10 to 200 Hz; got 500" (or "more than 0
    and at most 20 km/h/s" when the low end is open). ``unit`` may be empty. A range kept in
    a shared table (:data:`controller.settings.bounds.MQTT_BOUNDS`) is used with
    :meth:`of`.
    """

    @classmethod
    def of(cls, bound: Bound) -> Range:
        """The schema annotation for a :class:`Bound` of a shared table."""
        return cls(bound.low, bound.high, bound.unit, bound.low_open)

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
    regrip_ms: Annotated[int, Range(GRIP_REGRIP_MIN_MS, GRIP_REGRIP_MAX_MS, "ms")] = Field(
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

    # Every number's range comes from controller.settings.bounds.MQTT_BOUNDS, the table the
    # MQTT adapter checks its own settings against too.

    enabled: bool = Field(default=True, description="Publish telemetry and accept commands")
    host: str = Field(default="localhost", min_length=1, max_length=253, description="Broker")
    port: Annotated[int, Range.of(MQTT_BOUNDS["port"])] = Field(
        default=1883, description="Broker port"
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; default treadmill-<treadmill.id>"
    )
    keepalive_s: Annotated[int, Range.of(MQTT_BOUNDS["keepalive_s"])] = Field(
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
    state_rate_hz: Annotated[float, Range.of(MQTT_BOUNDS["state_rate_hz"])] = Field(
        default=5.0, description="Highest rate of state messages (a state field changed)"
    )
    measurement_interval_s: Annotated[float, Range.of(MQTT_BOUNDS["measurement_interval_s"])] = (
        Field(default=1.0, description="A state where only the speeds changed: at most this often")
    )
    counter_interval_s: Annotated[float, Range.of(MQTT_BOUNDS["counter_interval_s"])] = Field(
        default=10.0,
        description="A state where only the session counters changed: at most this often",
    )
    diagnostics_interval_s: Annotated[float, Range.of(MQTT_BOUNDS["diagnostics_interval_s"])] = (
        Field(default=60.0, description="Link, loop and MQTT counters on <prefix>/diagnostics")
    )
    max_payload_bytes: Annotated[int, Range.of(MQTT_BOUNDS["max_payload_bytes"])] = Field(
        default=1024, description="Incoming command payloads larger than this are refused"
    )
    event_queue_size: Annotated[int, Range.of(MQTT_BOUNDS["event_queue_size"])] = Field(
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


#: Where each :class:`~controller.rules.model.SafetyConfig` field is written in the YAML.
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


#: Where each :class:`~controller.rules.model.StageConfig` field is written inside a stage entry.
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

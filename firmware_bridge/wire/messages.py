"""Messages of the firmware link: ids, enums, one frozen dataclass per message, payload codec.

This module is the single source of truth for the payload layouts described in
docs/protocol.md ("Message catalogue"). Every message class lists its wire fields in
``FIELDS`` (name, wire type, unit, allowed range); the encoder, the decoder and the field
checks are all driven by that table.

Values are checked when a message is built, so a message object that exists can always be
encoded. Nothing is clamped or wrapped: a value outside its range raises
:class:`MessageError` naming the message, the field, the value seen and the allowed range.
Fixed-point fields (speeds in 0.01 km/h, accelerations in 0.01 km/h/s) are rounded to their
wire resolution when the message is built, so the object holds exactly what goes on the wire
and ``decode_message(*encode_message(m)) == m`` for every message ``m``.

>>> msg = SetSpeed(speed_kmh=2.5, accel_kmh_s=0.3, lease_ms=300)
>>> msg_id, payload = encode_message(msg)
>>> msg_id.name, payload.hex(" ")
('SET_SPEED', 'fa 00 1e 00 2c 01')
>>> decode_message(msg_id, payload) == msg
True
>>> try:
...     SetSpeed(speed_kmh=31.0, accel_kmh_s=0.3, lease_ms=300)
... except MessageError as exc:
...     print(exc)
SetSpeed.speed_kmh = 31.0 is out of range: allowed 0.00..30.00 km/h
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from controller.errors import MessageError, UnknownMessageError
from firmware_bridge.wire.crc import crc16

PROTOCOL_VERSION: Final = 1

# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Ids and enums (values are part of the wire format: never renumber)
# --------------------------------------------------------------------------


class MsgId(IntEnum):
    """Message id byte. Bit 7 set: sent by the firmware; HELLO goes both ways."""

    HELLO = 0x01
    CONFIGURE = 0x02
    SET_SPEED = 0x03
    STOP = 0x04
    ESTOP = 0x05
    CLEAR_FAULT = 0x06
    GET_STATUS = 0x07
    STATUS = 0x81
    FAULT = 0x82
    ACK = 0x83
    NAK = 0x84


class FwState(IntEnum):
    """Firmware state machine (docs/protocol.md, "Firmware state machine")."""

    BOOT = 0  # self-test after reset; motor disabled
    IDLE = 1  # belt at rest, motor disabled, ready
    RUNNING = 2  # motor enabled, following SET_SPEED within the lease
    STOPPING = 3  # ramping down after STOP (no fault); goes to IDLE at rest
    FAULT = 4  # latched fault; belt ramped/cut to rest; only CLEAR_FAULT at rest leaves it


class FwFault(IntEnum):
    """Latched firmware fault codes (docs/firmware-safety.md gives the rule for each)."""

    NONE = 0
    LEASE_EXPIRED = 1  # no valid SET_SPEED renewal within lease_ms (FW-3)
    SPEED_ABOVE_CEILING = 2  # SET_SPEED above the configured or compiled-in speed ceiling (FW-4)
    ACCEL_ABOVE_CEILING = 3  # SET_SPEED accel above the configured or compiled-in ceiling (FW-4)
    NOT_CONFIGURED = 4  # configuration record failed its self-check while enabled (FW-8)
    SAFETY_KEY_OPEN = 5  # safety key (clip cord) circuit opened (FW-10)
    ESTOP = 6  # ESTOP message received (FW-5)
    SENSOR_FAULT = 7  # belt speed sensor implausible or silent while driving (FW-12)
    MOTOR_FAULT = 8  # motor driver reported a fault (over-current, over-temperature) (FW-12)
    BAD_FRAME_FLOOD = 9  # too many corrupt frames in a window while moving (FW-13)
    OVERSPEED = 10  # measured speed above the ramped set-point by more than the margin (FW-12)
    INTERNAL = 11  # firmware self-check failed (stack, RAM, watchdog early warning) (FW-12)


class ResetCause(IntEnum):
    """Why the firmware last started, reported in its HELLO."""

    POWER_ON = 0
    WATCHDOG = 1
    BROWNOUT = 2
    SOFTWARE = 3  # firmware asked for its own reset (e.g. after a fatal self-check)
    EXTERNAL_RESET = 4  # reset pin, including a DTR pulse when the serial port is opened
    UNKNOWN = 255


class NakReason(IntEnum):
    """Why the firmware refused a frame (the NAK payload)."""

    UNKNOWN_MESSAGE = 1  # message id not defined in the firmware's protocol version
    BAD_PAYLOAD = 2  # payload length or a field encoding is wrong
    OUT_OF_RANGE = 3  # a field outside its protocol range
    REFUSED_IN_STATE = 4  # not accepted in the current state (e.g. SET_SPEED while FAULT)
    NOT_CONFIGURED = 5  # SET_SPEED before a CONFIGURE was accepted
    ABOVE_CEILING = 6  # CONFIGURE/SET_SPEED value above a compiled-in or configured ceiling
    CONFIG_CHECKSUM = 7  # CONFIGURE whose config_checksum does not match its fields
    NO_HANDSHAKE = 8  # CONFIGURE/SET_SPEED before a HELLO with a matching protocol version
    BELT_MOVING = 9  # CLEAR_FAULT or CONFIGURE while the belt is not at rest


# Message ids the firmware accepts while in FwState.FAULT (docs/firmware-safety.md, FW-6).
ACCEPTED_IN_FAULT: Final = frozenset(
    {MsgId.HELLO, MsgId.GET_STATUS, MsgId.STOP, MsgId.ESTOP, MsgId.CLEAR_FAULT}
)
HOST_TO_FIRMWARE: Final = frozenset(
    {
        MsgId.HELLO,
        MsgId.CONFIGURE,
        MsgId.SET_SPEED,
        MsgId.STOP,
        MsgId.ESTOP,
        MsgId.CLEAR_FAULT,
        MsgId.GET_STATUS,
    }
)
FIRMWARE_TO_HOST: Final = frozenset({MsgId.HELLO, MsgId.STATUS, MsgId.FAULT, MsgId.ACK, MsgId.NAK})

# --------------------------------------------------------------------------
# Field table
# --------------------------------------------------------------------------


class FieldKind(Enum):
    FIXED = "fixed"  # float on the wire as round(value * scale), unsigned
    UINT = "uint"  # unsigned integer
    ENUM = "enum"  # IntEnum member in one byte
    FLAG = "flag"  # bool in one byte: bit 0, bits 1..7 reserved (zero)
    VERSION = "version"  # "major.minor.patch" as three u8
    OPT_SEQ = "opt_seq"  # sequence number 0..255 or None, u16 with 0xFFFF for None


_WIRE_TYPE = {"B": "u8", "H": "u16", "I": "u32", "BBB": "3 x u8"}
OPT_SEQ_NONE: Final = 0xFFFF


@dataclass(frozen=True)
class FieldSpec:
    """One payload field: its wire encoding and allowed range (in raw wire units)."""

    name: str
    kind: FieldKind
    wire: str  # struct code(s): "B", "H", "I" or "BBB"
    unit: str
    lo: int
    hi: int
    scale: int = 1
    enum: type[IntEnum] | None = None
    doc: str = ""

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.wire)

    @property
    def wire_type(self) -> str:
        return _WIRE_TYPE[self.wire]

    def range_text(self) -> str:
        """The allowed range in user units, e.g. ``0.00..30.00 km/h``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.kind is FieldKind.FIXED:
            places = len(str(self.scale)) - 1
            return f"{self.lo / self.scale:.{places}f}..{self.hi / self.scale:.{places}f}{unit}"
        if self.kind is FieldKind.ENUM:
            assert self.enum is not None  # noqa: S101 - ENUM specs always name their enum
            members = [m for m in self.enum if self.lo <= m.value <= self.hi]
            return ", ".join(f"{m.value} {m.name}" for m in members)
        if self.kind is FieldKind.FLAG:
            return "false, true"
        if self.kind is FieldKind.VERSION:
            return '"major.minor.patch", each 0..255'
        if self.kind is FieldKind.OPT_SEQ:
            return "0..255, or none (0xFFFF on the wire)"
        return f"{self.lo}..{self.hi}{unit}"


def field_bounds(message: type[Message], name: str) -> tuple[float, float]:
    """The allowed range of field ``name`` of ``message`` in user units (km/h, km/h/s, ms).

    The configuration derives its own bounds from this, so that every value it accepts can
    be put on the wire (SR-CONFIG-3):

    >>> field_bounds(SetSpeed, "accel_kmh_s")
    (0.01, 20.0)
    """
    for spec in message.FIELDS:
        if spec.name == name:
            return spec.lo / spec.scale, spec.hi / spec.scale
    raise KeyError(f"{message.__name__} has no field {name!r}")


def _fixed(name: str, unit: str, lo: int, hi: int, *, doc: str = "") -> FieldSpec:
    return FieldSpec(name, FieldKind.FIXED, "H", unit, lo, hi, scale=100, doc=doc)


def _uint(name: str, wire: str, unit: str, lo: int, hi: int, *, doc: str = "") -> FieldSpec:
    return FieldSpec(name, FieldKind.UINT, wire, unit, lo, hi, doc=doc)


def _enum(name: str, enum: type[IntEnum], *, lo: int = 0, doc: str = "") -> FieldSpec:
    hi = max(m.value for m in enum)
    return FieldSpec(name, FieldKind.ENUM, "B", "", lo, hi, enum=enum, doc=doc)


# Protocol ranges (raw wire units). Speeds in 0.01 km/h, accelerations in 0.01 km/h/s.
SPEED_MAX_RAW: Final = 3000  # 30.00 km/h: no commanded speed of any treadmill exceeds this
MEASURED_MAX_RAW: Final = 0xFFFF  # 655.35 km/h: the firmware reports what it measures
ACCEL_MAX_RAW: Final = 2000  # 20.00 km/h/s
LEASE_MAX_MS: Final = 10_000
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF


def _check(owner: str, spec: FieldSpec, value: object) -> object:
    """Check ``value`` against ``spec``; return the normalised value or raise MessageError."""
    where = f"{owner}.{spec.name}"
    kind = spec.kind
    if kind is FieldKind.FIXED:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MessageError(
                f"{where} must be a number in {spec.unit}, got {value!r}",
                field=spec.name,
                value=value,
            )
        # NaN fails every comparison and infinities are out of range: one check covers them.
        if not spec.lo / spec.scale <= value <= spec.hi / spec.scale:
            raise MessageError(
                f"{where} = {value!r} is out of range: allowed {spec.range_text()}",
                field=spec.name,
                value=value,
            )
        return round(value * spec.scale) / spec.scale
    if kind is FieldKind.UINT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(
                f"{where} must be an integer, got {value!r}", field=spec.name, value=value
            )
        if not spec.lo <= value <= spec.hi:
            raise MessageError(
                f"{where} = {value!r} is out of range: allowed {spec.range_text()}",
                field=spec.name,
                value=value,
            )
        return value
    if kind is FieldKind.ENUM:
        assert spec.enum is not None  # noqa: S101 - ENUM specs always name their enum
        if isinstance(value, spec.enum) and spec.lo <= value.value:
            return value
        # A plain int is converted; a bool or a member of another enum is refused.
        if isinstance(value, int) and not isinstance(value, bool | Enum) and spec.lo <= value:
            try:
                return spec.enum(value)
            except ValueError:
                pass
        raise MessageError(
            f"{where} = {value!r} is not a valid {spec.enum.__name__}: allowed {spec.range_text()}",
            field=spec.name,
            value=value,
        )
    if kind is FieldKind.FLAG:
        if not isinstance(value, bool):
            raise MessageError(
                f"{where} must be true or false, got {value!r}", field=spec.name, value=value
            )
        return value
    if kind is FieldKind.VERSION:
        parts = value.split(".") if isinstance(value, str) else []
        if len(parts) != 3 or not all(p.isdigit() and p.isascii() and int(p) <= 255 for p in parts):
            raise MessageError(
                f"{where} = {value!r} is not a version: expected {spec.range_text()}",
                field=spec.name,
                value=value,
            )
        assert isinstance(value, str)  # noqa: S101 - narrowed above for mypy
        return ".".join(str(int(p)) for p in parts)
    # FieldKind.OPT_SEQ
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise MessageError(
            f"{where} = {value!r} is out of range: allowed {spec.range_text()}",
            field=spec.name,
            value=value,
        )
    return value


def _validate(msg: object, specs: tuple[FieldSpec, ...]) -> None:
    owner = type(msg).__name__
    for spec in specs:
        value = getattr(msg, spec.name)
        checked = _check(owner, spec, value)
        if checked is not value:
            object.__setattr__(msg, spec.name, checked)


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Handshake, both directions. The firmware also sends one unsolicited after every boot.

    The firmware fills every field. The host sends its own ``protocol_version`` and zero in
    every other field (see :func:`host_hello`).
    """

    MSG_ID: ClassVar[MsgId] = MsgId.HELLO
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _uint("protocol_version", "B", "", 1, 255, doc="protocol version spoken by the sender"),
        FieldSpec(
            "fw_version",
            FieldKind.VERSION,
            "BBB",
            "",
            0,
            255,
            doc="firmware version major, minor, patch (host: 0.0.0)",
        ),
        _enum("reset_cause", ResetCause, doc="why the firmware last started (host: 0)"),
        _fixed(
            "max_speed_kmh", "km/h", 0, SPEED_MAX_RAW, doc="compiled-in speed ceiling (host: 0)"
        ),
        _fixed(
            "max_accel_kmh_s", "km/h/s", 0, ACCEL_MAX_RAW, doc="compiled-in accel ceiling (host: 0)"
        ),
        _uint(
            "boot_id", "I", "", 0, U32_MAX, doc="random per boot, never repeats a boot (host: 0)"
        ),
        _uint("uptime_ms", "I", "ms", 0, U32_MAX, doc="time since reset, wraps at 2^32 (host: 0)"),
    )

    protocol_version: int
    fw_version: str
    reset_cause: ResetCause
    max_speed_kmh: float
    max_accel_kmh_s: float
    boot_id: int
    uptime_ms: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class Configure:
    """Set the run-time limits (each at or below the compiled-in ceiling). Needs an ACK.

    ``config_checksum`` must equal :func:`config_checksum` of the four limits; build it with
    :meth:`Configure.with_checksum`. The firmware echoes it in every STATUS.
    """

    MSG_ID: ClassVar[MsgId] = MsgId.CONFIGURE
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _fixed("max_speed_kmh", "km/h", 1, SPEED_MAX_RAW, doc="highest speed SET_SPEED may ask"),
        _fixed("max_accel_kmh_s", "km/h/s", 1, ACCEL_MAX_RAW, doc="highest SET_SPEED accel"),
        _fixed("max_decel_kmh_s", "km/h/s", 1, ACCEL_MAX_RAW, doc="STOP and lease-expiry ramp"),
        _uint("max_lease_ms", "H", "ms", 1, LEASE_MAX_MS, doc="longest lease SET_SPEED may ask"),
        _uint("config_checksum", "H", "", 0, U16_MAX, doc="CRC-16 of the four fields above"),
    )

    max_speed_kmh: float
    max_accel_kmh_s: float
    max_decel_kmh_s: float
    max_lease_ms: int
    config_checksum: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)

    @classmethod
    def with_checksum(
        cls,
        max_speed_kmh: float,
        max_accel_kmh_s: float,
        max_decel_kmh_s: float,
        max_lease_ms: int,
    ) -> Configure:
        """Build a CONFIGURE whose ``config_checksum`` matches its limits."""
        return cls(
            max_speed_kmh=max_speed_kmh,
            max_accel_kmh_s=max_accel_kmh_s,
            max_decel_kmh_s=max_decel_kmh_s,
            max_lease_ms=max_lease_ms,
            config_checksum=config_checksum(
                max_speed_kmh, max_accel_kmh_s, max_decel_kmh_s, max_lease_ms
            ),
        )

    @property
    def checksum_ok(self) -> bool:
        """True when ``config_checksum`` matches the limits (the firmware NAKs otherwise)."""
        return self.config_checksum == config_checksum(
            self.max_speed_kmh, self.max_accel_kmh_s, self.max_decel_kmh_s, self.max_lease_ms
        )


@dataclass(frozen=True)
class SetSpeed:
    """Run at ``speed_kmh``, ramping at ``accel_kmh_s``; renews the motion lease for ``lease_ms``.

    Not acknowledged: the next one supersedes it; STATUS ``last_applied_seq`` confirms it.
    """

    MSG_ID: ClassVar[MsgId] = MsgId.SET_SPEED
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _fixed("speed_kmh", "km/h", 0, SPEED_MAX_RAW, doc="target belt speed"),
        _fixed(
            "accel_kmh_s",
            "km/h/s",
            1,
            ACCEL_MAX_RAW,
            doc="ramp rate toward the target; an acceleration (max_accel) above the present "
            "set-point, a deceleration (max_decel) below it; equal to it at 0.01 km/h: "
            "holding, within either (FW-4)",
        ),
        _uint("lease_ms", "H", "ms", 1, LEASE_MAX_MS, doc="motion lease from receipt"),
    )

    speed_kmh: float
    accel_kmh_s: float
    lease_ms: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class Stop:
    """Controlled stop (IEC 60204-1 category 1) at ``decel_kmh_s``. Needs an ACK."""

    MSG_ID: ClassVar[MsgId] = MsgId.STOP
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _fixed("decel_kmh_s", "km/h/s", 1, ACCEL_MAX_RAW, doc="ramp-down rate"),
    )

    decel_kmh_s: float

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class EStop:
    """Emergency stop: fastest safe stop, latches FwFault.ESTOP. Needs an ACK."""

    MSG_ID: ClassVar[MsgId] = MsgId.ESTOP
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = ()


@dataclass(frozen=True)
class ClearFault:
    """Clear a latched fault; only with the belt at rest; never restarts the belt. Needs an ACK."""

    MSG_ID: ClassVar[MsgId] = MsgId.CLEAR_FAULT
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = ()


@dataclass(frozen=True)
class GetStatus:
    """Ask for one STATUS now (the firmware also sends STATUS unsolicited at >= 20 Hz)."""

    MSG_ID: ClassVar[MsgId] = MsgId.GET_STATUS
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = ()


@dataclass(frozen=True)
class Status:
    """Firmware state, sent unsolicited at >= 20 Hz and in answer to GET_STATUS."""

    MSG_ID: ClassVar[MsgId] = MsgId.STATUS
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _fixed("measured_kmh", "km/h", 0, MEASURED_MAX_RAW, doc="belt speed from the sensor"),
        _fixed("commanded_kmh", "km/h", 0, SPEED_MAX_RAW, doc="the firmware's ramped set-point"),
        _enum("state", FwState, doc="firmware state"),
        _enum("fault", FwFault, doc="latched fault, NONE unless state is FAULT"),
        FieldSpec(
            "safety_key_closed",
            FieldKind.FLAG,
            "B",
            "",
            0,
            1,
            doc="bit 0: safety key circuit closed; bits 1..7 zero",
        ),
        _uint("uptime_ms", "I", "ms", 0, U32_MAX, doc="time since reset, wraps at 2^32"),
        FieldSpec(
            "last_applied_seq",
            FieldKind.OPT_SEQ,
            "H",
            "",
            0,
            255,
            doc="SEQ of the last SET_SPEED applied; 0xFFFF: none since boot",
        ),
        _uint("config_checksum", "H", "", 0, U16_MAX, doc="from the accepted CONFIGURE; 0 before"),
        _uint("lease_remaining_ms", "H", "ms", 0, LEASE_MAX_MS, doc="0 when no lease is running"),
    )

    measured_kmh: float
    commanded_kmh: float
    state: FwState
    fault: FwFault
    safety_key_closed: bool
    uptime_ms: int
    last_applied_seq: int | None
    config_checksum: int
    lease_remaining_ms: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class FaultReport:
    """The FAULT message: sent once when a fault latches (STATUS keeps reporting it)."""

    MSG_ID: ClassVar[MsgId] = MsgId.FAULT
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _enum("code", FwFault, lo=1, doc="the fault that latched (never NONE)"),
        _uint("detail", "I", "", 0, U32_MAX, doc="code-specific value, see the fault table"),
    )

    code: FwFault
    detail: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class Ack:
    """The frame with SEQ ``seq`` was accepted and carried out."""

    MSG_ID: ClassVar[MsgId] = MsgId.ACK
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _uint("seq", "B", "", 0, 255, doc="SEQ of the frame acknowledged"),
    )

    seq: int

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


@dataclass(frozen=True)
class Nak:
    """The frame with SEQ ``seq`` was refused for ``reason``; it had no effect."""

    MSG_ID: ClassVar[MsgId] = MsgId.NAK
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        _uint("seq", "B", "", 0, 255, doc="SEQ of the frame refused"),
        _enum("reason", NakReason, doc="why"),
    )

    seq: int
    reason: NakReason

    def __post_init__(self) -> None:
        _validate(self, self.FIELDS)


Message = (
    Hello
    | Configure
    | SetSpeed
    | Stop
    | EStop
    | ClearFault
    | GetStatus
    | Status
    | FaultReport
    | Ack
    | Nak
)

MESSAGE_TYPES: Final[Mapping[MsgId, type[Message]]] = MappingProxyType(
    {
        cls.MSG_ID: cls
        for cls in (
            Hello,
            Configure,
            SetSpeed,
            Stop,
            EStop,
            ClearFault,
            GetStatus,
            Status,
            FaultReport,
            Ack,
            Nak,
        )
    }
)

# --------------------------------------------------------------------------
# Payload codec
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    cls: type[Message]
    specs: tuple[FieldSpec, ...]
    packer: struct.Struct
    # Per field: name, kind, lo, hi, scale, and for ENUM the allowed members by value.
    fast: tuple[tuple[str, FieldKind, int, int, int, Mapping[int, IntEnum] | None], ...]


def _layout(cls: type[Message]) -> _Layout:
    fast = tuple(
        (
            spec.name,
            spec.kind,
            spec.lo,
            spec.hi,
            spec.scale,
            {m.value: m for m in spec.enum if m.value >= spec.lo} if spec.enum else None,
        )
        for spec in cls.FIELDS
    )
    packer = struct.Struct("<" + "".join(s.wire for s in cls.FIELDS))
    return _Layout(cls, cls.FIELDS, packer, fast)


_LAYOUTS: Final[Mapping[MsgId, _Layout]] = MappingProxyType(
    {msg_id: _layout(cls) for msg_id, cls in MESSAGE_TYPES.items()}
)


_ID_NAMES: Final[Mapping[MsgId, str]] = MappingProxyType({m: m.name for m in MsgId})


def payload_size(msg_id: MsgId) -> int:
    """Payload length in bytes of message ``msg_id`` (every message has a fixed size)."""
    return _LAYOUTS[msg_id].packer.size


def _raw_values(spec: FieldSpec, value: Any) -> tuple[int, ...]:
    kind = spec.kind
    if kind is FieldKind.FIXED:
        return (round(value * spec.scale),)
    if kind is FieldKind.VERSION:
        return tuple(int(p) for p in value.split("."))
    if kind is FieldKind.FLAG:
        return (1 if value else 0,)
    if kind is FieldKind.OPT_SEQ:
        return (OPT_SEQ_NONE if value is None else value,)
    return (int(value),)


def encode_message(msg: Message) -> tuple[MsgId, bytes]:
    """Return the message id and payload bytes of ``msg``.

    The message was range-checked when it was built, so this cannot produce an invalid
    payload. Raises :class:`MessageError` only for an object that is not a message.
    """
    layout = _LAYOUTS.get(getattr(type(msg), "MSG_ID", None))  # type: ignore[arg-type] # a non-message gives None and falls through to the error below
    if layout is None or not isinstance(msg, layout.cls):
        raise MessageError(f"not a protocol message: {msg!r}", value=msg)
    raw: list[int] = []
    for spec in layout.specs:
        raw.extend(_raw_values(spec, getattr(msg, spec.name)))
    return layout.cls.MSG_ID, layout.packer.pack(*raw)


def decode_message(msg_id: int, payload: bytes | bytearray | memoryview) -> Message:
    """Build the message with id ``msg_id`` from its ``payload``.

    Raises :class:`UnknownMessageError` for an id this protocol version does not define, and
    :class:`MessageError` naming the field and the value seen for a wrong length or a value
    out of range.
    """
    try:
        layout = _LAYOUTS[msg_id]  # type: ignore[index] # an IntEnum key also matches a plain int
    except KeyError:
        raise UnknownMessageError(
            f"unknown message id 0x{msg_id:02X}: protocol v{PROTOCOL_VERSION} defines "
            + ", ".join(f"0x{m.value:02X} {m.name}" for m in MsgId),
            field="msg_id",
            value=msg_id,
        ) from None
    name = _ID_NAMES[msg_id]  # type: ignore[index] # an IntEnum key also matches a plain int
    if len(payload) != layout.packer.size:
        raise MessageError(
            f"{name} payload is {len(payload)} bytes, expected {layout.packer.size}",
            field="length",
            value=len(payload),
        )
    raw = layout.packer.unpack(payload)
    kwargs: dict[str, Any] = {}
    valid = True  # every raw value within its range: the fast path below may be taken
    i = 0
    for field_name, kind, lo, hi, scale, members in layout.fast:
        value: Any = raw[i]
        if kind is FieldKind.FIXED:
            valid = valid and lo <= value <= hi
            value /= scale
        elif kind is FieldKind.UINT:
            valid = valid and lo <= value <= hi
        elif kind is FieldKind.ENUM:
            assert members is not None  # noqa: S101 - ENUM fields always have members
            member = members.get(value)
            if member is None:
                valid = False
            else:
                value = member
        elif kind is FieldKind.FLAG:
            if value > 1:
                raise MessageError(
                    f"{name} payload: {field_name} byte = 0x{value:02X}: "
                    "bits 1..7 are reserved and must be zero",
                    field=field_name,
                    value=value,
                )
            value = value == 1
        elif kind is FieldKind.OPT_SEQ:
            if value == OPT_SEQ_NONE:
                value = None
            else:
                valid = valid and value <= 255
        else:  # FieldKind.VERSION
            value = f"{value}.{raw[i + 1]}.{raw[i + 2]}"
            i += 2
        kwargs[field_name] = value
        i += 1
    if valid:
        # Every value was checked above on its raw wire integer, so the checks of __init__
        # would only repeat them (they dominate decoding time). Fill the instance directly:
        # the field table lists every dataclass field (tests/codec/test_messages.py).
        msg = object.__new__(layout.cls)
        msg.__dict__.update(kwargs)
        return msg
    try:
        return layout.cls(**kwargs)  # raises MessageError naming the field and the value
    except MessageError as exc:
        raise MessageError(f"{name} payload: {exc}", field=exc.field, value=exc.value) from exc


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

_CONFIG_SPECS: Final = Configure.FIELDS[:4]
_CONFIG_PACKER: Final = struct.Struct("<HHHH")


def config_checksum(
    max_speed_kmh: float, max_accel_kmh_s: float, max_decel_kmh_s: float, max_lease_ms: int
) -> int:
    """CRC-16 of the four CONFIGURE limits exactly as they are encoded on the wire.

    The limits are range-checked like CONFIGURE fields (MessageError if out of range) and
    rounded to the wire resolution first, so 2.004 and 2.0 give the same checksum.
    """
    values = (max_speed_kmh, max_accel_kmh_s, max_decel_kmh_s, max_lease_ms)
    raw: list[int] = []
    for spec, value in zip(_CONFIG_SPECS, values, strict=True):
        raw.extend(_raw_values(spec, _check("Configure", spec, value)))
    return crc16(_CONFIG_PACKER.pack(*raw))


def host_hello(protocol_version: int = PROTOCOL_VERSION) -> Hello:
    """The HELLO the host sends to start the handshake: its version, every other field zero."""
    return Hello(
        protocol_version=protocol_version,
        fw_version="0.0.0",
        reset_cause=ResetCause.POWER_ON,
        max_speed_kmh=0.0,
        max_accel_kmh_s=0.0,
        boot_id=0,
        uptime_ms=0,
    )


def message_fields(msg: Message) -> dict[str, object]:
    """The wire fields of ``msg`` as a dict (for logs and telemetry)."""
    return {f.name: getattr(msg, f.name) for f in fields(msg)}

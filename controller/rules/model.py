"""Data types shared by the safety core and the service around it.

Everything here is a frozen dataclass or an enum: the pure core
(:mod:`controller.rules.core`) takes these in and gives these back, and the service
only gathers :class:`Inputs` and carries out :class:`Decision`.

Units are in the names: ``_kmh`` (km/h), ``_kmh_s`` (km/h per second),
``_ms`` (integer milliseconds from a monotonic clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# --------------------------------------------------------------------------
# Configuration seen by the core (built from YAML by controller.settings.config)
# --------------------------------------------------------------------------


class GripLossAction(StrEnum):
    """What losing the required grip does at a stage, once the grace time has passed."""

    STOP_LATCH = "stop_latch"  # controlled stop and latched fault ``grip_lost``
    SLOW = "slow"  # ramp down to the stage's ``grip_slow_kmh`` and keep running
    WARN = "warn"  # event and warning only
    NONE = "none"  # grip is not watched at this stage


@dataclass(frozen=True)
class StageConfig:
    """One training stage. ``number`` is 1-based and equals its position in the table."""

    number: int
    name: str
    max_kmh: float
    start_kmh: float
    accel_kmh_s: float
    decel_kmh_s: float
    grip_hands_required: int  # 0, 1 or 2 hands on the rails
    on_grip_loss: GripLossAction
    grip_grace_ms: int
    grip_slow_kmh: float = 0.0  # only used with GripLossAction.SLOW
    clip_required: bool = True  # the safety key (clip cord) must be present


@dataclass(frozen=True)
class ChannelConfig:
    """The second, independent belt-speed channel (the Pi's own sensor) and how the two
    channels must agree (SR-CHAN-*). Absent (``SafetyConfig.second_channel is None``) when no
    second sensor is fitted: the SR-CHAN rules are then off."""

    agree_abs_kmh: float = 0.4  # channels agree within max(abs, rel * the higher reading) ...
    agree_rel: float = 0.10
    agree_lag_ms: int = 500  # ... plus ramp rate * lag (the channels lag differently)
    disagree_ms: int = 1000  # disagreement for longer than this: EStop, latch
    distance_per_pulse_mm: float = 62.7  # the sensor's resolution (for the config rules)
    debounce_ms: float = 2.0  # edges closer than this to the last one are bounce
    stale_ms: int = 1000  # no pulse for this long: the sensor reads 0 (at rest or silent)


@dataclass(frozen=True)
class KeyRelayConfig:
    """Key-relay (monitor) mode: the treadmill's own console drives the belt and the Pi holds
    a relay in series with its safety key, closed only while motion is allowed (SR-MON-*).
    Absent (``SafetyConfig.key_relay is None``) when our firmware drives the belt."""

    hold_off_ms: int = 100  # the relay drops out this long after the last toggle (hardware)
    start_window_ms: int = 15_000  # after START the belt must be seen moving within this
    max_belt_decel_kmh_s: float = 15.0  # a reading falling faster than this: the sensor failed


@dataclass(frozen=True)
class SafetyConfig:
    """Every number the safety core decides with. Validated at load (see
    controller.settings.config).
    """

    stages: tuple[StageConfig, ...]
    machine_max_kmh: float  # treadmill ceiling, also enforced by the firmware
    stop_decel_kmh_s: float = 3.6  # controller-initiated (Cat 1) stop ramp
    lease_ms: int = 300  # motion lease sent with every SET_SPEED
    stale_ms: int = 500  # firmware STATUS older than this: stop and latch
    standstill_kmh: float = 0.1  # at or below this the belt counts as at rest
    speed_step_kmh: float = 0.1  # faster/slower button step
    overspeed_abs_kmh: float = 0.3  # overspeed margin: max(abs, rel * limit)
    overspeed_rel: float = 0.05
    overspeed_ms: int = 500
    follow_tol_kmh: float = 0.5  # not-following margin: max(abs, rel * commanded)
    follow_rel: float = 0.10
    follow_ms: int = 2000
    moving_at_rest_ms: int = 500  # belt measured moving while it should be at rest
    grip_chatter_edges: int = 10  # this many grip edges ...
    grip_chatter_window_ms: int = 1000  # ... inside this window flags the sensor
    grip_stuck_window_ms: int = 1_800_000  # grip reading unchanged this long while running: flag
    max_grip_grace_ms: int = 2000  # upper bound a stage's grace time may have
    follow_lag_ms: int = 1000  # belt lag while ramping: adds rate * lag to the follow margin
    second_channel: ChannelConfig | None = None  # the Pi's own belt sensor (SR-CHAN-*)
    link_settle_ms: int = 500  # link up and fresh this long before a START is accepted
    link_window_ms: int = 1000  # link-quality window: frames missed / frames sent by the firmware
    link_loss_max: float = 0.5  # more than this share of frames missed in a window: fault
    link_window_min_frames: int = 10  # a window with fewer frames sent is not judged
    grip_regrip_ms: int = 500  # a touch ends a grip loss only when held this long
    runaway_accel_kmh_s: float = 1.0  # above limit + margin and accelerating faster: runaway
    runaway_window_ms: int = 200  # accel over half to all of this; seen > half of it: trip
    key_relay: KeyRelayConfig | None = None  # key-relay (monitor) mode (SR-MON-*)


# --------------------------------------------------------------------------
# Inputs gathered by the service every tick
# --------------------------------------------------------------------------


class FirmwareState(StrEnum):
    """State reported by the firmware in STATUS (mirrors docs/protocol.md)."""

    BOOT = "boot"
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    FAULT = "fault"


@dataclass(frozen=True)
class FirmwareStatus:
    """The latest STATUS frame, with the time it was received."""

    received_ms: int
    measured_kmh: float
    commanded_kmh: float  # the firmware's own ramped set-point
    state: FirmwareState
    fault_code: int  # 0 = no fault; codes in docs/protocol.md
    safety_key_closed: bool  # the firmware's own reading of the key circuit
    config_checksum: int  # echoed from CONFIGURE
    expected_config_checksum: int  # what the bridge sent in CONFIGURE
    boot_id: int  # from HELLO; changes only when the firmware reboots


@dataclass(frozen=True)
class BeltSensorReading:
    """The Pi's own belt sensor (second speed channel), read at this tick.

    ``speed_kmh`` is distance per pulse over the last pulse period, bounded by distance per
    pulse over the time since the last pulse (the belt cannot have been faster than that);
    0 once no pulse has come for the sensor's stale time.
    """

    speed_kmh: float
    pulses: int  # accepted pulses since the sensor was opened
    since_pulse_ms: int | None  # time since the last accepted pulse; None: none yet


class Button(StrEnum):
    """Console buttons (local only)."""

    START = "start"
    STOP = "stop"
    FASTER = "faster"
    SLOWER = "slower"
    STAGE_UP = "stage_up"
    STAGE_DOWN = "stage_down"
    RESET = "reset"


@dataclass(frozen=True)
class Press:
    """A local console button press (edge) since the last tick."""

    button: Button


@dataclass(frozen=True)
class SetTarget:
    """The console's requested speed (local)."""

    speed_kmh: float


@dataclass(frozen=True)
class SelectStage:
    """Select a stage directly at the console (local)."""

    stage: int


@dataclass(frozen=True)
class RequestStop:
    """A controlled stop asked for by the service itself, e.g. ``session_complete``."""

    reason: str


LocalCommand = Press | SetTarget | SelectStage | RequestStop


@dataclass(frozen=True)
class RemoteStop:
    """``cmd/stop`` from MQTT: always honoured."""


@dataclass(frozen=True)
class RemoteLowerTarget:
    """``cmd/target_kmh``: accepted only when it lowers the current target."""

    speed_kmh: float


@dataclass(frozen=True)
class RemoteLowerStageCap:
    """``cmd/stage_cap``: accepted only when it lowers the current stage cap."""

    stage: int


RemoteCommand = RemoteStop | RemoteLowerTarget | RemoteLowerStageCap


@dataclass(frozen=True)
class LinkHealth:
    """The serial link to the firmware as the bridge sees it at this tick (SR-LINK-*).

    ``session`` counts completed handshakes since the service started: a new value means the
    link was lost and set up again (a reconnect, a new HELLO, a firmware reboot), however
    briefly. ``frames_received`` and ``frames_missed`` are cumulative: frames the firmware sent
    that arrived intact, and frames it sent that never arrived (gaps in its sequence numbers,
    which is also where a frame with a CRC error shows up). ``boot_id`` is the one the
    firmware's latest HELLO announced: a reboot shows there before its first STATUS.
    """

    up: bool  # port open and the handshake of this session complete
    session: int
    frames_received: int = 0
    frames_missed: int = 0
    boot_id: int | None = None  # from the firmware's latest HELLO, before any STATUS of it


@dataclass(frozen=True)
class Inputs:
    """Everything the core sees in one tick.

    ``link`` is None only where no serial bridge reports on the link (unit tests of other
    rules); the service always fills it in.
    """

    grip_left: bool
    grip_right: bool
    estop_pressed: bool
    safety_key_present: bool
    firmware: FirmwareStatus | None  # None until the first STATUS
    local: tuple[LocalCommand, ...] = ()
    remote: tuple[RemoteCommand, ...] = ()
    stage_cap: int = 1  # highest stage the training program allows for this session
    belt_sensor: BeltSensorReading | None = None  # second speed channel, when fitted
    link: LinkHealth | None = None


# --------------------------------------------------------------------------
# State and decisions
# --------------------------------------------------------------------------


class Mode(StrEnum):
    IDLE = "idle"  # belt at rest, ready
    RUNNING = "running"
    STOPPING = "stopping"  # controlled ramp to rest, no fault
    FAULTED = "faulted"  # latched; only a local reset at rest leaves it


class FaultCode(StrEnum):
    GRIP_LOST = "grip_lost"
    GRIP_SENSOR = "grip_sensor"
    ESTOP = "estop"
    SAFETY_KEY = "safety_key"
    LINK_STALE = "link_stale"
    OVERSPEED = "overspeed"
    NOT_FOLLOWING = "not_following"
    MOVING_AT_REST = "moving_at_rest"
    FIRMWARE_FAULT = "firmware_fault"
    FIRMWARE_REBOOT = "firmware_reboot"
    CONFIG_MISMATCH = "config_mismatch"
    CHANNELS_DISAGREE = "channels_disagree"
    BELT_SENSOR = "belt_sensor"
    INTERNAL = "internal"


class StopKind(StrEnum):
    CONTROLLED = "controlled"  # STOP: firmware ramps at the given deceleration
    EMERGENCY = "emergency"  # ESTOP: fastest safe stop


@dataclass(frozen=True)
class Fault:
    code: FaultCode
    message: str  # what was seen, and what the user must do
    since_ms: int
    stop: StopKind


@dataclass(frozen=True)
class SetSpeed:
    """Run the belt at ``speed_kmh``, ramping at ``accel_kmh_s``; renews the lease."""

    speed_kmh: float
    accel_kmh_s: float
    lease_ms: int


@dataclass(frozen=True)
class Stop:
    """Controlled stop at ``decel_kmh_s``."""

    decel_kmh_s: float


@dataclass(frozen=True)
class EStop:
    """Fastest safe stop."""


MotionCommand = SetSpeed | Stop | EStop


@dataclass(frozen=True)
class Event:
    """Something worth telling people about: logged, published on MQTT, put in the timeline.

    ``kind`` values include: transition, started, stopped, grip_lost, grip_warning,
    grip_sensor_suspect, fault, fault_cleared, stage_changed, target_changed,
    command_rejected, start_refused, reset_refused.
    """

    kind: str
    message: str
    details: dict[str, str | int | float | bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CoreState:
    """The core's whole memory. Built only by the safety core (controller.rules)."""

    mode: Mode
    stage: int
    target_kmh: float
    commanded_kmh: float
    fault: Fault | None = None
    stop_reason: str | None = None
    remote_stage_cap: int | None = None
    last_tick_ms: int | None = None
    boot_id: int | None = None
    grip_lost_since_ms: int | None = None
    grip_action_taken: bool = False
    overspeed_since_ms: int | None = None
    follow_since_ms: int | None = None
    moving_at_rest_since_ms: int | None = None
    grip_edges_ms: tuple[int, ...] = ()
    last_grip_ok: bool | None = None
    grip_changed_ms: int | None = None
    warnings: frozenset[str] = frozenset()
    last_grip_hands: tuple[bool, bool] | None = None  # (left, right) at the previous tick
    fault_rest_reached: bool = False  # FAULTED and the belt has been seen at rest since
    secondary_faults: tuple[FaultCode, ...] = ()  # further faults seen while already FAULTED
    reset_armed_ms: int | None = None  # a RESET sent CLEAR_FAULT and waits (SR-RESET-3)
    disagree_since_ms: int | None = None  # the speed channels disagree since (SR-CHAN-2)
    link_session: int | None = None  # link session adopted (first seen, in IDLE, at a reset)
    link_settled_since_ms: int | None = None  # link up, same session and fresh since then
    link_window: tuple[int, int, int] | None = None  # (start_ms, received, missed) at its start
    grip_held_since_ms: int | None = None  # the required grip has been held since then
    speed_samples: tuple[tuple[int, float], ...] = ()  # (ms, km/h) for the measured accel
    runaway_suspect: tuple[int, float] | None = None  # (ms, km/h) a runaway was first seen
    relay_armed_ms: int | None = None  # key-relay mode: START closed the relay at (SR-MON-4)
    relay_motion_seen: bool = False  # key-relay mode: the belt has moved since START
    relay_last: tuple[int, float] | None = None  # key-relay mode: (time, reading) last tick
    # When the condition of a duration timer above last cleared while its timer keeps its start
    # (tick.held_timer: the timer restarts only after CLEAR_HOLD_MS clear; SR-PLAUS-1..3, CHAN-2).
    overspeed_clear_since_ms: int | None = None
    follow_clear_since_ms: int | None = None
    moving_at_rest_clear_since_ms: int | None = None
    disagree_clear_since_ms: int | None = None
    follow_too_fast: bool = False  # the last tick not following was too fast (not too slow)


@dataclass(frozen=True)
class Decision:
    """What one tick decided: the next state, exactly one motion command, and events."""

    state: CoreState
    motion: MotionCommand
    clear_firmware_fault: bool = False  # send CLEAR_FAULT (only on a valid local reset)
    events: tuple[Event, ...] = ()
    # The core's verdicts, for the service, the training program and telemetry to read
    # instead of deciding again (one definition each, in the rule modules of the core):
    belt_at_rest: bool = False  # rest.at_rest(): mode IDLE/FAULTED, belt standing still
    firmware_fresh: bool = False  # firmware_status.firmware_fresh(): a status at most stale_ms old
    # The earliest time (ms, the clock of ``now_ms``) at which a running timer would change
    # the decision with the same inputs; None when no timer runs. See timers.next_deadline_ms.
    next_deadline_ms: int | None = None
    # Key-relay mode: toggle the key-relay output this tick (motion allowed, SR-MON-1).
    key_relay: bool = False
    # channels.check_channels(): the two belt speed channels were compared this tick and agree
    # (True) or differ by more than the tolerance (False, SR-CHAN-2); None when they were not
    # compared (no second channel, key-relay mode, no usable firmware status or Pi reading).
    channels_agree: bool | None = None

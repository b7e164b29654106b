"""Safety rules for the configuration: refuse a SafetyConfig that would make the core unsafe.

:func:`check_safety_config` is pure and returns every problem at once, each naming the
key path (``stages[2].max_kmh``, ``lease_ms``; the attribute path in
:class:`~controller.rules.model.SafetyConfig`, ``stages[i]`` counting from 0) and the allowed
range or what to do. The loader (controller.settings.config) maps the key path to the file and
line and refuses to start on any problem (rule SR-CONFIG-1 in docs/safety.md).

Example:
    >>> from controller.rules.model import ChannelConfig, GripLossAction, SafetyConfig, StageConfig
    >>> stage = StageConfig(1, "walk", 2.0, 0.5, 0.2, 0.4, 1, GripLossAction.STOP_LATCH, 300)
    >>> check_safety_config(SafetyConfig(stages=(stage,), machine_max_kmh=16.0))
    []
    >>> [p.key_path for p in check_safety_config(SafetyConfig(stages=(), machine_max_kmh=16.0))]
    ['stages']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from controller.rules.model import ChannelConfig, GripLossAction, SafetyConfig, StageConfig
from firmware_bridge.wire.messages import SetSpeed, Stop, field_bounds

MACHINE_MAX_KMH_BOUND: Final = 25.0
"""No treadmill this controller drives is rated above this speed."""

WIRE_RATE_MIN_KMH_S: Final = field_bounds(SetSpeed, "accel_kmh_s")[0]
"""Lowest ramp rate SET_SPEED and STOP can carry (0.01 km/h/s): the lower bound of every rate
the configuration accepts, taken from the wire's field table so the two cannot drift apart."""

STAGE_RATE_BOUND_KMH_S: Final = min(3.6, field_bounds(SetSpeed, "accel_kmh_s")[1])
"""Stage acceleration and deceleration ceiling: 1 m/s^2, the controlled-stop ramp."""

RUNAWAY_ACCEL_BOUND_KMH_S: Final = 10.0
"""Highest runaway threshold: a belt accelerating at 10 km/h/s is far beyond any command."""

STOP_DECEL_MIN_KMH_S: Final = 1.0
"""Slowest allowed controlled stop: from 8 km/h it already takes 8 s."""

STOP_DECEL_MAX_KMH_S: Final = min(10.8, field_bounds(Stop, "decel_kmh_s")[1])
"""Firmest allowed controlled stop: 3 m/s^2, the level training studies use to perturb balance."""

LEASE_MIN_MS: Final = 50
"""A lease must outlast at least two control periods (20 ms at 50 Hz) plus jitter."""

STALE_MAX_MS: Final = 2000
"""Longest a firmware status may be trusted: the belt must not run blind for longer."""

GRIP_GRACE_BOUND_MS: Final = 5000
"""Upper bound for max_grip_grace_ms itself."""

GRIP_REGRIP_MIN_MS: Final = 200
"""Shortest hold that ends a grip loss (SR-GRIP-10): ten 50 Hz ticks, longer than contact
bounce or a hand brushing the rail. At 0 any touch would end the loss, and a hand tapping the
rail (20 ms of every 300 ms) would never be stopped."""

GRIP_REGRIP_MAX_MS: Final = 2000
"""Longest hold asked of a returning hand before its grip counts again."""


@dataclass(frozen=True)
class ConfigProblem:
    """One refused setting: where it is, and what is allowed or what to do."""

    key_path: str
    message: str


def check_safety_config(config: SafetyConfig) -> list[ConfigProblem]:
    """Every problem with ``config`` (empty when it is safe to run with). Rule SR-CONFIG-1."""
    problems: list[ConfigProblem] = []
    _check_machine(config, problems)
    _check_stages(config, problems)
    _check_second_channel(config, problems)
    _check_key_relay(config, problems)
    return problems


def _in_range(
    problems: list[ConfigProblem],
    key_path: str,
    value: float,
    low: float,
    high: float,
    *,
    unit: str,
    low_open: bool = False,
) -> None:
    """Add a problem unless ``low <(=) value <= high``; NaN and infinities never pass."""
    above_low = value > low if low_open else value >= low
    if above_low and value <= high:
        return
    bracket = "(" if low_open else "["
    problems.append(
        ConfigProblem(
            key_path,
            f"must be in {bracket}{low:g}, {high:g}] {unit}, got {value!r}",
        )
    )


def _check_machine(config: SafetyConfig, problems: list[ConfigProblem]) -> None:
    _in_range(
        problems,
        "machine_max_kmh",
        config.machine_max_kmh,
        0.0,
        MACHINE_MAX_KMH_BOUND,
        unit="km/h",
        low_open=True,
    )
    _in_range(
        problems,
        "stop_decel_kmh_s",
        config.stop_decel_kmh_s,
        STOP_DECEL_MIN_KMH_S,
        STOP_DECEL_MAX_KMH_S,
        unit="km/h/s",
    )
    _in_range(problems, "stale_ms", config.stale_ms, 0, STALE_MAX_MS, unit="ms", low_open=True)
    _in_range(problems, "lease_ms", config.lease_ms, LEASE_MIN_MS, STALE_MAX_MS, unit="ms")
    if config.lease_ms > config.stale_ms:
        problems.append(
            ConfigProblem(
                "lease_ms",
                f"{config.lease_ms} ms is longer than stale_ms ({config.stale_ms} ms): the "
                "firmware must stop on its own before the controller gives up on the link; "
                "make lease_ms at most stale_ms",
            )
        )
    _in_range(
        problems, "standstill_kmh", config.standstill_kmh, 0.0, 0.5, unit="km/h", low_open=True
    )
    _in_range(
        problems, "speed_step_kmh", config.speed_step_kmh, 0.0, 1.0, unit="km/h", low_open=True
    )
    _in_range(
        problems,
        "overspeed_abs_kmh",
        config.overspeed_abs_kmh,
        0.0,
        2.0,
        unit="km/h",
        low_open=True,
    )
    _in_range(problems, "overspeed_rel", config.overspeed_rel, 0.0, 0.5, unit="(fraction)")
    _in_range(problems, "overspeed_ms", config.overspeed_ms, 0, 2000, unit="ms", low_open=True)
    _in_range(
        problems, "follow_tol_kmh", config.follow_tol_kmh, 0.0, 3.0, unit="km/h", low_open=True
    )
    _in_range(problems, "follow_rel", config.follow_rel, 0.0, 0.5, unit="(fraction)")
    _in_range(problems, "follow_ms", config.follow_ms, 0, 10_000, unit="ms", low_open=True)
    _in_range(problems, "follow_lag_ms", config.follow_lag_ms, 0, 5000, unit="ms")
    _in_range(
        problems,
        "moving_at_rest_ms",
        config.moving_at_rest_ms,
        0,
        2000,
        unit="ms",
        low_open=True,
    )
    _in_range(problems, "grip_chatter_edges", config.grip_chatter_edges, 2, 1000, unit="edges")
    _in_range(
        problems,
        "grip_chatter_window_ms",
        config.grip_chatter_window_ms,
        0,
        60_000,
        unit="ms",
        low_open=True,
    )
    _in_range(
        problems,
        "grip_stuck_window_ms",
        config.grip_stuck_window_ms,
        0,
        24 * 3_600_000,
        unit="ms",
        low_open=True,
    )
    _in_range(
        problems, "max_grip_grace_ms", config.max_grip_grace_ms, 0, GRIP_GRACE_BOUND_MS, unit="ms"
    )
    _in_range(problems, "link_settle_ms", config.link_settle_ms, 0, 10_000, unit="ms")
    _in_range(problems, "link_window_ms", config.link_window_ms, 100, 10_000, unit="ms")
    _in_range(
        problems, "link_loss_max", config.link_loss_max, 0.0, 0.9, unit="(fraction)", low_open=True
    )
    _in_range(
        problems, "link_window_min_frames", config.link_window_min_frames, 1, 1000, unit="frames"
    )
    _in_range(
        problems,
        "grip_regrip_ms",
        config.grip_regrip_ms,
        GRIP_REGRIP_MIN_MS,
        GRIP_REGRIP_MAX_MS,
        unit="ms",
    )
    _in_range(
        problems,
        "runaway_accel_kmh_s",
        config.runaway_accel_kmh_s,
        0.0,
        RUNAWAY_ACCEL_BOUND_KMH_S,
        unit="km/h/s",
        low_open=True,
    )
    _in_range(problems, "runaway_window_ms", config.runaway_window_ms, 40, 1000, unit="ms")


def _check_stages(config: SafetyConfig, problems: list[ConfigProblem]) -> None:
    if not config.stages:
        problems.append(
            ConfigProblem("stages", "at least one stage is required: configure stage 1")
        )
        return
    seen_names: dict[str, int] = {}
    previous_max_kmh = 0.0
    for index, stage in enumerate(config.stages):
        key = f"stages[{index}]"
        if stage.number != index + 1:
            problems.append(
                ConfigProblem(
                    f"{key}.number",
                    f"is {stage.number}, expected {index + 1}: number the stages 1, 2, 3 ... "
                    "in table order",
                )
            )
        name = stage.name.strip()
        if not name:
            problems.append(ConfigProblem(f"{key}.name", "must not be empty"))
        elif name in seen_names:
            problems.append(
                ConfigProblem(
                    f"{key}.name",
                    f"{name!r} is already the name of stages[{seen_names[name]}]: "
                    "give every stage its own name",
                )
            )
        else:
            seen_names[name] = index
        _check_stage_speeds(config, stage, key, problems)
        if stage.max_kmh < previous_max_kmh:
            problems.append(
                ConfigProblem(
                    f"{key}.max_kmh",
                    f"{stage.max_kmh!r} km/h is below the previous stage's {previous_max_kmh!r} "
                    "km/h: a higher stage may never allow less speed",
                )
            )
        previous_max_kmh = max(previous_max_kmh, stage.max_kmh)
        _check_stage_grip(config, stage, key, problems)


def _check_stage_speeds(
    config: SafetyConfig, stage: StageConfig, key: str, problems: list[ConfigProblem]
) -> None:
    _in_range(
        problems,
        f"{key}.max_kmh",
        stage.max_kmh,
        0.0,
        config.machine_max_kmh,
        unit="km/h (up to machine_max_kmh)",
        low_open=True,
    )
    _in_range(
        problems,
        f"{key}.start_kmh",
        stage.start_kmh,
        config.standstill_kmh,
        stage.max_kmh,
        unit="km/h (above standstill_kmh, up to the stage's max_kmh)",
        low_open=True,
    )
    for name, value in (("accel_kmh_s", stage.accel_kmh_s), ("decel_kmh_s", stage.decel_kmh_s)):
        _in_range(
            problems,
            f"{key}.{name}",
            value,
            WIRE_RATE_MIN_KMH_S,
            STAGE_RATE_BOUND_KMH_S,
            unit="km/h/s (the lowest rate SET_SPEED can carry is 0.01 km/h/s)",
        )


def _check_stage_grip(
    config: SafetyConfig, stage: StageConfig, key: str, problems: list[ConfigProblem]
) -> None:
    if stage.grip_hands_required not in (0, 1, 2):
        problems.append(
            ConfigProblem(
                f"{key}.grip_hands_required",
                f"is {stage.grip_hands_required!r}: must be 0, 1 or 2 hands",
            )
        )
    _in_range(
        problems,
        f"{key}.grip_grace_ms",
        stage.grip_grace_ms,
        0,
        config.max_grip_grace_ms,
        unit="ms (up to max_grip_grace_ms)",
    )
    if stage.on_grip_loss is GripLossAction.SLOW and not (
        0.0 <= stage.grip_slow_kmh < stage.max_kmh
    ):
        problems.append(
            ConfigProblem(
                f"{key}.grip_slow_kmh",
                f"{stage.grip_slow_kmh!r} km/h: with on_grip_loss slow it must be at least 0 "
                f"and below the stage's max_kmh ({stage.max_kmh!r} km/h)",
            )
        )
    grip_stops_belt = (
        stage.grip_hands_required > 0 and stage.on_grip_loss is GripLossAction.STOP_LATCH
    )
    if not stage.clip_required and not grip_stops_belt:
        problems.append(
            ConfigProblem(
                f"{key}.clip_required",
                "must be true: this stage lets the belt run without a hand on the rails "
                f"(grip_hands_required {stage.grip_hands_required}, on_grip_loss "
                f"{stage.on_grip_loss.value}), so the safety key cord must be clipped on",
            )
        )


#: km/h per (mm/ms).
_KMH_PER_MM_PER_MS: Final = 3.6


def pulse_period_ms(channel: ChannelConfig, speed_kmh: float) -> float:
    """Time between two pulses of the second belt sensor at ``speed_kmh`` (ms)."""
    return channel.distance_per_pulse_mm * _KMH_PER_MM_PER_MS / speed_kmh


def sensor_floor_kmh(channel: ChannelConfig) -> float:
    """Slowest belt the second sensor still sees: one pulse per ``stale_ms`` (km/h)."""
    return channel.distance_per_pulse_mm * _KMH_PER_MM_PER_MS / channel.stale_ms


def _check_second_channel(config: SafetyConfig, problems: list[ConfigProblem]) -> None:
    """SR-CONFIG-9: the second speed channel's thresholds, and a sensor fine enough for them.

    * 0.1 <= agree_abs_kmh <= 2; 0 <= agree_rel <= 0.5; 0 <= agree_lag_ms <= 2000;
      100 <= disagree_ms <= 3000; 5 <= distance_per_pulse_mm <= 1000;
      0 <= debounce_ms <= 20; 100 <= stale_ms <= 3000;
    * the slowest belt the sensor sees (one pulse per stale_ms) is within agree_abs_kmh, so a
      slow belt between two pulses never reads as a disagreement;
    * at every stage's start speed two pulses (the first reading) come within disagree_ms;
    * the debounce lets through the pulses of a belt at twice the machine maximum, so a
      runaway is measured rather than filtered out.
    """
    channel = config.second_channel
    if channel is None:
        return
    prefix = "second_channel."
    ranges: list[ConfigProblem] = []
    _in_range(ranges, prefix + "agree_abs_kmh", channel.agree_abs_kmh, 0.1, 2.0, unit="km/h")
    _in_range(ranges, prefix + "agree_rel", channel.agree_rel, 0.0, 0.5, unit="(fraction)")
    _in_range(ranges, prefix + "agree_lag_ms", channel.agree_lag_ms, 0, 2000, unit="ms")
    _in_range(ranges, prefix + "disagree_ms", channel.disagree_ms, 100, 3000, unit="ms")
    _in_range(
        ranges,
        prefix + "distance_per_pulse_mm",
        channel.distance_per_pulse_mm,
        5.0,
        1000.0,
        unit="mm",
    )
    _in_range(ranges, prefix + "debounce_ms", channel.debounce_ms, 0.0, 20.0, unit="ms")
    _in_range(ranges, prefix + "stale_ms", channel.stale_ms, 100, 3000, unit="ms")
    problems.extend(ranges)
    if ranges:
        return
    floor_kmh = sensor_floor_kmh(channel)
    if floor_kmh > channel.agree_abs_kmh:
        problems.append(
            ConfigProblem(
                prefix + "stale_ms",
                f"with {channel.distance_per_pulse_mm:g} mm a pulse and stale_ms "
                f"{channel.stale_ms}, a belt slower than {floor_kmh:.2f} km/h reads 0, more "
                f"than agree_abs_kmh {channel.agree_abs_kmh:g}: the channels would disagree on "
                "a slow belt. Raise stale_ms or agree_abs_kmh, or fit more magnets",
            )
        )
    for index, stage in enumerate(config.stages):
        if not stage.start_kmh > 0.0:
            continue  # refused by SR-CONFIG-2 already
        first_reading_ms = 2.0 * pulse_period_ms(channel, stage.start_kmh)
        if first_reading_ms > channel.disagree_ms:
            problems.append(
                ConfigProblem(
                    f"stages[{index}].start_kmh",
                    f"at the start speed {stage.start_kmh:g} km/h the belt sensor "
                    f"({channel.distance_per_pulse_mm:g} mm a pulse) needs "
                    f"{first_reading_ms:.0f} ms for its first reading, more than "
                    f"second_channel.disagree_ms {channel.disagree_ms}: raise the start speed "
                    "or disagree_ms, or fit more magnets (a smaller distance per pulse)",
                )
            )
    if not 0.0 < config.machine_max_kmh <= MACHINE_MAX_KMH_BOUND:
        return  # refused by SR-CONFIG-2 already
    fastest_period_ms = pulse_period_ms(channel, 2.0 * config.machine_max_kmh)
    if channel.debounce_ms >= fastest_period_ms:
        problems.append(
            ConfigProblem(
                prefix + "debounce_ms",
                f"debounce {channel.debounce_ms:g} ms would swallow the pulses of a belt at "
                f"{2.0 * config.machine_max_kmh:g} km/h (twice the machine maximum, a pulse "
                f"every {fastest_period_ms:.1f} ms): a runaway would not be measured. Use less "
                "than that",
            )
        )


KEY_RELAY_HOLD_OFF_MAX_MS: Final = 500
"""Longest hold-off of the key relay: the belt runs on for this long after the loop stops."""


def _check_key_relay(config: SafetyConfig, problems: list[ConfigProblem]) -> None:
    """SR-CONFIG-10: key-relay (monitor) mode, and the guarantees it cannot give.

    * 20 <= hold_off_ms <= 500; 2000 <= start_window_ms <= 60000;
      5 <= max_belt_decel_kmh_s <= 50;
    * the Pi's belt sensor is required: it is the only speed reading;
    * no stage may ask to slow the belt on grip loss (``on_grip_loss: slow``): the relay
      can only stop the belt, not slow it.
    """
    relay = config.key_relay
    if relay is None:
        return
    prefix = "key_relay."
    _in_range(
        problems,
        prefix + "hold_off_ms",
        relay.hold_off_ms,
        20,
        KEY_RELAY_HOLD_OFF_MAX_MS,
        unit="ms",
    )
    _in_range(problems, prefix + "start_window_ms", relay.start_window_ms, 2000, 60_000, unit="ms")
    _in_range(
        problems,
        prefix + "max_belt_decel_kmh_s",
        relay.max_belt_decel_kmh_s,
        5.0,
        50.0,
        unit="km/h/s",
    )
    if config.second_channel is None:
        problems.append(
            ConfigProblem(
                "second_channel",
                "key-relay mode reads the belt speed from the Pi's belt sensor only: configure "
                "belt_sensor (docs/configuration.md)",
            )
        )
    for index, stage in enumerate(config.stages):
        if stage.on_grip_loss is GripLossAction.SLOW:
            problems.append(
                ConfigProblem(
                    f"stages[{index}].on_grip_loss",
                    "in key-relay mode the controller cannot slow the belt, only stop it: use "
                    "on_loss: stop_latch, warn or none",
                )
            )

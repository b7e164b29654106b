"""The second speed channel, the Pi's own belt sensor: usable readings, agreement with the
firmware's reading, and rest on both channels (SR-CHAN-1..4).
"""

from __future__ import annotations

import math

from controller.rules.faults import latch
from controller.rules.model import (
    BeltSensorReading,
    ChannelConfig,
    CoreState,
    FaultCode,
    FirmwareStatus,
    Inputs,
    SafetyConfig,
    StopKind,
)
from controller.rules.motion import ramp_rate_kmh_s
from controller.rules.tick import Step, held_timer, replace


def reading_valid(reading: BeltSensorReading) -> bool:
    """A belt sensor reading is a speed: finite and not negative (SR-CHAN-1)."""
    return math.isfinite(reading.speed_kmh) and reading.speed_kmh >= 0.0


def belt_sensor_text(inputs: Inputs) -> str:
    """The Pi's belt sensor reading as shown in a message: ``1.23 km/h`` or ``no reading``."""
    reading = inputs.belt_sensor
    if reading is None:
        return "no reading"
    return f"{reading.speed_kmh:.2f} km/h"


def second_channel_at_rest(inputs: Inputs, config: SafetyConfig) -> bool:
    """With a second speed channel, it too reads the belt at or below ``standstill_kmh``
    (SR-CHAN-4); always True without one. A missing or invalid reading is not rest."""
    if config.second_channel is None:
        return True
    reading = inputs.belt_sensor
    return (
        reading is not None
        and reading_valid(reading)
        and reading.speed_kmh <= config.standstill_kmh
    )


def channel_speeds_kmh(
    fresh: FirmwareStatus | None, inputs: Inputs, config: SafetyConfig
) -> tuple[float | None, float | None]:
    """The higher and the lower of the usable belt speed readings (SR-CHAN-3).

    The firmware's reading counts when its status is fresh and valid; the Pi's belt sensor
    when a second channel is configured and its reading is valid. ``(None, None)`` when no
    reading is usable; both equal with one usable channel.
    """
    speeds: list[float] = []
    if fresh is not None:
        speeds.append(fresh.measured_kmh)
    reading = inputs.belt_sensor
    if config.second_channel is not None and reading is not None and reading_valid(reading):
        speeds.append(reading.speed_kmh)
    if not speeds:
        return None, None
    return max(speeds), min(speeds)


def channel_tolerance_kmh(
    state: CoreState, config: SafetyConfig, channel: ChannelConfig, high_kmh: float
) -> float:
    """How far the two speed channels may differ now (SR-CHAN-2): max(abs, rel x the higher
    reading) plus the present ramp rate x the lag allowed between the channels."""
    lag_kmh = ramp_rate_kmh_s(state, config) * channel.agree_lag_ms / 1000.0
    return max(channel.agree_abs_kmh, channel.agree_rel * high_kmh) + lag_kmh


def check_channels(step: Step) -> None:
    """The firmware's speed reading and the Pi's own belt sensor (SR-CHAN-1, SR-CHAN-2).

    A configured second channel without a valid reading latches ``belt_sensor`` (controlled
    stop); two usable readings further apart than the tolerance for longer than
    ``disagree_ms`` latch ``channels_disagree`` with an emergency stop. Watched in every mode.
    """
    config = step.config
    channel = config.second_channel
    if channel is None:
        return
    reading = step.inputs.belt_sensor
    if reading is None or not reading_valid(reading):
        shown = "no reading" if reading is None else f"{reading.speed_kmh!r} km/h"
        latch(
            step,
            FaultCode.BELT_SENSOR,
            StopKind.CONTROLLED,
            f"The Pi's belt sensor gave {shown}, not a valid speed reading",
        )
        step.state = replace(step.state, disagree_since_ms=None, disagree_clear_since_ms=None)
        return
    fresh = step.fresh
    state = step.state
    if fresh is None:
        # Not compared: an unusable firmware status is latched by SR-STALE-1 or as not following.
        step.state = replace(step.state, disagree_since_ms=None, disagree_clear_since_ms=None)
        return
    firmware_kmh = fresh.measured_kmh
    sensor_kmh = reading.speed_kmh
    high_kmh = max(firmware_kmh, sensor_kmh)
    tolerance_kmh = channel_tolerance_kmh(state, config, channel, high_kmh)
    step.channels_agree = abs(firmware_kmh - sensor_kmh) <= tolerance_kmh
    disagree = not step.channels_agree
    since_ms, clear_ms = held_timer(
        state.disagree_since_ms, state.disagree_clear_since_ms, disagree, step.now_ms
    )
    step.state = replace(step.state, disagree_since_ms=since_ms, disagree_clear_since_ms=clear_ms)
    if not disagree or since_ms is None:
        return
    lasted_ms = step.now_ms - since_ms
    if lasted_ms > channel.disagree_ms:
        latch(
            step,
            FaultCode.CHANNELS_DISAGREE,
            StopKind.EMERGENCY,
            f"The belt speed channels disagree for {lasted_ms} ms: the motor controller reads "
            f"{firmware_kmh:.2f} km/h, the Pi's belt sensor {sensor_kmh:.2f} km/h (allowed "
            f"difference {tolerance_kmh:.2f} km/h)",
        )

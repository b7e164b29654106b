"""SR-CHAN-*: the second belt-speed channel (the Pi's own sensor) against the firmware's."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.channels import (
    channel_speeds_kmh,
    channel_tolerance_kmh,
    second_channel_at_rest,
)
from controller.rules.model import (
    BeltSensorReading,
    Button,
    ChannelConfig,
    FaultCode,
    Inputs,
    LocalCommand,
    Mode,
    RemoteCommand,
    SafetyConfig,
    SetSpeed,
    StopKind,
)
from controller.rules.readiness import start_blockers
from controller.rules.tick import CLEAR_HOLD_MS
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    Rig,
    fault_code,
    is_estop,
    is_set_speed,
    is_stop,
    make_config,
    status,
    tick_while,
)

CHANNEL = ChannelConfig()
CONFIG = make_config(second_channel=CHANNEL)


@dataclass
class ChannelRig(Rig):
    """A rig with the Pi's belt sensor: it reads the belt like the firmware unless told."""

    sensor_kmh: float | None = None  # None: equal to the firmware's reading
    sensor_missing: bool = False

    def inputs(
        self, local: tuple[LocalCommand, ...] = (), remote: tuple[RemoteCommand, ...] = ()
    ) -> Inputs:
        base = super().inputs(local, remote)
        if self.sensor_missing:
            return base
        if self.sensor_kmh is not None:
            speed = self.sensor_kmh
        elif base.firmware is not None:
            speed = base.firmware.measured_kmh
        else:
            speed = self.core.commanded_kmh
        return replace(base, belt_sensor=BeltSensorReading(speed, 10, 50))


def idle(config: SafetyConfig = CONFIG, stage_number: int = 1) -> ChannelRig:
    rig = ChannelRig(config=config)
    rig.tick()
    if stage_number != 1:
        rig.tick(*(), dt_ms=TICK_MS)
        from controller.rules.model import SelectStage

        rig.tick(SelectStage(stage_number))
    assert rig.core.mode is Mode.IDLE, rig.history[-1].events
    return rig


def running(config: SafetyConfig = CONFIG, stage_number: int = 1) -> ChannelRig:
    rig = idle(config, stage_number)
    rig.press(Button.START)
    tick_while(rig, lambda: rig.core.commanded_kmh < rig.core.target_kmh)
    rig.tick()
    assert rig.core.mode is Mode.RUNNING
    return rig


def at_speed(speed_kmh: float, stage_number: int = 4, config: SafetyConfig = CONFIG) -> ChannelRig:
    """RUNNING at ``stage_number`` with the belt steady at ``speed_kmh``."""
    from controller.rules.model import SetTarget

    rig = running(config, stage_number)
    rig.tick(SetTarget(speed_kmh))
    for _ in range(2000):
        if rig.core.commanded_kmh == speed_kmh:
            break
        rig.tick()
    rig.tick()
    assert rig.core.commanded_kmh == speed_kmh
    return rig


# --------------------------------------------------------------------------- SR-CHAN-1


@pytest.mark.parametrize("mode", ["idle", "running"])
@pytest.mark.parametrize("reading", [None, math.nan, math.inf, -0.5])
def test_SR_CHAN_1_missing_or_invalid_reading_stops_and_latches(
    mode: str, reading: float | None
) -> None:
    rig = idle() if mode == "idle" else running()
    if reading is None:
        rig.sensor_missing = True
    else:
        rig.sensor_kmh = reading
    decision = rig.tick()
    assert fault_code(decision) is FaultCode.BELT_SENSOR
    assert is_stop(decision)
    assert "Pi's belt sensor" in decision.state.fault.message  # type: ignore[union-attr]


def test_SR_CHAN_1_no_second_channel_ignores_the_sensor_input() -> None:
    rig = ChannelRig(config=DEFAULT_CONFIG, sensor_kmh=math.nan)
    rig.tick()
    rig.press(Button.START)
    rig.run_ms(3000)
    assert rig.core.mode is Mode.RUNNING
    assert rig.core.fault is None


def test_SR_CHAN_1_invalid_reading_is_never_a_speed() -> None:
    inputs = Inputs(
        True, True, False, True, status(0, 1.0), belt_sensor=BeltSensorReading(math.nan, 0, None)
    )
    assert channel_speeds_kmh(status(0, 1.0), inputs, CONFIG) == (1.0, 1.0)
    assert not second_channel_at_rest(inputs, CONFIG)
    assert second_channel_at_rest(inputs, DEFAULT_CONFIG)


# --------------------------------------------------------------------------- SR-CHAN-2


def test_SR_CHAN_2_disagreement_longer_than_the_limit_estops_and_latches() -> None:
    rig = at_speed(2.0)
    rig.measured_kmh = 2.0  # the firmware's reading frozen
    rig.sensor_kmh = 3.0  # the belt really at 3.0
    first = rig.tick()
    start_ms = rig.now_ms
    assert first.state.disagree_since_ms == start_ms
    while rig.now_ms - start_ms < CHANNEL.disagree_ms - TICK_MS:
        decision = rig.tick()
        assert decision.state.mode is Mode.RUNNING, decision.events
    decision = rig.tick()  # lasted disagree_ms exactly: not yet
    assert rig.now_ms - start_ms == CHANNEL.disagree_ms
    assert decision.state.mode is Mode.RUNNING
    decision = rig.tick()
    assert fault_code(decision) is FaultCode.CHANNELS_DISAGREE
    assert is_estop(decision)
    message = decision.state.fault.message  # type: ignore[union-attr]
    assert "2.00 km/h" in message
    assert "3.00 km/h" in message


def test_SR_CHAN_2_timer_restarts_when_the_channels_agree_again() -> None:
    rig = at_speed(2.0)
    rig.sensor_kmh = 3.0
    rig.run_ms(CHANNEL.disagree_ms - 100)
    rig.sensor_kmh = None  # the Pi's sensor agrees with the firmware again
    rig.tick()
    assert rig.core.disagree_since_ms is not None  # one agreeing tick: the timer holds
    rig.run_ms(CLEAR_HOLD_MS)
    assert rig.core.disagree_since_ms is None  # agreeing for CLEAR_HOLD_MS: it restarts
    rig.sensor_kmh = 3.0
    rig.run_ms(CHANNEL.disagree_ms - 100)
    assert rig.core.mode is Mode.RUNNING


@pytest.mark.parametrize(
    ("firmware_kmh", "sensor_kmh", "disagree"),
    [
        (2.0, 2.4, False),  # 0.4: the absolute tolerance, not more
        (2.0, 2.45, True),
        (6.0, 6.65, False),  # 10 % of the higher reading: 0.665
        (6.0, 6.7, True),
        (1.0, 0.0, True),  # the Pi's sensor silent
        (0.0, 1.0, True),  # the firmware's sensor silent
        (0.3, 0.0, False),  # slower than the sensor's floor: within tolerance
    ],
)
def test_SR_CHAN_2_tolerance_is_absolute_or_relative_to_the_higher_reading(
    firmware_kmh: float, sensor_kmh: float, disagree: bool
) -> None:
    rig = at_speed(4.0)
    rig.measured_kmh = firmware_kmh
    rig.sensor_kmh = sensor_kmh
    decision = rig.tick()
    assert (decision.state.disagree_since_ms is not None) is disagree
    # The verdict travels in the Decision for telemetry (one definition, SR-CHAN-2).
    assert decision.channels_agree is (not disagree)


@pytest.mark.parametrize(
    ("second_channel", "sensor_missing", "sensor_kmh", "stale", "expected"),
    [
        (True, False, None, False, True),  # both compared and equal
        (True, False, 3.0, False, False),  # compared, beyond the tolerance
        (True, True, None, False, None),  # no Pi reading: not compared
        (True, False, math.nan, False, None),  # invalid Pi reading: not compared
        (True, False, None, True, None),  # no usable firmware status: not compared
        (True, False, 3.0, True, None),
        (False, False, None, False, None),  # no second channel configured
        (False, False, 3.0, False, None),
    ],
)
def test_SR_CHAN_2_decision_says_whether_the_channels_were_compared_and_agree(
    second_channel: bool,
    sensor_missing: bool,
    sensor_kmh: float | None,
    stale: bool,
    expected: bool | None,
) -> None:
    config = CONFIG if second_channel else DEFAULT_CONFIG
    rig = at_speed(2.0, config=config)
    rig.sensor_missing = sensor_missing
    rig.sensor_kmh = sensor_kmh
    if stale:
        rig.link = "stale"
    decision = rig.tick()
    assert decision.channels_agree is expected


def test_SR_CHAN_2_lag_allowance_while_ramping() -> None:
    rig = running(CONFIG, 4)
    from controller.rules.model import SetTarget

    rig.tick(SetTarget(6.0))  # ramping up at 0.5 km/h/s: lag allowance 0.25 km/h
    tolerance = channel_tolerance_kmh(rig.core, CONFIG, CHANNEL, 1.0)
    assert tolerance == pytest.approx(0.4 + 0.5 * 0.5)
    rig.measured_kmh = 1.0
    rig.sensor_kmh = 1.6
    assert rig.tick().state.disagree_since_ms is None
    rig.sensor_kmh = 1.7
    assert rig.tick().state.disagree_since_ms is not None


def test_SR_CHAN_2_not_judged_without_a_fresh_firmware_status() -> None:
    rig = at_speed(2.0)
    rig.sensor_kmh = 5.0
    rig.link = "stale"
    decision = rig.tick()
    assert fault_code(decision) is FaultCode.LINK_STALE
    assert decision.state.disagree_since_ms is None


def test_SR_CHAN_2_watched_while_idle() -> None:
    rig = idle()
    rig.sensor_kmh = 0.0
    rig.measured_kmh = 0.9  # firmware sees motion the Pi does not
    rig.run_ms(CHANNEL.disagree_ms + 2 * TICK_MS)
    assert rig.core.fault is not None
    codes = {rig.core.fault.code, *rig.core.secondary_faults}
    assert FaultCode.CHANNELS_DISAGREE in codes or FaultCode.MOVING_AT_REST in codes


@settings(max_examples=200, deadline=None)
@given(
    # Up to the stage 4 limit + margin: above it the overspeed and runaway rules act first.
    firmware_kmh=st.floats(0.0, 8.4),
    sensor_kmh=st.floats(0.0, 8.4),
    hold_ms=st.integers(0, 3000),
)
def test_SR_CHAN_2_property_latch_exactly_beyond_tolerance_and_time(
    firmware_kmh: float, sensor_kmh: float, hold_ms: int
) -> None:
    config = make_config(second_channel=CHANNEL, overspeed_ms=2000, follow_ms=10_000)
    rig = at_speed(4.0, config=config)
    rig.measured_kmh = firmware_kmh
    rig.sensor_kmh = sensor_kmh
    tolerance = max(CHANNEL.agree_abs_kmh, CHANNEL.agree_rel * max(firmware_kmh, sensor_kmh))
    beyond = abs(firmware_kmh - sensor_kmh) > tolerance
    first = rig.tick()
    start_ms = rig.now_ms
    rig.run_ms(hold_ms)
    lasted_ms = rig.now_ms - start_ms
    disagree_latched = FaultCode.CHANNELS_DISAGREE in (
        fault_code(first),
        fault_code(rig.history[-1]),
        *rig.core.secondary_faults,
    )
    if not beyond:
        assert not disagree_latched
    elif lasted_ms > CHANNEL.disagree_ms:
        # Beyond tolerance for longer than the disagreement time: an emergency stop has
        # latched. It is CHANNELS_DISAGREE, unless an emergency rule that reads the higher
        # channel (overspeed or runaway, SR-CHAN-3 / SR-PLAUS-5) latched first.
        fault = rig.core.fault
        assert fault is not None
        assert disagree_latched or fault.stop is StopKind.EMERGENCY
    else:
        assert not disagree_latched


# --------------------------------------------------------------------------- SR-CHAN-3


def test_SR_CHAN_3_overspeed_uses_the_higher_reading() -> None:
    rig = at_speed(8.0)
    rig.measured_kmh = 8.0  # the firmware's sensor frozen at the limit
    rig.sensor_kmh = 8.8  # the belt above limit + margin
    rig.run_ms(600)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.OVERSPEED
    assert "(Pi belt sensor)" in rig.core.fault.message
    assert is_estop(rig.history[-1])


def test_SR_CHAN_3_fault_message_names_the_pi_sensor_as_the_source() -> None:
    config = make_config(second_channel=replace(CHANNEL, disagree_ms=3000, agree_abs_kmh=2.0))
    fast = at_speed(4.0, config=config)
    fast.sensor_kmh = 5.0
    fast.run_ms(2100)
    fault = fast.core.fault
    assert fault is not None
    assert fault.message.startswith("Belt measured at 5.00 km/h (Pi belt sensor) for ")
    slow = at_speed(4.0, config=config)
    slow.measured_kmh = 3.0  # the firmware's own reading: no source named
    slow.run_ms(2100)
    fault = slow.core.fault
    assert fault is not None
    assert fault.message.startswith("Belt measured at 3.00 km/h for ")


def test_SR_CHAN_3_overspeed_seen_on_the_pi_sensor_alone_when_the_link_is_stale() -> None:
    rig = at_speed(8.0)
    rig.link = "stale"
    rig.sensor_kmh = 9.5
    rig.run_ms(600)
    codes = {rig.core.fault.code, *rig.core.secondary_faults}  # type: ignore[union-attr]
    assert FaultCode.OVERSPEED in codes
    assert is_estop(rig.history[-1])


def test_SR_CHAN_3_moving_at_rest_uses_the_higher_reading() -> None:
    config = make_config(second_channel=replace(CHANNEL, disagree_ms=3000))
    rig = idle(config)
    rig.sensor_kmh = 0.3  # within the channels' tolerance, but moving
    rig.run_ms(600)
    assert fault_code(rig.history[-1]) is FaultCode.MOVING_AT_REST
    assert is_estop(rig.history[-1])


def test_SR_CHAN_3_too_fast_on_the_higher_too_slow_on_the_lower() -> None:
    config = make_config(second_channel=replace(CHANNEL, disagree_ms=3000, agree_abs_kmh=2.0))
    fast = at_speed(4.0, config=config)
    fast.sensor_kmh = 5.0  # 1.0 above: beyond the follow tolerance (0.5), within agreement
    fast.run_ms(2100)
    assert fault_code(fast.history[-1]) is FaultCode.NOT_FOLLOWING
    assert is_estop(fast.history[-1])
    slow = at_speed(4.0, config=config)
    slow.sensor_kmh = 3.0  # 1.0 below on the lower channel
    slow.run_ms(2100)
    assert fault_code(slow.history[-1]) is FaultCode.NOT_FOLLOWING
    assert is_stop(slow.history[-1])


def test_SR_CHAN_3_one_channel_readings_are_unchanged() -> None:
    inputs = Inputs(
        True, True, False, True, status(0, 2.0), belt_sensor=BeltSensorReading(5.0, 1, 1)
    )
    assert channel_speeds_kmh(status(0, 2.0), inputs, DEFAULT_CONFIG) == (2.0, 2.0)
    assert channel_speeds_kmh(status(0, 2.0), inputs, CONFIG) == (5.0, 2.0)
    assert channel_speeds_kmh(None, inputs, CONFIG) == (5.0, 5.0)
    assert channel_speeds_kmh(None, replace(inputs, belt_sensor=None), CONFIG) == (None, None)


# --------------------------------------------------------------------------- SR-CHAN-4


def test_SR_CHAN_4_stopping_waits_until_the_pi_sensor_reads_rest() -> None:
    rig = running()
    rig.press(Button.STOP)
    rig.sensor_kmh = 0.2  # the Pi's sensor still sees the belt creeping
    tick_while(rig, lambda: rig.core.commanded_kmh > 0.0)
    rig.run_ms(200)
    assert rig.core.mode is Mode.STOPPING
    rig.sensor_kmh = 0.0
    assert rig.tick().state.mode is Mode.IDLE


@pytest.mark.parametrize(("steps", "at_rest"), [(0, True), (1, False)])
def test_SR_CHAN_4_the_pi_sensor_reads_rest_at_standstill_not_one_step_above(
    steps: int, at_rest: bool
) -> None:
    rig = running()
    rig.press(Button.STOP)
    rig.sensor_kmh = CONFIG.standstill_kmh + steps * 0.01  # 0.01 km/h: one wire step
    tick_while(rig, lambda: rig.core.commanded_kmh > 0.0)
    decision = rig.tick()
    assert second_channel_at_rest(rig.inputs(), CONFIG) is at_rest
    assert decision.state.mode is (Mode.IDLE if at_rest else Mode.STOPPING)
    assert decision.belt_at_rest is at_rest


def test_SR_CHAN_4_start_and_reset_refused_while_the_pi_sensor_sees_motion() -> None:
    rig = idle(make_config(second_channel=replace(CHANNEL, disagree_ms=3000)))
    rig.sensor_kmh = 0.2
    inputs = rig.inputs()
    blockers = start_blockers(rig.core, inputs, rig.config, rig.now_ms)
    assert any("Pi's belt sensor" in b for b in blockers)
    decision = rig.press(Button.START)
    assert decision.state.mode is Mode.IDLE
    assert not is_set_speed(decision)


# --------------------------------------------------------------------------- exhaustive

SENSOR_CASES = {
    "agree": None,
    "missing": "missing",
    "nan": math.nan,
    "negative": -1.0,
    "high": 20.0,
    "zero": 0.0,
}


@pytest.mark.parametrize(
    ("mode", "sensor", "link"),
    list(itertools.product(["idle", "running", "stopping"], SENSOR_CASES, ["fresh", "stale"])),
)
def test_SR_CHAN_exhaustive_one_tick(mode: str, sensor: str, link: str) -> None:
    """From each mode, one tick with each kind of reading: an invalid or missing reading
    always latches belt_sensor and stops; nothing renews the lease without a valid reading;
    a disagreement never latches in its first tick."""
    rig = idle() if mode == "idle" else running()
    if mode == "stopping":
        rig.press(Button.STOP)
    value = SENSOR_CASES[sensor]
    rig.sensor_missing = value == "missing"
    rig.sensor_kmh = None if value in (None, "missing") else float(value)
    rig.link = link
    decision = rig.tick()
    codes = (
        set()
        if decision.state.fault is None
        else {decision.state.fault.code, *decision.state.secondary_faults}
    )
    if sensor in ("missing", "nan", "negative"):
        assert FaultCode.BELT_SENSOR in codes
        assert not isinstance(decision.motion, SetSpeed)
    assert FaultCode.CHANNELS_DISAGREE not in codes
    if link == "stale":
        assert not isinstance(decision.motion, SetSpeed)
    if isinstance(decision.motion, SetSpeed):
        assert sensor in ("agree", "high", "zero")
        assert link == "fresh"


def test_SR_CHAN_4_start_refused_names_the_pi_sensor_reading() -> None:
    rig = idle(make_config(second_channel=replace(CHANNEL, disagree_ms=3000)))
    rig.sensor_kmh = 0.2
    blockers = start_blockers(rig.core, rig.inputs(), rig.config, rig.now_ms)
    assert (
        "the Pi's belt sensor still sees the belt moving (0.20 km/h): wait until it stands still"
        in blockers
    )


def test_SR_CHAN_4_start_refused_without_a_pi_reading_says_so() -> None:
    rig = idle()
    rig.sensor_missing = True
    blockers = start_blockers(rig.core, rig.inputs(), rig.config, rig.now_ms)
    assert any("Pi's belt sensor still sees the belt moving (no reading)" in b for b in blockers)


# --------------------------------------------------------------------------- exact edges


@pytest.mark.parametrize(
    ("reading", "shown"), [(None, "no reading"), (math.nan, "nan km/h"), (-0.5, "-0.5 km/h")]
)
def test_SR_CHAN_1_message_names_what_the_sensor_gave(reading: float | None, shown: str) -> None:
    rig = idle()
    if reading is None:
        rig.sensor_missing = True
    else:
        rig.sensor_kmh = reading
    fault = rig.tick().state.fault
    assert fault is not None
    assert fault.message.startswith(f"The Pi's belt sensor gave {shown}, not a valid speed reading")


@pytest.mark.parametrize("cause", ["sensor_missing", "sensor_invalid", "link_stale"])
def test_SR_CHAN_2_timer_forgotten_when_the_channels_cannot_be_compared(cause: str) -> None:
    """A disagreement that started before a tick without two usable readings does not carry
    over: the timer starts again when both are back."""
    rig = idle()
    rig.sensor_kmh = 3.0  # the firmware reads the belt at rest: beyond the idle tolerance
    started = rig.tick()
    assert started.state.disagree_since_ms == rig.now_ms
    if cause == "sensor_missing":
        rig.sensor_missing = True
    elif cause == "sensor_invalid":
        rig.sensor_kmh = math.nan
    else:
        rig.link = "stale"
    assert rig.tick().state.disagree_since_ms is None


def test_SR_CHAN_2_channels_agree_at_exactly_the_tolerance() -> None:
    rig = idle()
    tolerance_kmh = channel_tolerance_kmh(rig.core, CONFIG, CHANNEL, CHANNEL.agree_abs_kmh)
    rig.sensor_kmh = tolerance_kmh  # the firmware reads 0.0: the difference is the tolerance
    at_edge = rig.tick()
    assert at_edge.channels_agree is True
    assert at_edge.state.disagree_since_ms is None
    rig.sensor_kmh = math.nextafter(tolerance_kmh, math.inf)
    assert rig.tick().channels_agree is False


def test_SR_PLAUS_2_too_slow_names_the_lower_reading() -> None:
    """Too slow is judged on the lower channel (SR-CHAN-3), and the message shows that reading,
    not the higher one."""
    config = make_config(
        second_channel=ChannelConfig(disagree_ms=60_000), follow_ms=100, overspeed_ms=60_000
    )
    rig = running(config)
    rig.sensor_kmh = 0.0  # the Pi's sensor sees a stalled belt; the firmware reads it moving
    tick_while(rig, lambda: rig.core.fault is None)
    fault = rig.core.fault
    assert fault is not None
    assert fault.code is FaultCode.NOT_FOLLOWING
    assert fault.message.startswith("Belt measured at 0.00 km/h (Pi belt sensor) for ")

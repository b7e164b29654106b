"""SR-MON-1..5 at their edges: every combination of the discrete start and reset conditions,
and each number of key-relay mode at its limit and one step past it (one millisecond, or
0.01 km/h, the finest speed step anywhere in the system).

The relay is held (``Decision.key_relay``) only while RUNNING; everything here is checked
through :func:`decide`, :func:`relay_start_blockers` and :func:`next_deadline_ms`, the
core's public functions, with the belt driven by hand as a person at the console would.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.rules.config_rules import check_safety_config
from controller.rules.core import decide
from controller.rules.key_relay import relay_start_blockers
from controller.rules.model import (
    BeltSensorReading,
    Button,
    ChannelConfig,
    Decision,
    EStop,
    FaultCode,
    GripLossAction,
    Inputs,
    Mode,
    Press,
    RemoteLowerStageCap,
    SafetyConfig,
    Stop,
)
from controller.rules.timers import next_deadline_ms
from tests.core.relay_support import CONFIG, RELAY, RelayRig, armed, idle, relay_open, walking
from tests.core.support import TICK_MS, make_config, stage

STANDSTILL_KMH = CONFIG.standstill_kmh
STEP_KMH = 0.01  # the finest speed step anywhere in the system (wire and display)
GRIPS = [(False, False), (True, False), (False, True), (True, True)]
# (hands required, action on grip loss): every grip policy a key-relay stage may have
# (SR-CONFIG-10 refuses "slow")
POLICIES = [
    (0, GripLossAction.NONE),
    (0, GripLossAction.WARN),
    (1, GripLossAction.WARN),
    (1, GripLossAction.STOP_LATCH),
    (2, GripLossAction.STOP_LATCH),
]
# None: no reading at all; nan and -1.0: invalid readings
READINGS: list[float | None] = [
    None,
    math.nan,
    -1.0,
    0.0,
    STANDSTILL_KMH,
    STANDSTILL_KMH + STEP_KMH,
    1.0,
]


def relay_config(**overrides: object) -> SafetyConfig:
    return replace(CONFIG, key_relay=replace(RELAY, **overrides))  # type: ignore[arg-type]  # test-only keyword overrides


def policy_config(hands: int, action: GripLossAction) -> SafetyConfig:
    return make_config(
        stage(1, hands=hands, action=action),
        second_channel=ChannelConfig(),
        key_relay=RELAY,
        machine_max_kmh=8.0,
    )


def sensor(speed_kmh: float | None) -> BeltSensorReading | None:
    return None if speed_kmh is None else BeltSensorReading(speed_kmh, 0, None)


def reading_valid(speed_kmh: float | None) -> bool:
    return speed_kmh is not None and math.isfinite(speed_kmh) and speed_kmh >= 0.0


def kinds(decision: Decision) -> list[str]:
    return [event.kind for event in decision.events]


def fault_codes(decision: Decision) -> set[FaultCode]:
    fault = decision.state.fault
    primary = set() if fault is None else {fault.code}
    return primary | set(decision.state.secondary_faults)


@cache
def start_rig(mode: str, hands: int, action: GripLossAction) -> RelayRig:
    """A rig in ``mode`` at a one-stage table with this grip policy, every input healthy.

    Shared between tests (cached): callers decide from its state and never tick it.
    """
    config = policy_config(hands, action)
    if mode == "idle":
        return idle(config=config)
    if mode == "running":
        return armed(config=config)
    if mode == "stopping":
        rig = walking(1.0, config=config)
        rig.press(Button.STOP)
        assert rig.core.mode is Mode.STOPPING
        return rig
    rig = idle(config=config)
    rig.estop = True
    rig.tick()
    rig.estop = False
    rig.tick()
    assert rig.core.mode is Mode.FAULTED
    return rig


# --------------------------------------------------------------------------- SR-MON-1


@pytest.mark.parametrize("mode", ["idle", "stopping", "faulted"])
@pytest.mark.parametrize(("hands", "action"), POLICIES)
def test_SR_MON_1_start_closes_the_relay_exactly_when_every_condition_holds(
    mode: str, hands: int, action: GripLossAction
) -> None:
    """START from IDLE, STOPPING and FAULTED, for every grip x key x e-stop x reading."""
    rig = start_rig(mode, hands, action)
    state = rig.core
    for grip, key, estop, speed_kmh in itertools.product(
        GRIPS, (True, False), (False, True), READINGS
    ):
        inputs = Inputs(
            grip_left=grip[0],
            grip_right=grip[1],
            estop_pressed=estop,
            safety_key_present=key,
            firmware=None,
            belt_sensor=sensor(speed_kmh),
        )
        failing = [
            estop,
            not key,
            not reading_valid(speed_kmh),
            reading_valid(speed_kmh) and speed_kmh > STANDSTILL_KMH,  # type: ignore[operator]  # valid: a float
            sum(grip) < hands,
            state.fault is not None,
        ]
        case = (mode, hands, action.value, grip, key, estop, speed_kmh)
        blockers = relay_start_blockers(state, inputs, rig.config)
        assert len(blockers) == sum(failing), (case, blockers)
        decision = decide(
            state, replace(inputs, local=(Press(Button.START),)), rig.config, rig.now_ms + TICK_MS
        )
        closes = mode == "idle" and not any(failing)
        assert decision.key_relay is closes, (case, decision.events)
        assert (decision.state.mode is Mode.RUNNING) is closes, case
        if closes:
            assert kinds(decision) == ["transition", "started"], case
        else:
            assert kinds(decision).count("start_refused") == 1, (case, decision.events)
            assert "started" not in kinds(decision), case


@pytest.mark.parametrize(("hands", "action"), POLICIES)
def test_SR_MON_1_start_while_running_changes_nothing(hands: int, action: GripLossAction) -> None:
    """START while RUNNING changes nothing; if the same tick ends the run (a fault, the belt
    stopped) it is refused like any START outside IDLE."""
    rig = start_rig("running", hands, action)
    for grip, key, estop, speed_kmh in itertools.product(
        GRIPS, (True, False), (False, True), READINGS
    ):
        inputs = Inputs(
            grip_left=grip[0],
            grip_right=grip[1],
            estop_pressed=estop,
            safety_key_present=key,
            firmware=None,
            belt_sensor=sensor(speed_kmh),
        )
        case = (hands, action.value, grip, key, estop, speed_kmh)
        now_ms = rig.now_ms + TICK_MS
        plain = decide(rig.core, inputs, rig.config, now_ms)
        start = replace(inputs, local=(Press(Button.START),))
        pressed = decide(rig.core, start, rig.config, now_ms)
        assert pressed.state == plain.state, case
        assert pressed.key_relay is plain.key_relay, case
        refused = [e for e in pressed.events if e.kind == "start_refused"]
        assert [e for e in pressed.events if e.kind != "start_refused"] == list(plain.events)
        assert len(refused) == (0 if plain.key_relay else 1), case


def test_SR_MON_1_start_records_the_running_state_afresh() -> None:
    """A second START after the belt stopped at the console is a new start: the belt must
    be started again within the start window, and nothing of the last run is carried over."""
    rig = walking(1.0)
    rig.belt_kmh = 0.0
    assert rig.tick(dt_ms=200).state.mode is Mode.IDLE
    decision = rig.press(Button.START)
    assert decision.key_relay
    assert decision.state.stop_reason is None
    assert decision.state.relay_motion_seen is False
    assert decision.state.relay_armed_ms == rig.now_ms
    decisions = rig.run_ms(RELAY.start_window_ms - TICK_MS)  # the belt not started yet
    assert all(d.key_relay for d in decisions)
    assert rig.core.stop_reason is None


def test_SR_MON_1_every_tick_records_its_time() -> None:
    """The service wakes at :func:`next_deadline_ms`, which counts from the last tick."""
    rig = walking(1.0)
    for decision, now_ms in ((rig.tick(), rig.now_ms), (rig.tick(dt_ms=7), rig.now_ms)):
        assert decision.state.last_tick_ms == now_ms


def test_SR_GRIP_7_stuck_grip_timer_restarts_at_start_in_key_relay_mode() -> None:
    window_ms = 60_000
    rig = idle(config=replace(CONFIG, grip_stuck_window_ms=window_ms))
    rig.tick(dt_ms=2 * window_ms)  # hands unchanged for long while idle: no warning there
    rig.press(Button.START)
    start_ms = rig.now_ms
    rig.belt_kmh = 1.0
    rig.tick(dt_ms=window_ms - 1 - TICK_MS)
    rig.tick(dt_ms=TICK_MS)
    assert rig.now_ms == start_ms + window_ms - 1
    assert rig.events("grip_sensor_stuck") == []
    decision = rig.tick(dt_ms=1)
    assert "grip_sensor_stuck" in kinds(decision)
    assert decision.key_relay  # a warning only


# --------------------------------------------------------------------------- SR-MON-2


@settings(max_examples=60, deadline=None)
@given(stage_number=st.sampled_from([1, 2, 4]), steps=st.integers(-3, 3))
def test_SR_MON_2_overspeed_exactly_at_limit_plus_margin_and_one_step_above(
    stage_number: int, steps: int
) -> None:
    limit_kmh = CONFIG.stages[stage_number - 1].max_kmh
    allowed_kmh = limit_kmh + max(CONFIG.overspeed_abs_kmh, CONFIG.overspeed_rel * limit_kmh)
    rig = walking(limit_kmh, stage_number)
    rig.belt_kmh = allowed_kmh + steps * STEP_KMH if steps else allowed_kmh
    decisions = rig.run_ms(CONFIG.overspeed_ms + 3 * TICK_MS)
    assert decisions[-1].key_relay is (steps <= 0)
    assert (FaultCode.OVERSPEED in fault_codes(decisions[-1])) is (steps > 0)


def test_SR_MON_2_overspeed_latches_one_ms_after_overspeed_ms_and_the_service_wakes_then() -> None:
    rig = walking(2.29)
    rig.run_ms(300)  # steady within the margin: no runaway suspected (SR-PLAUS-5)
    rig.belt_kmh = 2.31
    first = rig.tick()
    since_ms = rig.now_ms
    assert next_deadline_ms(first.state, rig.inputs(), CONFIG) == since_ms + CONFIG.overspeed_ms + 1
    assert rig.tick(dt_ms=CONFIG.overspeed_ms).key_relay
    decision = rig.tick(dt_ms=1)
    assert relay_open(decision)
    assert fault_codes(decision) == {FaultCode.OVERSPEED}


# --------------------------------------------------------------------------- SR-MON-3


def faulted_at_rest() -> RelayRig:
    """Walking, then e-stop and safety key out at once; released, the belt at rest."""
    rig = walking(1.0)
    rig.estop = True
    rig.key = False
    first = rig.tick()
    assert isinstance(first.motion, EStop)
    rig.estop = False
    rig.key = True
    rig.belt_kmh = 0.0
    rig.tick(dt_ms=200)
    decision = rig.tick()
    assert fault_codes(decision) == {FaultCode.ESTOP, FaultCode.SAFETY_KEY}
    assert isinstance(decision.motion, Stop)  # at rest, released: the emergency is over
    return rig


@pytest.mark.parametrize("chatter", [False, True])
def test_SR_MON_3_reset_clears_the_fault_exactly_when_every_condition_holds(
    chatter: bool,
) -> None:
    """RESET from FAULTED for every grip x key x e-stop x reading; grip does not matter,
    a chattering grip sensor does (at a stage that watches grip)."""
    rig = faulted_at_rest()
    if chatter:
        for _ in range(CONFIG.grip_chatter_edges):
            rig.grip = (not rig.grip[0], True)
            rig.tick()
        assert rig.events("grip_sensor_suspect")
    state = rig.core
    for grip, key, estop, speed_kmh in itertools.product(
        GRIPS, (True, False), (False, True), READINGS
    ):
        inputs = Inputs(
            grip_left=grip[0],
            grip_right=grip[1],
            estop_pressed=estop,
            safety_key_present=key,
            firmware=None,
            belt_sensor=sensor(speed_kmh),
            local=(Press(Button.RESET),),
        )
        case = (chatter, grip, key, estop, speed_kmh)
        decision = decide(state, inputs, CONFIG, rig.now_ms + TICK_MS)
        clears = (
            not estop
            and key
            and reading_valid(speed_kmh)
            and speed_kmh <= STANDSTILL_KMH  # type: ignore[operator]  # valid: a float
            and not chatter
        )
        assert relay_open(decision), case
        if clears:
            assert decision.state.mode is Mode.IDLE, case
            assert decision.state.fault is None, case
            assert decision.state.secondary_faults == (), case
            assert decision.state.fault_rest_reached is False, case
            assert decision.state.stop_reason is None, case
            assert decision.belt_at_rest, case
            assert kinds(decision) == ["transition", "fault_cleared"], case
        else:
            assert decision.state.mode is Mode.FAULTED, case
            assert decision.state.fault is not None, case
            assert decision.state.fault.code is FaultCode.ESTOP, case
            assert kinds(decision).count("reset_refused") == 1, (case, decision.events)


def test_SR_MON_3_after_a_reset_every_fault_latches_and_stops_as_new() -> None:
    rig = faulted_at_rest()
    decision = rig.press(Button.RESET)
    assert decision.state.mode is Mode.IDLE
    rig.estop = True
    rig.key = False
    decision = rig.tick()
    assert isinstance(decision.motion, EStop)
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.ESTOP
    assert decision.state.secondary_faults == (FaultCode.SAFETY_KEY,)
    assert [e.details["code"] for e in decision.events if e.kind == "fault"] == [
        "estop",
        "safety_key",
    ]


@pytest.mark.parametrize("mode", ["idle", "running", "stopping"])
@pytest.mark.parametrize("remote_cap", [False, True])
def test_SR_MON_3_reset_without_a_fault_only_clears_a_remote_cap_in_idle(
    mode: str, remote_cap: bool
) -> None:
    rig = idle(stage_number=3)
    if remote_cap:
        rig.tick(remote=(RemoteLowerStageCap(2),))
    if mode != "idle":
        rig.press(Button.START)
    if mode == "stopping":
        rig.belt_kmh = 1.0
        rig.tick()
        rig.press(Button.STOP)
    assert rig.core.mode.value == mode
    now_ms = rig.now_ms + TICK_MS
    plain = decide(rig.core, rig.inputs(), CONFIG, now_ms)
    reset = decide(rig.core, rig.inputs((Press(Button.RESET),)), CONFIG, now_ms)
    if mode == "idle" and remote_cap:
        assert reset.state.remote_stage_cap is None
        assert kinds(reset) == ["stage_cap_changed"]
        assert reset.events[0].details == {"from_cap": 2, "to_cap": None}
        assert reset.state == replace(plain.state, remote_stage_cap=None)
    else:
        assert reset == plain


def test_SR_MON_3_belt_at_rest_reported_exactly_in_idle_or_faulted_with_a_reading_at_rest() -> None:
    for mode, speed_kmh in itertools.product(["idle", "running", "stopping", "faulted"], READINGS):
        rig = start_rig(mode, 1, GripLossAction.STOP_LATCH)
        inputs = replace(rig.inputs(), belt_sensor=sensor(speed_kmh))
        decision = decide(rig.core, inputs, rig.config, rig.now_ms + TICK_MS)
        resting = reading_valid(speed_kmh) and speed_kmh <= STANDSTILL_KMH  # type: ignore[operator]  # valid: a float
        expected = decision.state.mode in (Mode.IDLE, Mode.FAULTED) and resting
        assert decision.belt_at_rest is expected, (mode, speed_kmh, decision.state.mode)


@pytest.mark.parametrize(("steps", "at_rest"), [(0, True), (1, False)])
def test_SR_MON_3_stopping_reaches_idle_at_standstill_not_one_step_above(
    steps: int, at_rest: bool
) -> None:
    rig = walking(1.0)
    rig.press(Button.STOP)
    rig.belt_kmh = STANDSTILL_KMH + steps * STEP_KMH
    decision = rig.tick(dt_ms=200)
    assert decision.state.mode is (Mode.IDLE if at_rest else Mode.STOPPING)
    assert ("stopped" in kinds(decision)) is at_rest
    assert relay_open(decision)


# --------------------------------------------------------------------------- SR-MON-4


@settings(max_examples=40, deadline=None)
@given(window_ms=st.integers(2000, 60_000), ticks=st.integers(1, 5))
def test_SR_MON_4_start_window_held_at_its_end_opened_one_ms_later(
    window_ms: int, ticks: int
) -> None:
    config = relay_config(start_window_ms=window_ms)
    rig = armed(config=config)
    start_ms = rig.now_ms
    for _ in range(ticks - 1):
        assert rig.tick(dt_ms=window_ms // ticks).key_relay
    last = rig.tick(dt_ms=start_ms + window_ms - rig.now_ms)
    assert last.key_relay
    assert last.state.mode is Mode.RUNNING
    decision = rig.tick(dt_ms=1)
    assert relay_open(decision)
    assert decision.state.fault is None
    opened = [e for e in decision.events if e.kind == "key_relay_opened"]
    assert [e.details for e in opened] == [{"reason": "no_motion"}]
    assert f"within {window_ms} ms of START" in opened[0].message


def test_SR_MON_4_motion_at_the_end_of_the_start_window_keeps_the_relay() -> None:
    rig = armed()
    rig.tick(dt_ms=RELAY.start_window_ms - TICK_MS)
    rig.belt_kmh = 1.0
    assert rig.tick().key_relay
    assert all(d.key_relay for d in rig.run_ms(1000))


def test_SR_MON_4_a_reading_at_standstill_is_no_motion() -> None:
    rig = armed()
    rig.belt_kmh = STANDSTILL_KMH  # not moving: the belt was never started
    assert all(d.key_relay for d in rig.run_ms(500))
    assert rig.core.relay_motion_seen is False
    rig.belt_kmh = 0.0
    assert all(d.key_relay for d in rig.run_ms(500))
    rig.belt_kmh = STANDSTILL_KMH + STEP_KMH  # moving: the belt was started
    assert rig.tick(dt_ms=200).key_relay
    rig.belt_kmh = STANDSTILL_KMH  # and stopped at the console
    decision = rig.tick(dt_ms=200)
    assert relay_open(decision)
    assert decision.state.fault is None
    assert decision.state.mode is Mode.IDLE
    assert [e.details for e in decision.events if e.kind == "key_relay_opened"] == [
        {"reason": "belt_stopped"}
    ]


def fall(
    to_kmh: float, *, from_kmh: float = 4.0, span_ms: int = 100, limit_kmh_s: float = 15.0
) -> Decision:
    """Walking at ``from_kmh`` at stage 4, that reading judged, then ``to_kmh`` ``span_ms``
    later."""
    config = relay_config(max_belt_decel_kmh_s=limit_kmh_s)
    rig = walking(from_kmh, stage_number=4, config=config)
    rig.tick(dt_ms=200)  # at least 100 ms since the last judged reading: judged now
    rig.belt_kmh = to_kmh
    return rig.tick(dt_ms=span_ms)


def test_SR_MON_4_a_fall_exactly_at_the_limit_is_a_stop_one_step_faster_a_failed_sensor() -> None:
    at_limit = fall(2.5)  # 1.5 km/h in 100 ms: exactly 15 km/h/s
    assert at_limit.key_relay
    assert at_limit.state.fault is None
    past = fall(2.5 - STEP_KMH)
    assert relay_open(past)
    assert fault_codes(past) == {FaultCode.BELT_SENSOR}
    assert past.state.fault is not None
    assert "fell from 4.00 to 2.49 km/h in 100 ms (15.1 km/h/s)" in past.state.fault.message


def test_SR_MON_4_a_fall_is_judged_over_100_ms_at_the_least() -> None:
    rig = walking(4.0, stage_number=4)
    rig.tick(dt_ms=200)
    rig.belt_kmh = 0.5
    assert rig.tick(dt_ms=99).key_relay  # not judged yet: one pulse period could do this
    decision = rig.tick(dt_ms=1)
    assert fault_codes(decision) == {FaultCode.BELT_SENSOR}
    assert decision.state.fault is not None
    assert "in 100 ms (35.0 km/h/s)" in decision.state.fault.message


def test_SR_MON_4_each_fall_is_judged_from_the_reading_judged_100_ms_before() -> None:
    rig = walking(4.0, stage_number=4)
    rig.tick(dt_ms=200)
    assert rig.tick(dt_ms=100).key_relay  # judged again, exactly 100 ms later: 4.0
    rig.belt_kmh = 2.4
    decision = rig.tick(dt_ms=100)  # 16 km/h/s over these 100 ms (8 over the last 200)
    assert fault_codes(decision) == {FaultCode.BELT_SENSOR}


def test_SR_MON_4_readings_from_before_an_invalid_one_are_not_compared_with_later_ones() -> None:
    rig = walking(4.0, stage_number=4)
    rig.tick(dt_ms=200)
    judged_ms = rig.now_ms
    rig.belt_kmh = math.nan
    assert fault_codes(rig.tick()) == {FaultCode.BELT_SENSOR}
    rig.belt_kmh = 0.0
    assert rig.press(Button.RESET).state.mode is Mode.IDLE
    rig.tick(dt_ms=judged_ms + 100 - rig.now_ms)
    assert rig.core.fault is None
    assert rig.core.mode is Mode.IDLE


@settings(max_examples=80, deadline=None)
@given(
    limit_kmh_s=st.floats(5.0, 50.0),  # the range SR-CONFIG-10 allows
    span_ms=st.integers(100, 1000),
    drop_kmh=st.floats(0.0, 7.8),
)
def test_SR_MON_4_property_a_fall_faster_than_the_limit_latches_a_slower_one_never(
    limit_kmh_s: float, span_ms: int, drop_kmh: float
) -> None:
    rate_kmh_s = drop_kmh * 1000.0 / span_ms
    assume(abs(rate_kmh_s - limit_kmh_s) >= 0.01 * limit_kmh_s)
    decision = fall(8.0 - drop_kmh, from_kmh=8.0, span_ms=span_ms, limit_kmh_s=limit_kmh_s)
    failed = rate_kmh_s > limit_kmh_s
    assert (fault_codes(decision) == {FaultCode.BELT_SENSOR}) is failed
    assert decision.key_relay is not failed


def test_SR_MON_4_limits_from_the_config_are_the_ones_applied() -> None:
    """The decel limit and the start window come from ``drive.key_relay``, not defaults."""
    assert fall(2.0, limit_kmh_s=20.0).key_relay  # 20 km/h/s: at a 20 km/h/s limit
    assert relay_open(fall(2.0, limit_kmh_s=19.9))
    rig = armed(config=relay_config(start_window_ms=2000))
    rig.tick(dt_ms=2001)
    assert rig.core.mode is Mode.IDLE


# --------------------------------------------------------------------------- SR-CONFIG-10


@pytest.mark.parametrize(
    ("field", "accepted", "refused"),
    [
        ("hold_off_ms", (20, 500), (19, 501)),
        ("start_window_ms", (2000, 60_000), (1999, 60_001)),
        ("max_belt_decel_kmh_s", (5.0, 50.0), (5.0 - STEP_KMH, 50.0 + STEP_KMH)),
    ],
)
def test_SR_CONFIG_10_key_relay_ranges_at_their_limits_and_one_step_past(
    field: str, accepted: tuple[float, float], refused: tuple[float, float]
) -> None:
    for value in accepted:
        assert check_safety_config(relay_config(**{field: value})) == [], (field, value)
    for value in refused:
        problems = check_safety_config(relay_config(**{field: value}))
        assert [p.key_path for p in problems] == [f"key_relay.{field}"], (field, value)

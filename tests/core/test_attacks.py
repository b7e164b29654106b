"""Attacks on the safety rules from the outside: timing edges, repeated blips, two faults at
once, odd but valid configurations, values at the wire's resolution and remote commands.

Each test names the rule it tries to defeat. The rules held against every attack here except
the first (SR-MOTION-2 with a lagging firmware set-point), which was fixed in the core.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rules.config_rules import (
    GRIP_REGRIP_MAX_MS,
    GRIP_REGRIP_MIN_MS,
    check_safety_config,
)
from controller.rules.core import decide
from controller.rules.model import (
    Button,
    ChannelConfig,
    CoreState,
    Decision,
    EStop,
    FaultCode,
    GripLossAction,
    LinkHealth,
    LocalCommand,
    Mode,
    Press,
    RemoteCommand,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    SelectStage,
    SetSpeed,
    SetTarget,
    Stop,
)
from controller.rules.motion import WIRE_SPEED_RESOLUTION_KMH, wire_speed_kmh
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    Rig,
    faulted_rig,
    idle_rig,
    make_config,
    running_rig,
    single_stage_config,
    stage,
    tick_while,
)
from tests.core.test_channels import ChannelRig


def _fw4_accepts(
    speed_kmh: float, rate_kmh_s: float, setpoint_kmh: float, ceilings: tuple[float, float]
) -> bool:
    """FW-4 as the firmware judges a SET_SPEED: against its *present* set-point, at the
    wire's resolution; a speed equal to it is holding, within either ceiling. ``ceilings``:
    (max_accel_kmh_s, max_decel_kmh_s)."""
    max_accel_kmh_s, max_decel_kmh_s = ceilings
    wire_kmh = wire_speed_kmh(speed_kmh)
    present_kmh = wire_speed_kmh(setpoint_kmh)
    if wire_kmh < present_kmh:
        return rate_kmh_s <= max_decel_kmh_s
    if wire_kmh > present_kmh:
        return rate_kmh_s <= max_accel_kmh_s
    return rate_kmh_s <= max(max_accel_kmh_s, max_decel_kmh_s)


def _wire_steps(low_kmh: float, high_kmh: float) -> list[float]:
    """Every wire value from ``low_kmh`` to ``high_kmh`` (both rounded to the wire)."""
    low = round(wire_speed_kmh(low_kmh) / WIRE_SPEED_RESOLUTION_KMH)
    high = round(wire_speed_kmh(high_kmh) / WIRE_SPEED_RESOLUTION_KMH)
    return [n * WIRE_SPEED_RESOLUTION_KMH for n in range(min(low, high), max(low, high) + 1)]


# ---------------------------------------------------------------- SR-MOTION-2


@settings(max_examples=400, deadline=None)
@given(
    rates=st.tuples(
        st.sampled_from([0.2, 0.5, 1.0, 2.0, 3.6]), st.sampled_from([0.2, 1.0, 1.5, 3.6])
    ),
    sent_kmh=st.floats(min_value=0.6, max_value=2.9),
    lag_kmh=st.floats(min_value=-0.1, max_value=0.1),
    change_kmh=st.floats(min_value=-0.2, max_value=0.2),
    remote=st.booleans(),
)
def test_SR_MOTION_2_property_a_lagging_firmware_set_point_accepts_every_set_speed(
    rates: tuple[float, float], sent_kmh: float, lag_kmh: float, change_kmh: float, remote: bool
) -> None:
    """The firmware's set-point lags behind the speed last sent while it ramps toward it (by
    a tick at least, by 0.05 km/h after one late tick at 0.5 km/h/s), from below or from
    above. Whatever the target does then (lowered just below the speed last sent, raised,
    held), the SET_SPEED's rate must pass FW-4 against every present set-point between the
    one last reported and the speed last sent, with the firmware's ceilings at the stage's
    own rates (the tightest configuration accepted). ``rates``: (accel, decel) in km/h/s.

    Found by this attack: the core compared with its own last speed only. A target lowered
    just below a rising speed went out at the shipped 3.6 km/h/s deceleration while still
    above the firmware's set-point, which took it for an acceleration above its 1.0 km/h/s
    ceiling (ACCEL_ABOVE_CEILING); and a stage that accelerates faster than the firmware may
    decelerate (2.0 and 1.5 km/h/s) sent its acceleration while holding below a set-point
    still ramping down.
    """
    accel_kmh_s, decel_kmh_s = rates
    config = single_stage_config(
        max_kmh=3.0, accel_kmh_s=accel_kmh_s, decel_kmh_s=decel_kmh_s, hands=0,
        action=GripLossAction.NONE, grace_ms=0,
    )  # fmt: skip
    rig = running_rig(config)
    reported_kmh = max(0.0, sent_kmh - lag_kmh)
    rig.state = replace(rig.core, target_kmh=sent_kmh, commanded_kmh=sent_kmh)
    rig.fw_commanded_kmh = reported_kmh
    rig.measured_kmh = reported_kmh
    target_kmh = sent_kmh + change_kmh
    if remote and change_kmh < 0.0:
        decision = rig.tick(remote=(RemoteLowerTarget(target_kmh),))
    else:
        decision = rig.tick(SetTarget(target_kmh))
    motion = decision.motion
    assert isinstance(motion, SetSpeed)
    for present_kmh in _wire_steps(reported_kmh, sent_kmh):
        assert _fw4_accepts(motion.speed_kmh, motion.accel_kmh_s, present_kmh, rates), (
            motion,
            present_kmh,
            reported_kmh,
        )


def test_SR_MOTION_2_falling_below_the_set_point_still_decelerates_at_the_stage_rate() -> None:
    """The fix takes nothing away: a speed below both the speed last sent and the reported
    set-point goes out with the stage's deceleration, so a lowered target slows the belt at
    once, as before."""
    config = single_stage_config(max_kmh=3.0, accel_kmh_s=0.5, decel_kmh_s=3.6)
    rig = running_rig(config)
    rig.state = replace(rig.core, target_kmh=3.0, commanded_kmh=2.0)
    rig.fw_commanded_kmh = 1.99
    decision = rig.tick(SetTarget(1.0))
    assert isinstance(decision.motion, SetSpeed)
    assert wire_speed_kmh(decision.motion.speed_kmh) < 1.99
    assert decision.motion.accel_kmh_s == 3.6
    rig.fw_commanded_kmh = None  # the firmware follows again
    decisions = rig.run_ms(13 * TICK_MS)  # 1.928 -> 1.0 at 0.072 km/h a tick
    assert all(isinstance(d.motion, SetSpeed) and d.motion.accel_kmh_s == 3.6 for d in decisions)
    assert rig.core.commanded_kmh == 1.0
    assert rig.core.mode is Mode.RUNNING


@settings(max_examples=100, deadline=None)
@given(
    rates=st.sampled_from([(2.0, 1.5), (3.6, 0.2), (1.0, 0.5), (0.5, 0.5)]),
    sent_kmh=st.floats(min_value=0.6, max_value=2.9),
    lag_kmh=st.floats(min_value=0.0, max_value=0.1),
)
def test_SR_MOTION_2_property_holding_at_the_speed_last_sent_carries_the_lower_rate(
    rates: tuple[float, float], sent_kmh: float, lag_kmh: float
) -> None:
    """A speed held at the speed last sent, with the firmware's set-point there or still
    ramping up toward it, is not above both: it may be judged holding, and carries the lower
    of the stage's two rates, also for a stage that accelerates faster than it decelerates.
    ``rates``: (accel, decel) in km/h/s."""
    accel_kmh_s, decel_kmh_s = rates
    config = single_stage_config(
        max_kmh=3.0, accel_kmh_s=accel_kmh_s, decel_kmh_s=decel_kmh_s, hands=0,
        action=GripLossAction.NONE, grace_ms=0,
    )  # fmt: skip
    rig = running_rig(config)
    rig.state = replace(rig.core, target_kmh=sent_kmh, commanded_kmh=sent_kmh)
    rig.fw_commanded_kmh = rig.measured_kmh = sent_kmh - lag_kmh
    motion = rig.tick().motion
    assert isinstance(motion, SetSpeed)
    assert motion.speed_kmh == sent_kmh
    assert motion.accel_kmh_s == min(rates)


# ---------------------------------------------------------------- SR-GRIP-2, SR-GRIP-10


@settings(max_examples=150, deadline=None)
@given(
    on_ticks=st.integers(min_value=1, max_value=24),  # held 20..480 ms, below the 500 ms regrip
    off_ticks=st.integers(min_value=1, max_value=20),  # released 20..400 ms
    stage_number=st.sampled_from([1, 2]),
)
def test_SR_GRIP_10_property_a_hand_tapping_at_any_period_is_stopped(
    on_ticks: int, off_ticks: int, stage_number: int
) -> None:
    """A hand that taps the rail at any rhythm, holding for less than ``grip_regrip_ms`` each
    time, is stopped at a stop_latch stage (stage 1: grace 300 ms, stage 2: 800 ms) within
    the grace plus one tapping period from its first release: as ``grip_lost`` or, when it
    taps fast enough to look like chatter, as ``grip_sensor``. Never as a running belt."""
    rig = running_rig(stage_number=stage_number)
    grace_ms = rig.config.stages[stage_number - 1].grip_grace_ms
    first_release_ms = rig.now_ms + TICK_MS
    period_ticks = on_ticks + off_ticks
    deadline_ms = first_release_ms + grace_ms + period_ticks * TICK_MS + TICK_MS
    tick = 0
    while rig.now_ms < deadline_ms and rig.core.mode is Mode.RUNNING:
        held = tick % period_ticks >= off_ticks  # released first, then held
        rig.grip = (held, False)
        rig.tick()
        tick += 1
    fault = rig.core.fault
    assert fault is not None, (rig.now_ms - first_release_ms, rig.core)
    assert fault.code in (FaultCode.GRIP_LOST, FaultCode.GRIP_SENSOR)
    assert not isinstance(rig.history[-1].motion, SetSpeed)


@settings(max_examples=150, deadline=None)
@given(
    regrip_ms=st.integers(min_value=GRIP_REGRIP_MIN_MS, max_value=GRIP_REGRIP_MAX_MS),
    on_fraction=st.floats(min_value=0.0, max_value=0.999),
    off_ticks=st.integers(min_value=1, max_value=20),
)
def test_SR_GRIP_10_property_any_accepted_regrip_time_stops_a_tapping_hand(
    regrip_ms: int, on_fraction: float, off_ticks: int
) -> None:
    """SR-CONFIG-8 refuses a regrip time below 200 ms (at 0 any touch would end the loss):
    with every regrip time the configuration accepts, a hand whose touches are shorter than
    it is stopped within the grace plus one tapping period, however it taps."""
    config = replace(DEFAULT_CONFIG, grip_regrip_ms=regrip_ms)
    assert check_safety_config(config) == []
    on_ticks = max(1, int(on_fraction * regrip_ms) // TICK_MS)  # held < regrip_ms each time
    rig = running_rig(config)
    grace_ms = config.stages[0].grip_grace_ms
    first_release_ms = rig.now_ms + TICK_MS
    period_ticks = on_ticks + off_ticks
    deadline_ms = first_release_ms + grace_ms + period_ticks * TICK_MS + TICK_MS
    tick = 0
    while rig.now_ms < deadline_ms and rig.core.mode is Mode.RUNNING:
        rig.grip = (tick % period_ticks >= off_ticks, False)  # released first, then held
        rig.tick()
        tick += 1
    fault = rig.core.fault
    assert fault is not None, (regrip_ms, on_ticks, off_ticks, rig.core)
    assert fault.code in (FaultCode.GRIP_LOST, FaultCode.GRIP_SENSOR)


def test_SR_CONFIG_8_a_regrip_time_that_lets_any_touch_end_a_grip_loss_is_refused() -> None:
    """At ``grip_regrip_ms: 0`` a touch of one tick ends a grip loss, and a hand touching the
    rail for 20 ms of every 300 ms at stage 1 ran on for 20 s: the configuration refuses it."""
    for regrip_ms in (0, 1, TICK_MS, GRIP_REGRIP_MIN_MS - 1):
        problems = check_safety_config(replace(DEFAULT_CONFIG, grip_regrip_ms=regrip_ms))
        assert [p.key_path for p in problems] == ["grip_regrip_ms"], regrip_ms
        assert problems[0].message.startswith("must be in "), problems[0].message
        assert "200" in problems[0].message, problems[0].message


# ---------------------------------------------------------------- SR-PREC-1, SR-TIMER-1


def test_SR_PREC_1_stale_limit_and_grip_grace_ending_in_the_same_ms_latch_link_stale_first() -> (
    None
):
    """Two deadlines that coincide: the firmware's last status turns stale in the very
    millisecond the grip grace runs out. The deadline names that millisecond; at it the
    firmware link (step 3) latches first, with a controlled stop; nothing runs on."""
    rig = running_rig()
    grace_ms = rig.config.stages[0].grip_grace_ms  # 300
    stale_ms = rig.config.stale_ms  # 500
    rig.grip = (False, False)
    released = rig.tick()
    lost_at_ms = rig.now_ms
    # The last status arrived so that it turns stale (age stale_ms + 1) when the grace ends.
    received_ms = lost_at_ms + grace_ms - stale_ms - 1
    inputs = rig.inputs()
    assert inputs.firmware is not None
    status = replace(inputs.firmware, received_ms=received_ms)
    state = released.state
    now_ms = rig.now_ms
    while now_ms < lost_at_ms + grace_ms - TICK_MS:
        now_ms += TICK_MS
        decision = decide(state, replace(inputs, firmware=status), rig.config, now_ms)
        assert decision.state.mode is Mode.RUNNING, decision.events
        state = decision.state
    assert decision.next_deadline_ms == lost_at_ms + grace_ms
    both = decide(state, replace(inputs, firmware=status), rig.config, lost_at_ms + grace_ms)
    assert both.state.mode is Mode.FAULTED
    assert both.state.fault is not None
    assert both.state.fault.code is FaultCode.LINK_STALE
    assert both.motion == Stop(decel_kmh_s=rig.config.stop_decel_kmh_s)
    one_ms_early = decide(
        state, replace(inputs, firmware=status), rig.config, lost_at_ms + grace_ms - 1
    )
    assert one_ms_early.state.mode is Mode.RUNNING


def test_SR_PREC_1_key_out_with_a_stale_status_in_one_tick_is_an_emergency() -> None:
    """Two faults at once, one emergency and one controlled: the key (step 2) is the cause
    and the stop is ESTOP; the stale link is recorded beside it, never downgrading it."""
    rig = running_rig()
    rig.key = False
    rig.link = "stale"
    decision = rig.tick()
    assert decision.state.fault is not None
    assert decision.state.fault.code is FaultCode.SAFETY_KEY
    assert FaultCode.LINK_STALE in decision.state.secondary_faults
    assert isinstance(decision.motion, EStop)


# ---------------------------------------------------------------- SR-ESTOP-1, SR-ESTOP-2

_STAGE_COMMANDS: tuple[tuple[LocalCommand, ...], ...] = (
    (Press(Button.STAGE_DOWN),),
    (Press(Button.STAGE_UP),),
    (SelectStage(1),),
    (Press(Button.START),),
    (Press(Button.RESET),),
    (Press(Button.FASTER),),
)


@pytest.mark.parametrize("mode", ["idle", "running"])
@pytest.mark.parametrize("input_name", ["estop", "key"])
@pytest.mark.parametrize("local", _STAGE_COMMANDS)
@pytest.mark.parametrize("remote", [(), (RemoteLowerStageCap(1),)])
def test_SR_ESTOP_1_SR_ESTOP_2_emergency_in_the_tick_of_a_stage_change_or_start(
    mode: str, input_name: str, local: tuple[LocalCommand, ...], remote: tuple[RemoteCommand, ...]
) -> None:
    """The e-stop or the key in the same tick as a stage change, a remote cap, a START, a
    RESET or FASTER: ESTOP at once, latched, and the command never moves the belt."""
    rig = running_rig(stage_number=2) if mode == "running" else idle_rig(stage_number=2)
    if input_name == "estop":
        rig.estop = True
    else:
        rig.key = False
    decision = rig.tick(*local, remote=remote)
    assert decision.state.mode is Mode.FAULTED
    assert decision.state.fault is not None
    expected = FaultCode.ESTOP if input_name == "estop" else FaultCode.SAFETY_KEY
    assert decision.state.fault.code is expected
    assert isinstance(decision.motion, EStop)
    assert not any(e.kind in ("started", "fault_cleared") for e in decision.events)


@settings(max_examples=120, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.booleans(),  # e-stop pressed
            st.booleans(),  # key present
            st.sampled_from([None, Button.RESET, Button.START, Button.STAGE_DOWN]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_SR_ESTOP_1_property_a_chattering_estop_or_key_never_lets_the_belt_run(
    steps: list[tuple[bool, bool, Button | None]],
) -> None:
    """E-stop and key chattering at every tick, with RESET and START pressed in between:
    every tick with the e-stop pressed or the key out sends ESTOP and is FAULTED; the belt
    runs again only after a tick with both healthy and a RESET, then a START in a later
    tick."""
    rig = running_rig()
    reset_ok_since: int | None = None
    for estop, key, button in steps:
        rig.estop, rig.key = estop, key
        before = rig.core.mode
        decision = rig.tick(*(() if button is None else (Press(button),)))
        if estop or not key:
            assert decision.state.mode is Mode.FAULTED
            assert isinstance(decision.motion, EStop)
            reset_ok_since = None
        elif decision.state.mode is Mode.IDLE and before is Mode.FAULTED:
            assert button is Button.RESET
            reset_ok_since = len(rig.history)
        if decision.state.mode is Mode.RUNNING and before is not Mode.RUNNING:
            assert button is Button.START
            assert reset_ok_since is not None
            assert reset_ok_since < len(rig.history)


# ---------------------------------------------------------------- SR-SPEED-3, SR-TIMER-1


def _session(rig: Rig) -> list[tuple[object, ...]]:
    """One scripted session touching every timer: start, ramp, a grip release shorter than
    the grace and one longer, a reset, a start, an overspeed and a stale link."""
    trace: list[tuple[object, ...]] = []

    def record(decision: Decision) -> None:
        fault = decision.state.fault
        deadline = decision.next_deadline_ms
        trace.append(
            (
                decision.state.mode,
                decision.motion,
                None if fault is None else fault.code,
                tuple(e.kind for e in decision.events),
                None if deadline is None else deadline - rig.now_ms,
            )
        )

    record(rig.tick())
    record(rig.press(Button.START))
    record(rig.tick(SetTarget(1.5)))
    for decision in rig.run_ms(3000):
        record(decision)
    rig.grip = (False, False)
    for decision in rig.run_ms(200):
        record(decision)
    rig.grip = (True, True)
    for decision in rig.run_ms(600):
        record(decision)
    rig.grip = (False, False)
    for decision in rig.run_ms(400):
        record(decision)
    rig.grip = (True, True)
    for decision in rig.run_ms(3000):
        record(decision)
    record(rig.press(Button.RESET))
    record(rig.tick())
    record(rig.press(Button.START))
    for decision in rig.run_ms(2000):
        record(decision)
    rig.measured_kmh = 2.5
    for decision in rig.run_ms(700):
        record(decision)
    rig.measured_kmh = None
    rig.link = "stale"
    for decision in rig.run_ms(100):
        record(decision)
    return trace


_ORIGINS_MS = st.one_of(
    st.integers(0, 10**6),
    st.integers(2**31 - 5000, 2**31 + 5000),
    st.integers(2**32 - 5000, 2**32 + 5000),
    st.integers(2**62, 2**63),
)


@settings(max_examples=40, deadline=None)
@given(origin_ms=_ORIGINS_MS)
def test_SR_SPEED_3_SR_TIMER_1_property_decisions_do_not_depend_on_the_clock_origin(
    origin_ms: int,
) -> None:
    """The clock's origin is arbitrary (a monotonic clock after weeks of uptime, or past the
    16-, 31- and 32-bit wraps of a millisecond counter): the same session from any origin
    gives the same modes, commands, faults, events and deadlines relative to now."""
    reference = _session(Rig(now_ms=1000))
    assert _session(Rig(now_ms=origin_ms)) == reference
    assert FaultCode.GRIP_LOST in {step[2] for step in reference}
    assert FaultCode.OVERSPEED in {step[2] for step in reference}


# ---------------------------------------------------------------- SR-REMOTE-*

_REMOTE_SPEEDS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 0.0, 0.1, 0.5, 2.0, 8.0, 1e308, -1.0]),
)
_REMOTES = st.one_of(
    st.builds(RemoteStop),
    st.builds(RemoteLowerTarget, _REMOTE_SPEEDS),
    st.builds(RemoteLowerStageCap, st.integers(-(2**40), 2**40) | st.integers(-1, 6)),
)


def _goal_kmh(state: CoreState, rig: Rig) -> float:
    """The speed the belt heads for: while RUNNING the target; otherwise the speed a later
    START ramps to, at least the stage's start speed (SR-START-3). Reaching IDLE or lowering
    the stage in IDLE resets the target to the start speed (SR-STOP-2, SR-STAGE-5), which
    may be above a target lowered to 0 remotely; a START goes to that start speed either
    way."""
    if state.mode is Mode.RUNNING:
        return state.target_kmh
    stage = rig.config.stages[state.stage - 1]
    return min(max(state.target_kmh, stage.start_kmh), stage.max_kmh)


@settings(max_examples=200, deadline=None)
@given(
    start=st.sampled_from(["idle", "running", "stopping", "faulted"]),
    batches=st.lists(
        st.tuples(st.lists(_REMOTES, max_size=4), st.integers(min_value=0, max_value=6)),
        min_size=1,
        max_size=25,
    ),
)
def test_SR_REMOTE_4_property_remote_commands_in_any_order_and_with_any_value_only_tighten(
    start: str, batches: list[tuple[list[RemoteCommand], int]]
) -> None:
    """Any sequence of remote commands, several per tick, with any number (NaN, infinities,
    -0.0, huge), while the training cap moves up and down: the speed the belt heads for, the
    stage and the remote cap never rise, nothing leaves FAULTED and nothing starts."""
    rig = running_rig(stage_number=3) if start != "idle" else idle_rig(stage_number=3)
    if start == "stopping":
        rig.press(Button.STOP)
    elif start == "faulted":
        rig.estop = True
        rig.tick()
        rig.estop = False
    for remotes, training_cap in batches:
        before = rig.core
        rig.stage_cap = max(training_cap, before.stage)  # the training cap never forces here
        decision = rig.tick(remote=tuple(remotes))
        after = decision.state
        if (before.mode is Mode.RUNNING) is (after.mode is Mode.RUNNING):
            assert _goal_kmh(after, rig) <= _goal_kmh(before, rig)
        if after.mode is not Mode.RUNNING:
            assert not isinstance(decision.motion, SetSpeed)
        assert after.stage <= before.stage
        if before.remote_stage_cap is not None:
            assert after.remote_stage_cap is not None
            assert after.remote_stage_cap <= before.remote_stage_cap
        if before.mode is not Mode.RUNNING:
            assert after.mode is not Mode.RUNNING
        if before.mode is Mode.FAULTED:
            assert after.mode is Mode.FAULTED
        if after.remote_stage_cap is not None:
            assert after.remote_stage_cap >= 1
            assert after.stage <= after.remote_stage_cap


def test_SR_REMOTE_3_SR_RESET_5_a_reset_that_clears_a_fault_keeps_the_remote_cap() -> None:
    """A remote cap set while FAULTED survives the RESET that clears the fault: lifting it
    takes a second, deliberate RESET in IDLE (SR-RESET-5). A training cap that rises and a
    STAGE_UP in IDLE stay under it meanwhile."""
    rig = faulted_rig(stage_number=2)
    rig.tick(remote=(RemoteLowerStageCap(1),))
    assert rig.core.stage == 1
    cleared = rig.press(Button.RESET)
    assert cleared.state.mode is Mode.IDLE
    assert cleared.state.remote_stage_cap == 1
    rig.stage_cap = 4
    refused = rig.press(Button.STAGE_UP)
    assert refused.state.stage == 1
    assert [e.kind for e in refused.events] == ["command_rejected"]
    lifted = rig.press(Button.RESET)
    assert lifted.state.remote_stage_cap is None
    assert [e.kind for e in lifted.events] == ["stage_cap_changed"]


def test_SR_REMOTE_2_SR_SPEED_5_remote_zero_with_a_local_faster_in_the_same_tick_stops() -> None:
    """Ordering: a remote target of 0 and a local FASTER in the same tick. Remote commands go
    first, so FASTER raises the new target by one step (0.1 km/h, at or below standstill):
    the belt stops (SR-SPEED-5); a FASTER never cancels the remote lowering."""
    rig = running_rig()
    decision = rig.tick(Press(Button.FASTER), remote=(RemoteLowerTarget(0.0),))
    assert decision.state.target_kmh <= rig.config.standstill_kmh
    assert decision.state.mode is Mode.STOPPING
    assert decision.state.stop_reason == "target_zero"


# ---------------------------------------------------------------- SR-SPEED-1 at the wire

#: Half the wire's resolution: how far rounding to the wire can move a speed.
HALF_RESOLUTION_KMH = WIRE_SPEED_RESOLUTION_KMH / 2


@settings(max_examples=60, deadline=None)
@given(
    machine_hundredths=st.integers(min_value=50, max_value=2500),
    stage_fraction=st.floats(min_value=0.3, max_value=1.0),
    wanted_kmh=st.floats(min_value=0.5, max_value=40.0),
)
def test_SR_SPEED_1_property_the_speed_on_the_wire_stays_within_the_limits(
    machine_hundredths: int, stage_fraction: float, wanted_kmh: float
) -> None:
    """A stage limit that is not a multiple of the wire's 0.01 km/h (2.005, 7.996 ...), under
    a machine maximum that is (the schema requires it of firmware.max_speed_kmh): the speed
    sent never exceeds the machine maximum on the wire (the firmware would latch
    SPEED_ABOVE_CEILING), and never the stage limit by more than half a resolution."""
    machine_max_kmh = machine_hundredths / 100
    stage_max_kmh = max(0.3, machine_max_kmh * stage_fraction)
    config = replace(
        single_stage_config(max_kmh=stage_max_kmh, start_kmh=0.25, accel_kmh_s=3.6),
        machine_max_kmh=machine_max_kmh,
    )
    rig = running_rig(config, settle=False)
    ramp_ms = int(1000 * stage_max_kmh / 3.6) + 5 * TICK_MS
    decisions = [rig.tick(SetTarget(wanted_kmh)), *rig.run_ms(ramp_ms)]
    decisions += [rig.press(Button.FASTER) for _ in range(3)]
    for decision in decisions:
        motion = decision.motion
        assert isinstance(motion, SetSpeed), decision.events
        wire_kmh = wire_speed_kmh(motion.speed_kmh)
        assert wire_kmh <= machine_max_kmh + 1e-9
        assert wire_kmh <= stage_max_kmh + HALF_RESOLUTION_KMH + 1e-9
        assert round(motion.speed_kmh * 100) <= machine_hundredths  # as the codec encodes it


# ---------------------------------------------------------------- SR-LINK-3


def test_SR_LINK_3_a_degraded_link_after_reset_and_start_is_caught_within_one_window() -> None:
    """The link degrades (60 % of the firmware's frames lost), latches, and a RESET at rest
    clears it while the link is still as bad; START is accepted (link quality is not a start
    condition, SR-START-2). The belt runs at most one link window before the next judgement
    latches again, with a controlled stop."""
    config = DEFAULT_CONFIG
    rig = running_rig(config)
    rig.link_health = LinkHealth(up=True, session=1, frames_received=0, frames_missed=0)
    received = missed = 0
    rig.tick()

    def lossy_tick(*local: LocalCommand) -> Decision:
        nonlocal received, missed
        received, missed = received + 2, missed + 3  # 50 Hz, 3 of every 5 frames lost
        rig.link_health = LinkHealth(
            up=True, session=1, frames_received=received, frames_missed=missed
        )
        return rig.tick(*local)

    def mode() -> Mode:  # a call: mypy must not narrow the mode between the loops
        return rig.core.mode

    while mode() is Mode.RUNNING:
        lossy_tick()
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.LINK_STALE
    while rig.core.commanded_kmh > 0.0:
        lossy_tick()
    lossy_tick()
    assert lossy_tick(Press(Button.RESET)).state.mode is Mode.IDLE
    lossy_tick()
    started = lossy_tick(Press(Button.START))
    assert started.state.mode is Mode.RUNNING
    started_ms = rig.now_ms
    while mode() is Mode.RUNNING:
        lossy_tick()
        assert rig.now_ms - started_ms <= config.link_window_ms
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.LINK_STALE
    assert isinstance(rig.history[-1].motion, Stop)


# ---------------------------------------------------------------- odd but valid configs


@pytest.mark.parametrize(
    ("accel_kmh_s", "decel_kmh_s"), [(0.01, 0.01), (0.01, 3.6), (3.6, 0.01), (3.6, 3.6)]
)
def test_SR_SPEED_2_SR_PLAUS_2_rates_at_their_bounds_ramp_exactly_and_never_fault(
    accel_kmh_s: float, decel_kmh_s: float
) -> None:
    """Stage rates at both ends of SR-CONFIG-3 (0.01 and 3.6 km/h/s): with an ideal belt the
    speed moves by exactly rate x dt a tick, every SET_SPEED passes FW-4 with ceilings equal
    to the stage's rates, and nothing latches (no false not-following)."""
    config = single_stage_config(
        max_kmh=2.0, start_kmh=0.5, accel_kmh_s=accel_kmh_s, decel_kmh_s=decel_kmh_s
    )
    rig = running_rig(config, settle=False)
    plan = [(SetTarget(2.0), 1200), (SetTarget(1.99), 100), (SetTarget(0.6), 1200)]
    for command, ticks in plan:
        decisions = [rig.tick(command), *(rig.tick() for _ in range(ticks))]
        for before, decision in zip([rig.history[-ticks - 2], *decisions], decisions, strict=False):
            motion = decision.motion
            assert isinstance(motion, SetSpeed), decision.events
            step = decision.state.commanded_kmh - before.state.commanded_kmh
            assert -decel_kmh_s * TICK_MS / 1000 - 1e-9 <= step
            assert step <= accel_kmh_s * TICK_MS / 1000 + 1e-9
            setpoint_kmh = wire_speed_kmh(before.state.commanded_kmh)
            wire_kmh = wire_speed_kmh(motion.speed_kmh)
            if wire_kmh < setpoint_kmh:
                assert motion.accel_kmh_s <= decel_kmh_s
            elif wire_kmh > setpoint_kmh:
                assert motion.accel_kmh_s <= accel_kmh_s
    assert rig.core.fault is None


def test_SR_STAGE_2_SR_STAGE_3_single_stage_with_start_equal_to_max() -> None:
    """One stage, start speed equal to its limit: START goes straight for the limit, FASTER
    at the limit is answered, no stage can be raised, a remote cap cannot lower below 1."""
    config = single_stage_config(max_kmh=1.0, start_kmh=1.0)
    rig = running_rig(config)
    assert rig.core.target_kmh == 1.0
    assert rig.core.commanded_kmh == 1.0
    faster = rig.press(Button.FASTER)
    assert [e.kind for e in faster.events] == ["command_rejected"]
    assert faster.state.target_kmh == 1.0
    assert [e.kind for e in rig.press(Button.STAGE_UP).events] == ["command_rejected"]
    capped = rig.tick(remote=(RemoteLowerStageCap(1),))
    assert [e.kind for e in capped.events] == ["command_rejected"]
    assert capped.state.remote_stage_cap is None
    assert capped.state.mode is Mode.RUNNING


# ---------------------------------------------------------------- SR-CHAN-3, SR-PLAUS-1


@pytest.mark.parametrize("dip_every_ms", [100, 260, 500])
def test_SR_CHAN_3_SR_PLAUS_1_a_dipping_firmware_reading_cannot_hide_an_overspeed(
    dip_every_ms: int,
) -> None:
    """The belt holds at 5.0 km/h on stage 1 (limit 2.0 km/h) and the firmware's reading
    falls back to the commanded 2.0 km/h for one tick every ``dip_every_ms`` (a sensor that
    misses pulses); such a dip does not restart the timers either (they hold for
    ``CLEAR_HOLD_MS``, see test_held_timers.py for the firmware reading alone). The Pi's belt
    sensor reads 5.0 km/h throughout; overspeed is judged on the higher reading (SR-CHAN-3),
    so the belt is stopped with ESTOP after ``overspeed_ms`` (or sooner by SR-CHAN-2),
    whatever the dips."""
    config = make_config(second_channel=ChannelConfig())
    rig = ChannelRig(config=config)
    rig.tick()
    rig.press(Button.START)
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    assert rig.core.commanded_kmh == 2.0
    began_ms = rig.now_ms
    rig.sensor_kmh = 5.0
    elapsed_ms = 0
    while rig.core.mode is Mode.RUNNING:
        elapsed_ms += TICK_MS
        rig.measured_kmh = 2.0 if elapsed_ms % dip_every_ms == 0 else 5.0
        rig.tick()
        assert rig.now_ms - began_ms <= config.overspeed_ms + 2 * TICK_MS
    assert rig.core.fault is not None
    assert rig.core.fault.code in (FaultCode.OVERSPEED, FaultCode.CHANNELS_DISAGREE)
    assert isinstance(rig.history[-1].motion, EStop)


# ---------------------------------------------------------------- SR-GRIP-3, SR-GRIP-8


def test_SR_GRIP_3_SR_GRIP_8_stage_down_and_faster_in_one_tick_during_a_slowed_loss() -> None:
    """Two slow stages (slow to 1.0 at stage 2, to 0.8 at stage 1); the grip is lost past
    the grace at stage 2 and the belt has slowed to 1.0. STAGE_DOWN, FASTER and a console
    target of 2.0 in one tick: the stage change makes stage 1's action due again, and the
    commands after it in that tick raise the target (SR-GRIP-8 applies the new action at the
    next grip check). The next tick slows to stage 1's 0.8 km/h; the commanded speed rose by
    one tick of acceleration at most, and falls from then on while the grip stays lost."""
    stages = (
        stage(1, max_kmh=2.0, action=GripLossAction.SLOW, slow_kmh=0.8, grace_ms=300),
        stage(2, max_kmh=3.5, accel_kmh_s=0.3, action=GripLossAction.SLOW, slow_kmh=1.0),
    )
    rig = running_rig(make_config(*stages), stage_number=2)
    rig.tick(SetTarget(3.0))
    tick_while(rig, lambda: rig.core.commanded_kmh < 3.0)
    rig.grip = (False, False)
    tick_while(rig, lambda: rig.core.commanded_kmh > 1.0)
    assert rig.core.grip_action_taken
    burst = rig.tick(Press(Button.STAGE_DOWN), Press(Button.FASTER), SetTarget(2.0))
    assert burst.state.stage == 1
    assert burst.state.commanded_kmh <= 1.0 + 0.3 * TICK_MS / 1000 + 1e-9
    after = rig.tick()
    assert after.state.target_kmh == 0.8
    assert [e.kind for e in after.events] == ["grip_lost"]
    previous_kmh = after.state.commanded_kmh
    for decision in rig.run_ms(2000):
        assert decision.state.commanded_kmh <= previous_kmh
        previous_kmh = decision.state.commanded_kmh
    assert rig.core.commanded_kmh == 0.8


# ---------------------------------------------------------------- SR-ESTOP-1, SR-RELOAD-1


def test_SR_ESTOP_1_SR_STAGE_6_config_swapped_while_the_estop_is_pressed_keeps_the_latch() -> None:
    """The e-stop is pressed at stage 3 and, while it is held, a reload with a single stage
    is applied at rest (the service swaps the config between two ticks): the stage is
    clamped, the e-stop fault stays latched with ESTOP sent while pressed, and neither RESET
    nor START moves anything until the e-stop is released; then RESET and START as usual."""
    rig = running_rig(stage_number=3)
    rig.estop = True
    assert isinstance(rig.tick().motion, EStop)
    tick_while(rig, lambda: rig.core.commanded_kmh > 0.0)
    rig.config = single_stage_config()
    swapped = rig.tick(Press(Button.RESET))
    assert swapped.state.stage == 1
    assert swapped.state.mode is Mode.FAULTED
    assert isinstance(swapped.motion, EStop)
    assert [e.kind for e in swapped.events if e.kind != "stage_changed"] == ["reset_refused"]
    assert rig.press(Button.START).state.mode is Mode.FAULTED
    rig.estop = False
    rig.tick()
    assert rig.press(Button.RESET).state.mode is Mode.IDLE
    rig.tick()
    assert rig.press(Button.START).state.mode is Mode.RUNNING


@pytest.mark.parametrize("runaway_kmh_s", [0.5, 1.0, 3.0])
def test_SR_CHAN_3_SR_PLAUS_5_pi_sensor_frozen_at_a_plausible_speed_while_the_belt_runs_away(
    runaway_kmh_s: float,
) -> None:
    """Two faults at once: the Pi's belt sensor freezes at the commanded 2.0 km/h (stage 1)
    and the motor board runs away. The firmware's reading is the higher one, so overspeed
    and the runaway rule watch it (SR-CHAN-3): ESTOP before the reading is 0.6 km/h past
    the limit plus margin, and at the latest ``overspeed_ms`` after it crossed it."""
    config = make_config(second_channel=ChannelConfig())
    rig = ChannelRig(config=config)
    rig.tick()
    rig.press(Button.START)
    rig.tick(SetTarget(2.0))
    rig.run_ms(10_000)
    rig.sensor_kmh = 2.0
    allowed_kmh = 2.0 + config.overspeed_abs_kmh
    reading_kmh = 2.0
    crossed_ms: int | None = None
    while rig.core.mode is Mode.RUNNING:
        reading_kmh += runaway_kmh_s * TICK_MS / 1000
        rig.measured_kmh = reading_kmh
        rig.tick()
        if crossed_ms is None and reading_kmh > allowed_kmh:
            crossed_ms = rig.now_ms
        assert reading_kmh <= allowed_kmh + 0.6
    assert crossed_ms is not None
    assert rig.now_ms - crossed_ms <= config.overspeed_ms + TICK_MS
    assert rig.core.fault is not None
    assert rig.core.fault.code in (FaultCode.OVERSPEED, FaultCode.CHANNELS_DISAGREE)
    assert isinstance(rig.history[-1].motion, EStop)


# ---------------------------------------------------------------- SR-CHAN-1


@pytest.mark.parametrize("mode", ["idle", "running", "stopping"])
@pytest.mark.parametrize("glitch", ["missing", "nan", "negative"])
def test_SR_CHAN_1_a_pi_sensor_that_drops_out_for_one_tick_in_every_two_latches_at_once(
    mode: str, glitch: str
) -> None:
    """The Pi's belt sensor chatters between a good reading and none (or NaN, or a negative
    value) at every tick: the first bad tick latches ``belt_sensor`` with a controlled stop,
    in every mode; the good ticks after it clear nothing."""
    config = make_config(second_channel=ChannelConfig())
    rig = ChannelRig(config=config)
    rig.tick()
    if mode != "idle":
        rig.press(Button.START)
        rig.run_ms(1000)
    if mode == "stopping":
        rig.press(Button.STOP)
    assert rig.core.fault is None
    for tick in range(10):
        bad = tick % 2 == 1
        rig.sensor_missing = bad and glitch == "missing"
        rig.sensor_kmh = {"nan": math.nan, "negative": -0.5}.get(glitch) if bad else None
        decision = rig.tick()
        if tick == 1:
            assert decision.state.fault is not None
            assert decision.state.fault.code is FaultCode.BELT_SENSOR
            assert isinstance(decision.motion, Stop)
        if tick >= 1:
            assert decision.state.mode is Mode.FAULTED

"""The core's next timer deadline (``Decision.next_deadline_ms``).

The service wakes at this deadline in addition to its regular ticks, so a timer acts when it
runs out rather than at the next tick. The property: with the same inputs (no new commands,
the same firmware status), no call of ``decide`` before the deadline decides anything
different from the decision that announced it. The deadline may be early, never late.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.rules.core import decide
from controller.rules.model import (
    Button,
    CoreState,
    Decision,
    FaultCode,
    FirmwareState,
    Inputs,
    LocalCommand,
    Mode,
    MotionCommand,
    Press,
    RemoteCommand,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    SafetyConfig,
    SelectStage,
    SetTarget,
)
from controller.rules.reset import RESET_CLEAR_TIMEOUT_MS
from controller.rules.timers import next_deadline_ms
from tests.core.support import (
    DEFAULT_STAGES,
    Rig,
    make_config,
    reset_waiting_rig,
    running_rig,
    single_stage_config,
    tick_while,
)

QUIET_LINK = {"stale_ms": 5000}  # the stale-status deadline out of the way
HORIZON_MS = 60_000  # with no deadline, nothing may change within this time either

LOCAL_COMMANDS: tuple[LocalCommand, ...] = (
    Press(Button.START),
    Press(Button.STOP),
    Press(Button.RESET),
    Press(Button.FASTER),
    Press(Button.SLOWER),
    Press(Button.STAGE_UP),
    Press(Button.STAGE_DOWN),
    SelectStage(1),
    SelectStage(3),
    SelectStage(4),
    SetTarget(1.5),
    SetTarget(0.0),
)
REMOTE_COMMANDS: tuple[RemoteCommand, ...] = (
    RemoteStop(),
    RemoteLowerTarget(0.3),
    RemoteLowerStageCap(1),
)


def verdict(state: CoreState, motion: MotionCommand) -> tuple[object, ...]:
    """What a decision says, apart from the ramp's progress and the timers' bookkeeping."""
    fault = state.fault
    return (
        state.mode,
        None if fault is None else (fault.code, fault.stop),
        state.secondary_faults,
        state.warnings,
        state.stage,
        state.target_kmh,
        state.stop_reason,
        state.remote_stage_cap,
        state.grip_action_taken,
        type(motion),
    )


def assert_deadline_holds(
    decision: Decision, inputs: Inputs, config: SafetyConfig, now_ms: int, inside: list[int]
) -> None:
    """No quiet call of ``decide`` strictly between ``now_ms`` and the deadline changes the
    verdict or reports an event. ``inside`` are probe offsets (ms, scaled to the window)."""
    deadline = decision.next_deadline_ms
    assert deadline is None or deadline > now_ms
    assert deadline == next_deadline_ms(decision.state, inputs, config)
    quiet = replace(inputs, local=(), remote=())
    end = deadline if deadline is not None else now_ms + HORIZON_MS
    span = end - now_ms - 1
    probes = {now_ms + 1, end - 1, *(now_ms + 1 + (span * k) // 1000 for k in inside)}
    expected = verdict(decision.state, decision.motion)
    for t_ms in sorted(p for p in probes if now_ms < p < end):
        later = decide(decision.state, quiet, config, t_ms)
        assert later.events == (), (t_ms, deadline, later.events)
        assert verdict(later.state, later.motion) == expected, (t_ms, deadline)


def mostly(usual: object, other: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """``usual`` three times in four, else a draw from ``other``."""
    return st.sampled_from((usual, usual, usual)) | other


step_knobs = st.fixed_dictionaries(
    {
        "dt_ms": st.integers(1, 30) | st.integers(1, 700),
        "grip": st.sampled_from(((True, True), (True, True), (False, False), (True, False))),
        "estop": mostly(False, st.booleans()),
        "key": mostly(True, st.booleans()),
        "fw_key": mostly(True, st.booleans()),
        "link": mostly("fresh", st.sampled_from(("fresh", "stale", "none", "old"))),
        "measured_kmh": mostly(None, st.floats(0.0, 12.0)),
        "fw_state": mostly(FirmwareState.IDLE, st.sampled_from(FirmwareState)),
        "fw_fault": mostly(0, st.sampled_from((1, 2, 5, 6, 10))),
        "fw_commanded_kmh": mostly(0.0, st.floats(0.0, 3.0)),
        "local": st.lists(st.sampled_from(LOCAL_COMMANDS), max_size=2),
        "remote": st.lists(st.sampled_from(REMOTE_COMMANDS), max_size=1),
        "inside": st.lists(st.integers(0, 1000), max_size=3),
    }
)

timer_configs = st.builds(
    lambda stale, over, follow, rest, edges, window, stuck: make_config(
        *DEFAULT_STAGES,
        stale_ms=stale,
        overspeed_ms=over,
        follow_ms=follow,
        moving_at_rest_ms=rest,
        grip_chatter_edges=edges,
        grip_chatter_window_ms=window,
        grip_stuck_window_ms=stuck,
    ),
    st.integers(60, 600),
    st.integers(20, 800),
    st.integers(20, 2500),
    st.integers(20, 800),
    st.integers(2, 10),
    st.integers(50, 1500),
    st.integers(100, 5000),
)


def _knobs(**changes: object) -> dict[str, object]:
    """One step of the property below: a quiet tick 20 ms on, with ``changes``."""
    knobs: dict[str, object] = {
        "dt_ms": 20,
        "grip": (True, True),
        "estop": False,
        "key": True,
        "fw_key": True,
        "link": "fresh",
        "measured_kmh": None,
        "fw_state": FirmwareState.IDLE,
        "fw_fault": 0,
        "fw_commanded_kmh": 0.0,
        "local": [],
        "remote": [],
        "inside": [],
    }
    return knobs | changes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=timer_configs,
    start=st.sampled_from((0, 1, 2, 3, 4)),
    steps=st.lists(step_knobs, min_size=1, max_size=30),
)
# Found by this property: an overspeed timer held through a clear tick, past its limit, and
# a stage cap in that tick making the same reading over the limit (the next tick latches).
@example(
    config=make_config(*DEFAULT_STAGES, overspeed_ms=20),
    start=2,
    steps=[
        _knobs(measured_kmh=4.0),
        _knobs(dt_ms=21, measured_kmh=3.0, remote=[RemoteLowerStageCap(1)]),
    ],
)
def test_SR_TIMER_1_property_no_decision_changes_before_the_deadline(
    config: SafetyConfig, start: int, steps: list[dict[str, object]]
) -> None:
    # Start idle (0) or running at stage ``start``.
    rig = running_rig(config, start) if start else Rig(config=config)
    for knobs in steps:
        dt_ms = int(knobs["dt_ms"])  # type: ignore[call-overload]  # drawn as an int
        rig.now_ms += dt_ms
        for name in ("grip", "estop", "key", "fw_key", "measured_kmh", "fw_state", "fw_fault"):
            setattr(rig, name, knobs[name])
        rig.fw_commanded_kmh = float(knobs["fw_commanded_kmh"])  # type: ignore[arg-type]
        link = str(knobs["link"])
        rig.link = "fresh" if link == "old" else link
        inputs = rig.inputs(tuple(knobs["local"]), tuple(knobs["remote"]))  # type: ignore[arg-type]
        if link == "old" and inputs.firmware is not None:
            # A status that arrived a while ago and is still within the stale limit.
            age_ms = config.stale_ms // 2
            inputs = replace(
                inputs, firmware=replace(inputs.firmware, received_ms=rig.now_ms - age_ms)
            )
        decision = decide(rig.core, inputs, config, rig.now_ms)
        inside = list(knobs["inside"])  # type: ignore[call-overload]  # drawn as a list
        assert_deadline_holds(decision, inputs, config, rig.now_ms, inside)
        rig.state = decision.state


def test_SR_GRIP_2_deadline_is_the_end_of_the_grace() -> None:
    config = single_stage_config(grace_ms=300)
    rig = running_rig(config)
    rig.grip = (False, False)
    released = rig.tick()
    released_ms = rig.now_ms
    assert released.state.mode is Mode.RUNNING
    assert released.next_deadline_ms == released_ms + 300
    inputs = rig.inputs()
    before = decide(released.state, inputs, config, released_ms + 299)
    assert before.state.mode is Mode.RUNNING
    at = decide(released.state, inputs, config, released_ms + 300)
    assert at.state.fault is not None
    assert at.state.fault.code is FaultCode.GRIP_LOST


def test_SR_STALE_1_deadline_is_one_ms_past_the_stale_limit() -> None:
    rig = running_rig()
    decision = rig.tick()
    assert decision.next_deadline_ms == rig.now_ms + rig.config.stale_ms + 1
    quiet = rig.inputs()
    at = decide(decision.state, quiet, rig.config, rig.now_ms + rig.config.stale_ms + 1)
    assert at.state.fault is not None
    assert at.state.fault.code is FaultCode.LINK_STALE


def test_no_deadline_without_a_timer() -> None:
    rig = Rig(link="none")
    decision = rig.tick()
    assert decision.state.mode is Mode.FAULTED
    assert decision.next_deadline_ms is None


def test_SR_GRIP_7_deadline_is_the_end_of_the_stuck_window() -> None:
    config = make_config(*DEFAULT_STAGES, grip_stuck_window_ms=400)
    rig = running_rig(config, 1, settle=False)
    decision = rig.tick()
    changed_ms = decision.state.grip_changed_ms
    assert changed_ms is not None
    assert decision.next_deadline_ms == changed_ms + 400
    at = decide(decision.state, rig.inputs(), config, changed_ms + 400)
    assert [e.kind for e in at.events] == ["grip_sensor_stuck"]


def _capped_to_stage_1_latches_at_the_next_ms(rig: Rig, code: FaultCode) -> Decision:
    """A remote cap to stage 1 now: still RUNNING at stage 1, due at the next millisecond,
    nothing changing before it, and ``code`` latched then. Returns the capping decision."""
    inputs = rig.inputs((), (RemoteLowerStageCap(stage=1),))
    decision = decide(rig.core, inputs, rig.config, rig.now_ms)
    assert decision.state.mode is Mode.RUNNING
    assert decision.state.stage == 1
    assert decision.next_deadline_ms == rig.now_ms + 1
    assert_deadline_holds(decision, inputs, rig.config, rig.now_ms, [])
    at = decide(decision.state, inputs, rig.config, rig.now_ms + 1)
    assert at.state.fault is not None
    assert at.state.fault.code is code
    return decision


def test_SR_TIMER_1_a_stage_lowered_onto_a_chattering_sensor_acts_at_the_next_millisecond() -> None:
    """Found by the property above: both hands released at once are two edges (a chatter at
    ``grip_chatter_edges=2``) and a remote cap lowers the stage to one that latches on a
    chattering sensor, after the tick's grip check: the latch is due at the next millisecond."""
    config = make_config(
        *DEFAULT_STAGES,
        stale_ms=60,
        overspeed_ms=20,
        follow_ms=20,
        moving_at_rest_ms=20,
        grip_chatter_edges=2,
        grip_chatter_window_ms=50,
        grip_stuck_window_ms=100,
    )
    rig = running_rig(config, 3)
    rig.now_ms += 1
    rig.grip = (False, False)
    _capped_to_stage_1_latches_at_the_next_ms(rig, FaultCode.GRIP_SENSOR)


def test_SR_TIMER_1_a_held_timer_past_its_limit_acts_at_the_next_millisecond() -> None:
    """Found by the property above: an overspeed timer held through a short clear spell
    (SR-PLAUS-1, ``held_timer``) has passed its limit, and a remote cap in that tick lowers
    the stage after the check, so the same reading is now over the limit: the latch is due at
    the next millisecond, not at the stale-status deadline."""
    config = make_config(*DEFAULT_STAGES, overspeed_ms=200, follow_ms=2500, **QUIET_LINK)
    rig = running_rig(config, 2)
    rig.measured_kmh = 4.0  # above stage 2's 3.5 + 0.3 km/h
    started = rig.tick()
    since_ms = started.state.overspeed_since_ms
    assert since_ms == rig.now_ms
    rig.run_ms(180)
    rig.measured_kmh = 3.0  # inside stage 2's limit: the timer is held, not restarted
    rig.run_ms(20)
    rig.now_ms = since_ms + config.overspeed_ms + 5
    decision = _capped_to_stage_1_latches_at_the_next_ms(rig, FaultCode.OVERSPEED)
    assert decision.state.overspeed_since_ms == since_ms
    assert decision.state.overspeed_clear_since_ms is not None


def test_SR_TIMER_1_an_overspeed_that_goes_on_after_its_latch_does_not_wake_every_ms() -> None:
    """Only a held timer (its condition clear) is due at once past its limit: a condition
    that goes on after it has latched wakes the loop at the other timers, not every ms."""
    config = make_config(*DEFAULT_STAGES, overspeed_ms=200, follow_ms=2500, **QUIET_LINK)
    rig = running_rig(config, 2)
    rig.measured_kmh = 4.0
    tick_while(rig, lambda: rig.core.fault is None)
    assert rig.core.fault is not None
    assert rig.core.fault.code is FaultCode.OVERSPEED
    decision = rig.tick()
    assert decision.state.overspeed_clear_since_ms is None
    assert decision.next_deadline_ms is None or decision.next_deadline_ms > rig.now_ms + 1
    assert_deadline_holds(decision, rig.inputs(), config, rig.now_ms, [0, 500, 1000])


def test_SR_GRIP_10_deadline_is_the_end_of_the_regrip_time() -> None:
    """A touch during a grip loss holds the grace off until it has become a hold; the
    deadline is when it does, and then the loss ends."""
    config = make_config(*DEFAULT_STAGES, stale_ms=5000)  # the link's deadline out of the way
    rig = running_rig(config, 1)
    rig.grip = (False, False)
    rig.tick()
    rig.grip = (True, False)  # a hand back within the grace: a touch, not yet a hold
    touched = rig.tick(dt_ms=100)
    held_ms = rig.now_ms
    assert touched.state.mode is Mode.RUNNING
    assert touched.next_deadline_ms == held_ms + config.grip_regrip_ms
    inputs = rig.inputs()
    before = decide(touched.state, inputs, config, held_ms + config.grip_regrip_ms - 1)
    assert before.events == ()
    assert before.state.grip_lost_since_ms is not None
    at = decide(touched.state, inputs, config, held_ms + config.grip_regrip_ms)
    assert at.state.mode is Mode.RUNNING
    assert at.state.grip_lost_since_ms is None


def test_SR_PLAUS_3_deadline_is_one_ms_past_the_moving_at_rest_time() -> None:
    config = make_config(*DEFAULT_STAGES, **QUIET_LINK)
    rig = Rig(config=config)
    rig.tick()
    rig.measured_kmh = 0.4
    decision = rig.tick()
    assert decision.next_deadline_ms == rig.now_ms + config.moving_at_rest_ms + 1
    assert decide(decision.state, rig.inputs(), config, decision.next_deadline_ms).state.fault


def test_SR_PLAUS_2_deadline_is_one_ms_past_the_not_following_time() -> None:
    config = make_config(*DEFAULT_STAGES, **QUIET_LINK)
    rig = running_rig(config)
    rig.measured_kmh = 0.0  # stalled
    decision = rig.tick()
    since_ms = decision.state.follow_since_ms
    assert since_ms is not None
    assert decision.next_deadline_ms == since_ms + config.follow_ms + 1


def test_SR_RESET_3_deadline_is_one_ms_past_the_clear_fault_timeout() -> None:
    config = make_config(*DEFAULT_STAGES, stale_ms=60_000)
    rig, decision = reset_waiting_rig(config)
    armed_ms = decision.state.reset_armed_ms
    assert armed_ms == rig.now_ms
    assert decision.next_deadline_ms == armed_ms + RESET_CLEAR_TIMEOUT_MS + 1

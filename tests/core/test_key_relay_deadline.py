"""SR-TIMER-1 in key-relay mode: ``Decision.next_deadline_ms`` covers the key relay's own
timers too (SR-MON-4), so the service wakes when one runs out and not only at its next tick.

The property of ``tests/core/test_deadline.py``: with the same inputs (no new commands, the
same belt reading), no call of ``decide`` before the deadline decides anything different from
the decision that announced it. The deadline may be early, never late.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.rules.core import decide
from controller.rules.model import (
    Button,
    LocalCommand,
    Press,
    RemoteCommand,
    RemoteLowerStageCap,
    RemoteStop,
    SafetyConfig,
    SelectStage,
)
from tests.core.relay_support import CONFIG, RELAY, RelayRig, armed, walking
from tests.core.test_deadline import assert_deadline_holds, mostly

LOCAL_COMMANDS: tuple[LocalCommand, ...] = (
    Press(Button.START),
    Press(Button.STOP),
    Press(Button.RESET),
    Press(Button.STAGE_UP),
    Press(Button.STAGE_DOWN),
    SelectStage(1),
    SelectStage(4),
)
REMOTE_COMMANDS: tuple[RemoteCommand, ...] = (RemoteStop(), RemoteLowerStageCap(1))

step_knobs = st.fixed_dictionaries(
    {
        "dt_ms": st.integers(1, 30) | st.integers(1, 700),
        "grip": st.sampled_from(((True, True), (True, True), (False, False), (True, False))),
        "estop": mostly(False, st.booleans()),
        "key": mostly(True, st.booleans()),
        "belt_kmh": mostly(None, st.sampled_from((0.0, 0.1, 0.5)) | st.floats(0.0, 9.0)),
        "sensor_missing": mostly(False, st.booleans()),
        "local": st.lists(st.sampled_from(LOCAL_COMMANDS), max_size=2),
        "remote": st.lists(st.sampled_from(REMOTE_COMMANDS), max_size=1),
        "inside": st.lists(st.integers(0, 1000), max_size=3),
    }
)

relay_configs = st.builds(
    lambda window, decel, over: CONFIG.__class__(
        **{
            **CONFIG.__dict__,
            "overspeed_ms": over,
            "key_relay": RELAY.__class__(start_window_ms=window, max_belt_decel_kmh_s=decel),
        }
    ),
    st.integers(2000, 60_000),
    st.floats(5.0, 50.0),
    st.integers(20, 800),
)


def check_steps(rig: RelayRig, config: SafetyConfig, steps: list[dict[str, object]]) -> None:
    for knobs in steps:
        rig.now_ms += int(knobs["dt_ms"])  # type: ignore[call-overload]  # drawn as an int
        for name in ("grip", "estop", "key", "sensor_missing"):
            setattr(rig, name, knobs[name])
        if knobs["belt_kmh"] is not None:
            rig.belt_kmh = float(knobs["belt_kmh"])  # type: ignore[arg-type]  # drawn as a float
        inputs = rig.inputs(tuple(knobs["local"]), tuple(knobs["remote"]))  # type: ignore[arg-type]  # drawn as lists
        decision = decide(rig.core, inputs, config, rig.now_ms)
        inside = list(knobs["inside"])  # type: ignore[call-overload]  # drawn as a list
        assert_deadline_holds(decision, inputs, config, rig.now_ms, inside)
        rig.state = decision.state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=relay_configs,
    start=st.sampled_from(("idle", "armed", "walking")),
    steps=st.lists(step_knobs, min_size=1, max_size=30),
)
def test_SR_TIMER_1_key_relay_property_no_decision_changes_before_the_deadline(
    config: SafetyConfig, start: str, steps: list[dict[str, object]]
) -> None:
    if start == "idle":
        rig = RelayRig(config=config)
    elif start == "armed":
        rig = armed(config=config)
    else:
        rig = walking(1.0, stage_number=4, config=config)
    check_steps(rig, config, steps)


def test_SR_TIMER_1_SR_MON_4_deadline_is_one_ms_past_the_start_window() -> None:
    rig = armed()
    assert rig.history[-1].next_deadline_ms == rig.now_ms + RELAY.start_window_ms + 1


def test_SR_TIMER_1_SR_MON_4_deadline_is_the_end_of_the_fall_rate_span() -> None:
    rig = walking(4.0, stage_number=4)
    rig.tick(dt_ms=200)  # this reading is judged now ...
    judged_ms = rig.now_ms
    rig.belt_kmh = 2.0  # ... and this one falls 20 km/h/s from it, once 100 ms have passed
    decision = rig.tick()
    assert decision.key_relay
    assert decision.next_deadline_ms == judged_ms + 100


def test_SR_TIMER_1_SR_MON_4_no_start_window_deadline_once_the_belt_has_moved() -> None:
    rig = walking(1.0)  # steady: the only timer left is the stuck-grip window (SR-GRIP-7)
    decision = rig.tick()
    assert decision.state.grip_changed_ms is not None
    assert decision.next_deadline_ms == decision.state.grip_changed_ms + CONFIG.grip_stuck_window_ms


def test_SR_TIMER_1_SR_MON_4_no_fall_rate_deadline_for_a_steady_or_rising_reading() -> None:
    rig = walking(1.0)
    rig.tick(dt_ms=200)  # judged now
    for speed_kmh in (1.0, 1.2):
        rig.belt_kmh = speed_kmh
        decision = rig.tick()
        assert decision.state.grip_changed_ms is not None
        expected_ms = decision.state.grip_changed_ms + CONFIG.grip_stuck_window_ms
        assert decision.next_deadline_ms == expected_ms

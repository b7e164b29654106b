"""SR-TIMER-1, timer by timer: ``next_deadline_ms`` names the exact millisecond each timer runs
out, from a state where that timer is the only one running (or the earliest).

The property in ``test_deadline.py`` proves no deadline is late over random runs; these pin
each deadline to its value, so a deadline that moves a millisecond either way, or is lost
when one of its conditions is misread, fails here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.rules.core import decide
from controller.rules.model import (
    ChannelConfig,
    CoreState,
    FaultCode,
    FirmwareState,
    Inputs,
    LinkHealth,
    Mode,
)
from controller.rules.plausibility import runaway_confirm_ms
from controller.rules.timers import next_deadline_ms
from tests.core.support import (
    DEFAULT_STAGES,
    Rig,
    is_estop,
    is_stop,
    make_config,
    reset_waiting_rig,
    running_rig,
)

QUIET = {"stale_ms": 60_000}  # the stale-status deadline out of the way


def quiet_running() -> tuple[Rig, CoreState, Inputs]:
    rig = running_rig(make_config(*DEFAULT_STAGES, **QUIET))
    return rig, rig.core, rig.inputs()


def test_SR_TIMER_1_no_deadline_in_a_quiet_steady_run() -> None:
    rig, state, inputs = quiet_running()
    stale_deadline = inputs.firmware.received_ms + rig.config.stale_ms + 1  # type: ignore[union-attr]  # a fresh status
    assert next_deadline_ms(state, inputs, rig.config) == stale_deadline


def test_SR_PLAUS_5_deadline_is_one_ms_past_the_runaway_confirmation() -> None:
    rig, state, inputs = quiet_running()
    suspect_ms = rig.now_ms - 10
    state = replace(state, runaway_suspect=(suspect_ms, 2.6))
    expected = suspect_ms + runaway_confirm_ms(rig.config) + 1
    assert next_deadline_ms(state, inputs, rig.config) == expected


def test_SR_CHAN_2_deadline_is_one_ms_past_the_disagreement_time() -> None:
    rig, state, inputs = quiet_running()
    since_ms = rig.now_ms - 5
    state = replace(state, disagree_since_ms=since_ms)
    dual = replace(rig.config, second_channel=ChannelConfig(disagree_ms=700))
    assert next_deadline_ms(state, inputs, dual) == since_ms + 700 + 1
    # Without a second channel the disagreement timer does not run.
    assert next_deadline_ms(state, inputs, rig.config) == inputs.firmware.received_ms + 60_001  # type: ignore[union-attr]  # a fresh status


def test_SR_LINK_3_deadline_is_the_end_of_the_link_window() -> None:
    rig, state, inputs = quiet_running()
    start_ms = rig.now_ms - 300
    state = replace(state, link_window=(start_ms, 40, 2))
    reported = replace(inputs, link=LinkHealth(up=True, session=1, frames_received=55))
    assert next_deadline_ms(state, reported, rig.config) == start_ms + rig.config.link_window_ms
    # Without link reports the window is not judged and has no deadline.
    assert next_deadline_ms(state, inputs, rig.config) != start_ms + rig.config.link_window_ms


@pytest.mark.parametrize("emergency", ["none", "estop", "key"])
def test_SR_STOP_3_deadline_is_the_next_ms_after_a_fault_latched_at_rest(emergency: str) -> None:
    """A fault latched with the belt already at rest and a fresh status: the next
    millisecond's tick records the rest (and ends the first category-0 stop); with an
    emergency input still held the rest is not reached, so there is no such deadline."""
    config = make_config(*DEFAULT_STAGES, **QUIET)
    rig = Rig(config=config)
    rig.tick()
    rig.estop = True
    latched = rig.tick()
    assert latched.state.mode is Mode.FAULTED
    assert latched.state.fault is not None
    assert latched.state.fault.code is FaultCode.ESTOP
    rig.estop = False
    state = replace(
        latched.state,
        fault=replace(latched.state.fault, since_ms=rig.now_ms),
        fault_rest_reached=False,
    )
    rig.estop = emergency == "estop"
    rig.key = emergency != "key"
    inputs = rig.inputs()
    fresh_limit = inputs.firmware.received_ms + config.stale_ms + 1  # type: ignore[union-attr]  # a fresh status
    if emergency == "none":
        assert next_deadline_ms(state, inputs, config) == rig.now_ms + 1
        at = decide(state, inputs, config, rig.now_ms + 1)
        assert at.state.fault_rest_reached is True
    else:
        assert next_deadline_ms(state, inputs, config) == fresh_limit
    # Once the rest is recorded, or with a stale status, the deadline is gone.
    rested = replace(state, fault_rest_reached=True)
    assert next_deadline_ms(rested, rig.inputs(), config) == fresh_limit
    rig.estop, rig.key = False, True
    rig.link = "stale"
    stale_inputs = rig.inputs()
    assert next_deadline_ms(state, stale_inputs, config) is None


def test_SR_STOP_3_an_emergency_latched_at_rest_sends_estop_once_before_the_rest() -> None:
    """A category-0 firmware fault latched with the belt already at rest and no emergency
    input held: the latching tick sends ESTOP and has not reached rest; the next millisecond
    records the rest and the stop becomes a plain STOP."""
    config = make_config(*DEFAULT_STAGES, **QUIET)
    rig = Rig(config=config)
    rig.tick()
    rig.fw_state, rig.fw_fault = FirmwareState.FAULT, 5
    latched = rig.tick()
    assert latched.state.fault is not None
    assert latched.state.fault.since_ms == rig.now_ms
    assert latched.state.fault_rest_reached is False
    assert is_estop(latched)
    assert latched.next_deadline_ms == rig.now_ms + 1
    rested = rig.tick(dt_ms=1)
    assert rested.state.fault_rest_reached is True
    assert is_stop(rested)


@pytest.mark.parametrize(
    ("fw_state", "fw_fault", "completes"),
    [
        (FirmwareState.IDLE, 0, True),
        (FirmwareState.IDLE, 6, False),  # back to IDLE but still reporting its fault code
        (FirmwareState.FAULT, 0, False),  # fault code cleared but still in FAULT
        (FirmwareState.FAULT, 6, False),
    ],
)
def test_SR_RESET_3_a_waiting_reset_completes_only_once_the_firmware_fault_is_cleared(
    fw_state: FirmwareState, fw_fault: int, completes: bool
) -> None:
    """Both the firmware's state and its fault code must say the fault is cleared."""
    rig, _ = reset_waiting_rig(make_config(*DEFAULT_STAGES, stale_ms=60_000))
    rig.fw_state, rig.fw_fault = fw_state, fw_fault
    after = rig.tick()
    assert (after.state.mode is Mode.IDLE) is completes
    assert (after.state.reset_armed_ms is None) is completes

"""Rule SR-EVENT-1: every message the core can emit, checked word for word against a catalogue.

The scripts below drive the core into every event, fault and refusal it knows. The text
they produce must equal ``tests/core/event_catalogue.txt``, which is also the reference a
reader of docs/safety.md can consult for what the user is told. After a deliberate change
of wording, regenerate it with::

    UPDATE_EVENT_CATALOGUE=1 .venv/bin/pytest tests/core/test_messages.py

and review the diff.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from controller.rules.core import internal_fault
from controller.rules.firmware_status import status_problem
from controller.rules.grip import WARNING_GRIP_SUSPECT
from controller.rules.key_relay import relay_start_blockers
from controller.rules.model import (
    BeltSensorReading,
    Button,
    Decision,
    FirmwareState,
    GripLossAction,
    Inputs,
    LinkHealth,
    Press,
    RemoteLowerStageCap,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SelectStage,
    SetTarget,
)
from controller.rules.readiness import reset_blockers, start_blockers
from tests.core.relay_support import CONFIG as RELAY_CONFIG
from tests.core.relay_support import RELAY
from tests.core.relay_support import armed as relay_armed
from tests.core.relay_support import idle as relay_idle
from tests.core.relay_support import walking as relay_walking
from tests.core.support import (
    DEFAULT_CONFIG,
    TICK_MS,
    Rig,
    faulted_rig,
    idle_rig,
    make_config,
    running_rig,
    single_stage_config,
    status,
    stopping_rig,
)

CATALOGUE = Path(__file__).with_name("event_catalogue.txt")

Script = Callable[[], list[Decision]]
SCRIPTS: list[tuple[str, Script]] = []


def script(title: str) -> Callable[[Script], Script]:
    def register(function: Script) -> Script:
        SCRIPTS.append((title, function))
        return function

    return register


def _from(rig: Rig, mark: int) -> list[Decision]:
    return rig.history[mark:]


# ---------------------------------------------------------------- normal operation


@script("start, faster, slower, stop button, belt at rest")
def _start_stop() -> list[Decision]:
    rig = idle_rig()
    mark = len(rig.history)
    rig.press(Button.START)
    rig.run_ms(3000)
    rig.press(Button.FASTER)
    rig.press(Button.SLOWER)
    rig.press(Button.STOP)
    rig.run_ms(400)
    return _from(rig, mark)


@script("service stop request, remote stop, target zero")
def _other_stops() -> list[Decision]:
    decisions = []
    for command in (RequestStop("session_complete"), SetTarget(0.0)):
        rig = running_rig()
        decisions.append(rig.tick(command))
    rig = running_rig()
    decisions.append(rig.tick(remote=(RemoteStop(),)))
    decisions.append(rig.tick(remote=(RemoteLowerTarget(0.2),)))
    return decisions


@script("stages: raised, lowered, capped by training and remote, remote cap cleared")
def _stages() -> list[Decision]:
    rig = idle_rig()
    mark = len(rig.history)
    rig.press(Button.STAGE_UP)
    rig.tick(SelectStage(4))
    rig.press(Button.STAGE_DOWN)
    rig.tick(remote=(RemoteLowerStageCap(2),))
    rig.press(Button.RESET)
    rig.stage_cap = 1
    rig.tick()
    return _from(rig, mark)


# ---------------------------------------------------------------- refusals


@script("start refused")
def _start_refused() -> list[Decision]:
    decisions = [stopping_rig().press(Button.START), faulted_rig().press(Button.START)]
    rig = idle_rig()
    decisions.append(rig.tick(Press(Button.START), Press(Button.STOP)))
    rig.grip = (False, False)
    rig.fw_state = FirmwareState.BOOT
    decisions.append(rig.press(Button.START))
    rig = faulted_rig()
    decisions.append(rig.tick(Press(Button.RESET), Press(Button.START)))
    return decisions


@script("commands rejected")
def _rejected() -> list[Decision]:
    rig = running_rig()
    mark = len(rig.history)
    rig.tick(remote=(RemoteLowerTarget(1.5),))
    rig.tick(remote=(RemoteLowerStageCap(4),))
    rig.tick(SetTarget(math.nan))
    rig.tick(SetTarget(2.0))
    rig.press(Button.FASTER)
    rig.tick(SelectStage(7))
    rig.press(Button.STAGE_UP)
    idle = idle_rig()
    idle.stage_cap = 1
    idle_mark = len(idle.history)
    idle.press(Button.STAGE_UP)
    stopping = stopping_rig()
    return [*_from(rig, mark), *_from(idle, idle_mark), stopping.press(Button.FASTER)]


@script("reset refused, pending, accepted")
def _reset() -> list[Decision]:
    rig = faulted_rig(running=False)
    mark = len(rig.history)
    rig.estop = True
    rig.key = False
    rig.measured_kmh = 0.3
    rig.press(Button.RESET)
    rig.estop = False
    rig.key = True
    rig.measured_kmh = None
    rig.fw_state = FirmwareState.FAULT
    rig.fw_fault = 6
    rig.press(Button.RESET)
    rig.fw_state = FirmwareState.IDLE
    rig.fw_fault = 0
    rig.press(Button.RESET)
    return _from(rig, mark)


# ---------------------------------------------------------------- faults


@script("e-stop, safety key (console and firmware), upgrade and secondary faults")
def _estop_key() -> list[Decision]:
    rig = running_rig()
    rig.link = "stale"
    rig.tick()
    rig.link = "fresh"
    rig.estop = True
    rig.key = False
    rig.fw_key = False
    decisions = [rig.history[-1], rig.tick()]
    rig = idle_rig()
    rig.fw_key = False
    decisions.append(rig.tick())
    return decisions


@script("overspeed, moving at rest, invalid reading")
def _plausibility() -> list[Decision]:
    rig = running_rig(make_config(runaway_accel_kmh_s=10.0))  # the SR-PLAUS-1 timer alone
    rig.tick(SetTarget(2.0))
    rig.run_ms(8000)
    rig.measured_kmh = 2.5
    mark = len(rig.history)
    rig.run_ms(560)
    decisions = _from(rig, mark)
    rig = running_rig()  # a runaway (SR-PLAUS-5)
    rig.tick(SetTarget(2.0))
    rig.run_ms(8000)
    mark = len(rig.history)
    for step in range(1, 30):
        rig.measured_kmh = 2.0 + 0.04 * step
        rig.tick()
    decisions += _from(rig, mark)
    rig = idle_rig()
    rig.measured_kmh = 0.4
    mark = len(rig.history)
    rig.run_ms(560)
    decisions += _from(rig, mark)
    rig = running_rig()
    rig.measured_kmh = math.nan
    decisions.append(rig.tick())
    return decisions


@script("not following: stall, runaway, belt not stopping")
def _following() -> list[Decision]:
    decisions = []
    for measured, make in ((0.0, running_rig), (1.2, running_rig), (0.3, stopping_rig)):
        rig = make()
        rig.measured_kmh = measured
        mark = len(rig.history)
        rig.run_ms(2600)
        decisions += _from(rig, mark)
    return decisions


@script("link: no status, stale status")
def _link() -> list[Decision]:
    decisions = []
    for link in ("none", "stale"):
        rig = idle_rig()
        rig.link = link
        decisions.append(rig.tick())
    return decisions


@script("link: lost, set up again, degraded, reboot announced by HELLO; start before settled")
def _link_health() -> list[Decision]:
    decisions = []
    for health in (
        LinkHealth(up=False, session=1),
        LinkHealth(up=True, session=2),
        LinkHealth(up=False, session=1, boot_id=99),
    ):
        rig = running_rig()
        rig.link_health = LinkHealth(up=True, session=1)
        rig.tick()
        rig.link_health = health
        decisions.append(rig.tick())
    rig = running_rig()
    rig.link_health = LinkHealth(up=True, session=1)
    rig.tick()
    rig.link_health = LinkHealth(up=True, session=1, frames_received=10, frames_missed=40)
    mark = len(rig.history)
    rig.run_ms(DEFAULT_CONFIG.link_window_ms)
    decisions += _from(rig, mark)
    rig = idle_rig()
    rig.link_health = LinkHealth(up=False, session=1)
    decisions.append(rig.press(Button.START))
    rig.link_health = LinkHealth(up=True, session=1)
    decisions.append(rig.press(Button.START))
    decisions.append(rig.press(Button.START))
    return decisions


@script("firmware: fault (controlled, emergency), reboot, configuration mismatch")
def _firmware() -> list[Decision]:
    decisions = []
    for code in (1, 6):  # LEASE_EXPIRED ramps (category 1), ESTOP cuts power (0)
        rig = running_rig()
        rig.fw_state = FirmwareState.FAULT
        rig.fw_fault = code
        decisions.append(rig.tick())
    rig = idle_rig()
    rig.boot_id = 8
    rig.checksum = 0xBEEF
    decisions.append(rig.tick())
    return decisions


@script("internal fault; reset refused; reload with fewer stages")
def _internal() -> list[Decision]:
    rig = running_rig()
    decision = internal_fault(rig.core, DEFAULT_CONFIG, rig.now_ms + 1, "ValueError: boom")
    rig.state = decision.state
    rig.run_ms(3000)
    decisions = [decision, rig.press(Button.RESET)]
    rig = idle_rig(stage_number=4)
    rig.config = make_config(*DEFAULT_CONFIG.stages[:2])
    decisions.append(rig.tick())
    return decisions


# ---------------------------------------------------------------- grip


@script("grip: stop and latch, slow and restore, warn and restore")
def _grip() -> list[Decision]:
    decisions = []
    for config, stage_number in (
        (DEFAULT_CONFIG, 1),
        (single_stage_config(action=GripLossAction.SLOW, slow_kmh=0.3), 1),
        (DEFAULT_CONFIG, 3),
    ):
        rig = running_rig(config, stage_number)
        mark = len(rig.history)
        rig.grip = (False, False)
        rig.run_ms(900)
        rig.grip = (False, True)
        rig.run_ms(config.grip_regrip_ms + TICK_MS)  # held again: the loss is over (SR-GRIP-10)
        decisions += _from(rig, mark)
    return decisions


@script("grip sensor: chatter (warning, then stop and latch), stuck")
def _grip_sensor() -> list[Decision]:
    rig = running_rig()
    mark = len(rig.history)
    for _ in range(5):
        rig.grip = (False, True)
        rig.tick()
        rig.grip = (True, True)
        rig.tick()
    decisions = _from(rig, mark)
    rig = running_rig(make_config(*DEFAULT_CONFIG.stages, grip_stuck_window_ms=60_000))
    mark = len(rig.history)
    rig.run_ms(60_000)
    return decisions + _from(rig, mark)


# ---------------------------------------------------------------- key-relay mode (SR-MON-*)


@script("key relay: START closes, the belt stopped at the console, STOP, service and remote stop")
def _relay_start_stop() -> list[Decision]:
    rig = relay_idle()
    mark = len(rig.history)
    rig.press(Button.START)
    rig.belt_kmh = 1.0
    rig.tick()
    rig.belt_kmh = 0.0
    rig.tick(dt_ms=200)
    rig.press(Button.START)
    rig.belt_kmh = 1.0
    rig.tick()
    rig.press(Button.STOP)
    rig.belt_kmh = 0.0
    rig.tick(dt_ms=200)
    rig.press(Button.START)
    rig.tick(RequestStop("session_complete"))
    rig.press(Button.START)
    rig.tick(remote=(RemoteStop(),))
    return _from(rig, mark)


@script("key relay: no belt motion within the start window")
def _relay_no_motion() -> list[Decision]:
    rig = relay_armed()
    mark = len(rig.history)
    rig.tick(dt_ms=RELAY.start_window_ms)
    rig.tick(dt_ms=1)
    return _from(rig, mark)


@script("key relay: start and reset refused, reset accepted, remote stage cap cleared")
def _relay_refusals() -> list[Decision]:
    rig = relay_walking(1.0)
    rig.press(Button.STOP)
    decisions = [rig.press(Button.START)]
    rig = relay_idle()
    rig.belt_kmh = 1.0
    rig.grip = (False, False)
    decisions.append(rig.press(Button.START))
    rig = relay_idle()
    decisions.append(rig.tick(Press(Button.START), Press(Button.STOP)))
    rig = relay_walking(1.0)
    rig.estop = True
    mark = len(rig.history)
    rig.tick()
    rig.press(Button.RESET)
    rig.estop = False
    rig.belt_kmh = 0.0
    rig.tick(dt_ms=200)
    rig.press(Button.START)
    rig.tick(Press(Button.RESET), Press(Button.START))
    decisions += _from(rig, mark)
    rig = relay_idle(stage_number=3)
    mark = len(rig.history)
    rig.tick(remote=(RemoteLowerStageCap(2),))
    rig.press(Button.RESET)
    return decisions + _from(rig, mark)


@script("key relay: safety key, invalid and missing reading, a failed sensor, overspeed, cap")
def _relay_faults() -> list[Decision]:
    decisions = []
    for knob, value in (("key", False), ("belt_kmh", math.nan), ("sensor_missing", True)):
        rig = relay_walking(1.0)
        setattr(rig, knob, value)
        decisions.append(rig.tick())
    rig = relay_walking(4.0, stage_number=4)
    rig.tick(dt_ms=200)
    rig.belt_kmh = 2.4
    decisions.append(rig.tick(dt_ms=100))
    rig = relay_walking(2.0)
    rig.belt_kmh = 2.31
    mark = len(rig.history)
    rig.run_ms(DEFAULT_CONFIG.overspeed_ms + 2 * TICK_MS)
    decisions += _from(rig, mark)
    rig = relay_walking(3.0, stage_number=2)
    rig.stage_cap = 1
    decisions.append(rig.tick())
    return decisions


@script("key relay: speed commands rejected")
def _relay_rejected() -> list[Decision]:
    rig = relay_walking(1.0)
    mark = len(rig.history)
    for command in (SetTarget(1.5), Press(Button.FASTER), Press(Button.SLOWER)):
        rig.tick(command)
    rig.tick(remote=(RemoteLowerTarget(0.5),))
    return _from(rig, mark)


# ---------------------------------------------------------------- blocker texts


def _blocker_lines() -> list[str]:
    lines = []
    faulted = replace(faulted_rig().core, warnings=frozenset({WARNING_GRIP_SUSPECT}))
    bad = Inputs(
        grip_left=False,
        grip_right=False,
        estop_pressed=True,
        safety_key_present=False,
        firmware=status(
            1000, 1.0, state=FirmwareState.FAULT, fault_code=6, key_closed=False, checksum=9
        ),
    )
    lines += [f"start_blocker | {b}" for b in start_blockers(faulted, bad, DEFAULT_CONFIG, 1000)]
    lines += [f"reset_blocker | {b}" for b in reset_blockers(faulted, bad, DEFAULT_CONFIG, 1000)]
    two_hands = single_stage_config(hands=2)
    lines += [
        f"start_blocker | {b}"
        for b in start_blockers(
            replace(faulted, fault=None, warnings=frozenset()),
            replace(bad, estop_pressed=False, safety_key_present=True, firmware=status(1000)),
            two_hands,
            1000,
        )
    ]
    for firmware in (None, status(400), status(1000, -1.0)):
        lines.append(f"status_problem | {status_problem(firmware, DEFAULT_CONFIG, 1000)}")
    relay_bad = replace(bad, firmware=None, belt_sensor=None)
    lines += [
        f"relay_start_blocker | {b}" for b in relay_start_blockers(faulted, relay_bad, RELAY_CONFIG)
    ]
    healthy = replace(faulted, fault=None, warnings=frozenset())
    good = replace(relay_bad, grip_left=True, estop_pressed=False, safety_key_present=True)
    for reading in (BeltSensorReading(math.nan, 0, None), BeltSensorReading(1.0, 9, 20)):
        blockers = relay_start_blockers(healthy, replace(good, belt_sensor=reading), RELAY_CONFIG)
        lines += [f"relay_start_blocker | {b}" for b in blockers]
    return lines


def catalogue_text() -> str:
    lines: list[str] = []
    for title, run in SCRIPTS:
        lines.append(f"## {title}")
        for decision in run():
            lines.extend(
                f"{event.kind} | {event.message} | {event.details}" for event in decision.events
            )
        lines.append("")
    lines.append("## blockers and status problems")
    lines.extend(_blocker_lines())
    return "\n".join(lines) + "\n"


def test_SR_EVENT_1_every_message_matches_the_catalogue() -> None:
    text = catalogue_text()
    if os.environ.get("UPDATE_EVENT_CATALOGUE") == "1":
        CATALOGUE.write_text(text, encoding="utf-8")
    assert text == CATALOGUE.read_text(encoding="utf-8")


def test_SR_EVENT_1_catalogue_covers_every_event_kind() -> None:
    kinds = {line.split(" | ")[0] for line in CATALOGUE.read_text(encoding="utf-8").splitlines()}
    assert {
        "transition",
        "started",
        "stopped",
        "grip_lost",
        "grip_warning",
        "grip_restored",
        "grip_sensor_suspect",
        "grip_sensor_stuck",
        "fault",
        "fault_cleared",
        "stage_changed",
        "stage_cap_changed",
        "target_changed",
        "command_rejected",
        "start_refused",
        "reset_refused",
        "reset_pending",
        "key_relay_opened",
    } <= kinds

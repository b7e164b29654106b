"""The service's helpers on their own, on explicit times: one tick's inputs, the event feed's
folding, the shutdown verdict and the reload plan (SR-STAGE-6, SR-FAULT-4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.gpio.inputs import PanelReading
from controller.adapters.mqtt.commands import CommandRejected
from controller.rules.model import (
    Button,
    Event,
    Inputs,
    Press,
    RemoteLowerTarget,
    RemoteStop,
    RequestStop,
    SetTarget,
)
from controller.runtime.events import FOLD_REPEATS_MS, REJECT_LOG_EVERY_MS, EventFeed
from controller.runtime.inputs import MAX_PENDING_REMOTE, InputGatherer
from controller.runtime.reload import plan_reload
from controller.runtime.tasks import shutdown_verdict
from controller.settings.config import load_config
from tests.service.harness import write_config


def _reading(*presses: Button) -> PanelReading:
    return PanelReading(
        grip_left=True,
        grip_right=True,
        estop_pressed=False,
        safety_key_present=True,
        trainer_key=False,
        presses=presses,
    )


def _gather(
    intake: InputGatherer, reading: PanelReading, stop: RequestStop | None = None
) -> Inputs:
    return intake.gather(reading, bridge=None, belt_sensor=None, stage_cap=2, shutdown_stop=stop)


def test_a_tick_takes_presses_then_queued_commands_then_the_shutdown_stop() -> None:
    intake = InputGatherer()
    intake.local.append(SetTarget(1.0))
    stop = RequestStop("SIGTERM")
    inputs = _gather(intake, _reading(Button.START), stop)
    assert inputs.local == (Press(Button.START), SetTarget(1.0), stop)
    assert inputs.stage_cap == 2
    assert inputs.firmware is None
    assert inputs.link is None
    assert intake.local == []
    assert _gather(intake, _reading()).local == ()  # taken once


def test_SR_REMOTE_1_a_remote_stop_comes_first_and_is_never_dropped_by_a_full_queue() -> None:
    intake = InputGatherer()
    for _ in range(MAX_PENDING_REMOTE):
        assert intake.submit_remote(RemoteLowerTarget(1.0)) is None
    dropped = intake.submit_remote(RemoteLowerTarget(0.5))
    assert dropped is not None
    assert dropped.kind == "command_rejected"
    assert dropped.details["reason"] == "flood"
    intake.remote_stop = True
    inputs = _gather(intake, _reading())
    assert inputs.remote[0] == RemoteStop()
    assert len(inputs.remote) == 1 + MAX_PENDING_REMOTE
    assert _gather(intake, _reading()).remote == ()


def test_repeated_rejections_are_folded_and_counted_on_an_explicit_clock() -> None:
    now = [0]
    feed = EventFeed(lambda: now[0])
    event = Event("command_rejected", "stage 3 is locked", {"command": "stage"})
    feed.emit(event)
    for _ in range(3):
        now[0] += 100
        feed.emit(event)
    assert [e.message for _, e in feed.log] == ["stage 3 is locked"]
    assert len(feed.new) == 4  # timelines see every one
    now[0] += FOLD_REPEATS_MS
    feed.emit(event)
    shown = feed.log[-1][1]
    assert shown.message == "stage 3 is locked (and 3 more like it)"
    assert shown.details["repeats"] == 3


def test_a_flood_of_parser_rejections_is_one_line_a_second() -> None:
    now = [0]
    feed = EventFeed(lambda: now[0])
    for _ in range(10):
        feed.rejected(CommandRejected("cmd/target_kmh", "not a number", "abc"))
        now[0] += 10
    now[0] = REJECT_LOG_EVERY_MS
    feed.rejected(CommandRejected("cmd/target_kmh", "not a number", "abc"))
    folded = [e.details["folded"] for e in feed.new]
    assert folded == [0, 9]


@pytest.mark.parametrize(
    ("fresh", "at_rest", "waited_ms", "verdict"),
    [
        (False, False, 0, "done"),  # link down: only the firmware's lease can stop it
        (True, True, 0, "done"),
        (True, False, 5000, None),
        (True, False, 5001, "timeout"),
        (False, True, 9999, "done"),
    ],
)
def test_SR_FAULT_4_shutdown_ends_at_rest_with_the_link_down_or_at_the_timeout(
    fresh: bool, at_rest: bool, waited_ms: int, verdict: str | None
) -> None:
    got = shutdown_verdict(
        firmware_fresh=fresh,
        belt_at_rest=at_rest,
        waited_ms=waited_ms,
        timeout_ms=5000,
        lease_ms=300,
    )
    assert got == verdict


def _stage1_max(max_kmh: float | None) -> Callable[[dict[str, Any]], None]:
    """Training off (its unlock speeds are bound to the stage table), stage 1 at ``max_kmh``."""

    def edit(raw: dict[str, Any]) -> None:
        raw["training"] = {"enabled": False}
        if max_kmh is not None:
            raw["stages"][0]["max_kmh"] = max_kmh

    return edit


def test_SR_STAGE_6_reload_tightens_now_and_loosens_only_at_rest(tmp_path: Path) -> None:
    running = load_config(write_config(tmp_path, name="a.yaml", edit=_stage1_max(None)))
    old = running.safety().stages[0].max_kmh
    looser = load_config(write_config(tmp_path, name="b.yaml", edit=_stage1_max(old + 0.5)))
    tighter = load_config(write_config(tmp_path, name="c.yaml", edit=_stage1_max(old - 0.5)))
    moving = plan_reload(running, running.safety(), looser, "b.yaml", belt_at_rest=False)
    assert moving.safety.stages[0].max_kmh == old  # looser waits ...
    assert moving.pending is not None
    assert moving.pending.stages[0].max_kmh == old + 0.5  # ... until the belt is at rest
    assert "looser ones when the belt is at rest" in moving.event.message
    now = plan_reload(running, running.safety(), tighter, "c.yaml", belt_at_rest=False)
    assert now.safety.stages[0].max_kmh == old - 0.5
    at_rest = plan_reload(running, running.safety(), looser, "b.yaml", belt_at_rest=True)
    assert at_rest.pending is None
    assert at_rest.safety.stages[0].max_kmh == old + 0.5


def test_reload_keeps_the_sections_that_need_a_restart(tmp_path: Path) -> None:
    running = load_config(write_config(tmp_path, name="a.yaml", port="/dev/ttyUSB6"))
    new = load_config(write_config(tmp_path, name="b.yaml", port="/dev/ttyUSB7"))
    plan = plan_reload(running, running.safety(), new, "b.yaml", belt_at_rest=True)
    assert plan.config.serial == running.serial
    assert "changes to serial need a restart" in plan.event.message

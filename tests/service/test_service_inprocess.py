"""The real service, in-process, against the simulated firmware on a pseudo-terminal.

Inputs go through gpiozero's mock pins (controller.tools.mockpanel), frames through the real bridge
and a real pty; the belt speed asserted is the simulator's true belt speed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.gpio.inputs import BUTTON_LOCKOUT_MS
from controller.adapters.mqtt.commands import CommandRejected
from controller.rules import core as service_core
from controller.rules.model import (
    FaultCode,
    Mode,
    RemoteLowerTarget,
    RemoteStop,
    SetSpeed,
    SetTarget,
    StopKind,
)
from controller.runtime import events as events_module
from controller.runtime.service import Service
from controller.runtime.stats import TickRecord
from controller.settings.config import load_config
from firmware_bridge.sim.pty import PtySimulator
from firmware_bridge.wire.messages import EStop, Stop
from firmware_bridge.wire.messages import SetSpeed as WireSetSpeed
from tests.service.harness import running_service, write_config
from tests.waiting import wait_until

STAGE1_MAX_KMH = 2.0
STAGE1_ACCEL_KMH_S = 0.2


def mode(service: Service) -> Mode:
    """The service's mode now (a call, so the type checker does not pin it)."""
    return service.state.mode


async def hold_rails_and_start(service: Service) -> None:
    """Both hands on the rails (past the grip debounce), then a local START press."""
    panel = service.mock_panel
    assert panel is not None
    panel.grip("both")
    await wait_until(
        lambda: service.last_inputs is not None and service.last_inputs.grip_left,
        timeout_s=2,
        what="grip seen (debounced)",
    )
    panel.press("start")


def true_kmh(service: object) -> float:
    return float(service.simulator.firmware.true_speed_kmh)  # type: ignore[attr-defined]


async def test_start_ramp_then_grip_release_stops_belt_and_latches(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        panel = service.mock_panel
        assert panel is not None
        commanded: list[tuple[int, float]] = []
        service.observers.append(lambda r: commanded.append((r.now_ms, r.state.commanded_kmh)))

        await hold_rails_and_start(service)
        panel.target(0.8)
        await wait_until(lambda: true_kmh(service) >= 0.75, timeout_s=10, what="belt at 0.8 km/h")
        assert service.state.mode is Mode.RUNNING
        # The commanded ramp never exceeds the stage 1 acceleration limit.
        for (t0, v0), (t1, v1) in itertools.pairwise(commanded):
            if t1 > t0:
                assert (v1 - v0) / ((t1 - t0) / 1000) <= STAGE1_ACCEL_KMH_S + 1e-6
        assert max(v for _, v in commanded) <= STAGE1_MAX_KMH

        panel.grip("none")
        await wait_until(
            lambda: service.state.mode is Mode.FAULTED, timeout_s=2, what="grip-loss fault"
        )
        assert service.state.fault is not None
        assert service.state.fault.code is FaultCode.GRIP_LOST
        await wait_until(lambda: true_kmh(service) <= 0.1, timeout_s=3, what="belt at rest")
        frames = [h.frame.message for h in service.simulator.firmware.host_frames]  # type: ignore[union-attr]
        assert any(isinstance(m, Stop) for m in frames), "no STOP frame reached the firmware"

        # The latch holds: no motion command is sent while faulted, even with grip back.
        panel.grip("both")
        panel.press("start")
        ticks_then = len(commanded)
        await wait_until(lambda: len(commanded) >= ticks_then + 25, timeout_s=2, what="25 ticks")
        assert mode(service) is Mode.FAULTED
        assert not isinstance(service.last_motion, SetSpeed)


async def test_estop_sends_ESTOP_frame_and_latches(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        panel = service.mock_panel
        assert panel is not None
        await hold_rails_and_start(service)
        await wait_until(lambda: true_kmh(service) >= 0.3, timeout_s=10, what="belt moving")
        panel.estop(True)
        firmware = service.simulator.firmware  # type: ignore[union-attr]
        await wait_until(
            lambda: any(isinstance(h.frame.message, EStop) for h in firmware.host_frames),
            timeout_s=1,
            what="ESTOP frame at the simulator",
        )
        assert service.state.mode is Mode.FAULTED
        assert service.state.fault is not None
        assert service.state.fault.code is FaultCode.ESTOP
        await wait_until(lambda: true_kmh(service) <= 0.1, timeout_s=3, what="belt at rest")


async def test_remote_stop_stops_belt_and_remote_speed_up_is_rejected(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        panel = service.mock_panel
        assert panel is not None
        await hold_rails_and_start(service)
        panel.target(1.0)
        await wait_until(lambda: true_kmh(service) >= 0.3, timeout_s=10, what="belt moving")
        before = service.state.target_kmh
        service.on_remote_command(RemoteLowerTarget(1.5))  # higher than the target: refused
        await wait_until(
            lambda: any(e.kind == "command_rejected" for _, e in service.event_log),
            timeout_s=1,
            what="command_rejected event",
        )
        assert service.state.target_kmh == before
        service.on_remote_command(CommandRejected("start", "unknown command", "{}"))
        service.on_remote_command(RemoteStop())
        await wait_until(lambda: true_kmh(service) <= 0.1, timeout_s=3, what="belt at rest")
        await wait_until(lambda: mode(service) is Mode.IDLE, timeout_s=3, what="idle")
        # A stop is never followed by motion on its own.
        sent = [h.frame.message for h in service.simulator.firmware.host_frames]  # type: ignore[union-attr]
        last_stop = max(i for i, m in enumerate(sent) if isinstance(m, Stop))
        assert not any(isinstance(m, WireSetSpeed) and m.speed_kmh > 0 for m in sent[last_stop:])


async def test_SR_FAULT_4_unexpected_task_error_sends_STOP_and_exits_nonzero(
    tmp_path: Path,
) -> None:
    """A service task other than the loop fails: a controlled STOP, never ESTOP, then exit 1
    (the firmware's lease ramps the belt down if the STOP were lost)."""
    path = write_config(tmp_path)
    simulator = PtySimulator(seed=5)
    service = Service(
        load_config(path), config_path=path, simulator=simulator, install_signal_handlers=False
    )
    crash = asyncio.Event()

    async def failing_watch() -> None:
        await crash.wait()
        raise RuntimeError("injected failure in a service task")

    service._gpio_watch = failing_watch  # type: ignore[method-assign]
    task = asyncio.create_task(service.run())
    await wait_until(service.ready.is_set, timeout_s=10, what="service ready")
    panel = service.mock_panel
    assert panel is not None
    await hold_rails_and_start(service)
    await wait_until(lambda: true_kmh(service) >= 0.2, timeout_s=10, what="belt moving")
    crash.set()
    code = await asyncio.wait_for(task, timeout=10)
    assert code == 1
    frames = [h.frame.message for h in simulator.firmware.host_frames]
    assert any(isinstance(m, Stop) for m in frames), "no STOP reached the firmware"
    assert not any(isinstance(m, EStop) for m in frames), "a category-0 ESTOP was sent"


def _fail_once(real: Callable[..., Any], fired: list[bool]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            raise RuntimeError("injected failure in the control tick")
        return real(*args, **kwargs)

    return wrapper


TICK_PARTS = [
    "panel.read",
    "bridge.latest",
    "core.decide",
    "bridge.set_speed",
    "events",
    "training.on_tick",
    "watchdog",
    "observers",
]


@pytest.mark.parametrize("part", TICK_PARTS)
async def test_SR_FAULT_4_exception_in_each_part_of_the_tick_latches_with_a_controlled_stop(
    tmp_path: Path, part: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_service(tmp_path) as service:
        await hold_rails_and_start(service)
        await wait_until(lambda: true_kmh(service) >= 0.3, timeout_s=10, what="belt moving")
        assert service.panel is not None
        assert service.bridge is not None
        fired: list[bool] = []
        if part == "panel.read":
            monkeypatch.setattr(service.panel, "read", _fail_once(service.panel.read, fired))
        elif part == "bridge.latest":
            monkeypatch.setattr(service.bridge, "latest", _fail_once(service.bridge.latest, fired))
        elif part == "core.decide":
            monkeypatch.setattr(service_core, "decide", _fail_once(service_core.decide, fired))
        elif part == "bridge.set_speed":
            set_speed = service.bridge.set_speed
            monkeypatch.setattr(service.bridge, "set_speed", _fail_once(set_speed, fired))
        elif part == "events":
            monkeypatch.setattr(service, "_emit", _fail_once(service._emit, fired))
            service.submit_local(SetTarget(0.9))  # an event in the next tick
        elif part == "training.on_tick":
            assert service.training is not None
            on_tick = service.training.on_tick
            monkeypatch.setattr(service.training, "on_tick", _fail_once(on_tick, fired))
        elif part == "watchdog":
            watchdog = service.notifier.watchdog
            monkeypatch.setattr(service.notifier, "watchdog", _fail_once(watchdog, fired))
        else:
            service.observers.append(_fail_once(lambda record: None, fired))
        await wait_until(lambda: bool(fired), timeout_s=2, what=f"the failure in {part}")
        await wait_until(lambda: mode(service) is Mode.FAULTED, timeout_s=1, what="FAULTED")
        assert service.state.fault is not None
        assert service.state.fault.code is FaultCode.INTERNAL
        assert service.state.fault.stop is StopKind.CONTROLLED
        assert "injected failure in the control tick" in service.state.fault.message
        await wait_until(lambda: true_kmh(service) <= 0.1, timeout_s=3, what="belt at rest")
        frames = [h.frame.message for h in service.simulator.firmware.host_frames]  # type: ignore[union-attr]
        assert any(isinstance(m, Stop) for m in frames)
        assert not any(isinstance(m, EStop) for m in frames), "a category-0 ESTOP was sent"
        # The loop lives on: it keeps ticking, and only a restart clears the fault.
        ticks = service.loop_stats.ticks
        await wait_until(lambda: service.loop_stats.ticks > ticks + 5, timeout_s=1, what="ticks")
        assert service.mock_panel is not None
        service.mock_panel.press("reset")
        await wait_until(
            lambda: any(e.kind == "reset_refused" for _, e in service.event_log),
            timeout_s=1,
            what="reset refused",
        )
        assert service.state.fault.code is FaultCode.INTERNAL


def no_training(raw: dict[str, object]) -> None:
    # Training unlock rules refer to stage 1's max; this test changes it freely.
    raw["training"] = {"enabled": False}


async def test_reload_tightens_at_once_and_loosens_only_at_rest(tmp_path: Path) -> None:
    async with running_service(tmp_path, edit=no_training) as service:
        panel = service.mock_panel
        assert panel is not None
        assert service.config_path is not None
        await hold_rails_and_start(service)
        panel.target(0.9)
        await wait_until(lambda: true_kmh(service) >= 0.85, timeout_s=10, what="belt at 0.9")
        original = service.config_path.read_text()

        # Tighter: stage 1 max 2.0 -> 0.6 km/h applies while running.
        service.config_path.write_text(original.replace("max_kmh: 2.0", "max_kmh: 0.6", 1))
        service.request_reload()
        await wait_until(
            lambda: service._safety.stages[0].max_kmh == 0.6, timeout_s=5, what="tighter limit"
        )
        await wait_until(lambda: true_kmh(service) <= 0.65, timeout_s=5, what="belt slowed")
        assert mode(service) is Mode.RUNNING

        # Looser: stage 1 max back to 2.0 is held back while the belt moves.
        service.config_path.write_text(original)
        service.request_reload()
        await wait_until(
            lambda: any(e.kind == "config_reloaded" for _, e in list(service.event_log)[-5:]),
            timeout_s=5,
            what="second reload",
        )
        assert service._safety.stages[0].max_kmh == 0.6
        panel.target(1.5)
        ticks = service.loop_stats.ticks
        await wait_until(
            lambda: service.loop_stats.ticks >= ticks + 50, timeout_s=3, what="50 more ticks"
        )
        assert service.state.commanded_kmh <= 0.6
        assert true_kmh(service) <= 0.65

        panel.press("stop")
        await wait_until(lambda: mode(service) is Mode.IDLE, timeout_s=5, what="idle")
        await wait_until(
            lambda: service._safety.stages[0].max_kmh == 2.0, timeout_s=2, what="looser at rest"
        )


def at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


def past(ticks: list[int], end_ms: int) -> bool:
    return bool(ticks) and ticks[-1] > end_ms


async def test_repeated_command_rejected_is_folded_into_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding ``+`` at the stage limit: one ``command_rejected`` is logged and published,
    the repeats are counted and reported with the next one after the fold window."""
    monkeypatch.setattr(events_module, "FOLD_REPEATS_MS", 2000)
    caplog.set_level(logging.INFO, logger="controller.runtime")
    async with running_service(tmp_path, edit=no_training) as service:
        panel = service.mock_panel
        assert panel is not None
        panel.target(STAGE1_MAX_KMH)
        await wait_until(
            lambda: service.state.target_kmh == STAGE1_MAX_KMH, timeout_s=2, what="target"
        )
        seen: list[str] = []
        ticks: list[int] = []

        def observe(record: TickRecord) -> None:
            ticks.append(record.now_ms)
            seen.extend(e.kind for e in record.events if e.kind == "command_rejected")

        service.observers.append(observe)
        for press in range(1, 7):
            panel.press("faster")
            await wait_until(partial(at_least, seen, press), timeout_s=2, what=f"rejection {press}")
            # The console locks a button out for BUTTON_LOCKOUT_MS after a press (bounce).
            lockout_end_ms = ticks[-1] + BUTTON_LOCKOUT_MS
            await wait_until(partial(past, ticks, lockout_end_ms), timeout_s=2, what="lockout")
        shown = [e for _t, e in service.event_log if e.kind == "command_rejected"]
        assert len(shown) == 1, [e.message for e in shown]
        assert len(seen) == 6  # observers (scenario timelines) still get every one
        start = service.now_ms()
        await wait_until(lambda: service.now_ms() - start > 2000, timeout_s=4, what="window")
        count = len(seen)
        panel.press("faster")
        await wait_until(lambda: len(seen) > count, timeout_s=2, what="a rejection")
        shown = [e for _t, e in service.event_log if e.kind == "command_rejected"]
        assert len(shown) == 2
        assert shown[1].message.endswith("(and 5 more like it)")
        assert shown[1].details["repeats"] == 5
    lines = [r.getMessage() for r in caplog.records if "command_rejected" in r.getMessage()]
    assert len(lines) == 2, lines

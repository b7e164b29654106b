"""``treadmill demo --monitor``: the demo in key-relay mode, in-process on a virtual clock.

The real service, the demo's built-in session and its mock panel, on the simulated
console-driven treadmill (:mod:`firmware_bridge.sim.console`): the Pi's belt sensor reads the
simulated belt through its mock pin, and the relay output feeds the simulated retriggerable
relay, so the belt really stops when the relay drops out. Every figure is read from the
simulator's side (true belt speed, the relay contact), never from what the controller
believes.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.gpio.inputs import mock_pin_factory
from controller.runtime.service import Service
from controller.runtime.stats import TickRecord
from controller.settings.config import load_config
from controller.tools.demo import bundled_config_path, demo_config, demo_main, demo_simulator
from controller.tools.demo_session import HEADLESS_MONITOR_SCRIPT, _Demo, demo_session
from controller.tools.mockpanel import MockPanel
from controller.tools.virtual_time import VirtualTimeLoop, run_virtual
from firmware_bridge.sim.console import ConsoleSimulator

TICK_MS = 20  # control.rate_hz 50 in config/monitor-demo.yaml
REST_KMH = 0.1


@dataclass(frozen=True)
class Row:
    """One control tick, with the simulator's side of it."""

    now_ms: int
    mode: str
    events: tuple[str, ...]
    fault_codes: tuple[str, ...]
    toggles: int
    relay_closed: bool
    belt_kmh: float


@dataclass(frozen=True)
class Session:
    code: int
    ok: bool
    out: str
    rows: tuple[Row, ...]
    hold_off_ms: int
    release_ms: float


async def _run_demo_session(state_dir: Path) -> Session:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    base = load_config(bundled_config_path(monitor=True))
    config = demo_config(base, state_dir=state_dir, broker=None, training=False)
    simulator = demo_simulator(config, seed=0, state_dir=state_dir, clock_ms=loop.clock_ms)
    assert isinstance(simulator, ConsoleSimulator)
    service = Service(
        config,
        pin_factory=mock_pin_factory(loop.time),
        simulator=simulator,
        enable_mqtt=False,
        install_signal_handlers=False,
        clock_ms=loop.clock_ms,
    )
    rows: list[Row] = []

    def observe(record: TickRecord) -> None:
        relay = service.key_relay
        assert relay is not None
        rows.append(
            Row(
                now_ms=record.now_ms,
                mode=record.state.mode.value,
                events=tuple(e.kind for e in record.events),
                fault_codes=tuple(
                    str(e.details.get("code")) for e in record.events if e.kind == "fault"
                ),
                toggles=relay.toggles,
                relay_closed=simulator.console.relay.closed(record.now_ms),
                belt_kmh=record.belt_true_kmh or 0.0,
            )
        )

    service.observers.append(observe)
    out = io.StringIO()
    code, ok = await demo_session(service, out)
    relay_section = config.drive.key_relay
    assert relay_section is not None
    return Session(
        code,
        ok,
        out.getvalue(),
        tuple(rows),
        relay_section.hold_off_ms,
        simulator.console.params.release_ms,
    )


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return run_virtual(_run_demo_session(tmp_path_factory.mktemp("demo-monitor")))


def _first(rows: tuple[Row, ...], kind: str, after_ms: int = -1) -> Row:
    return next(r for r in rows if kind in r.events and r.now_ms > after_ms)


def _fault(rows: tuple[Row, ...], code: str) -> Row:
    return next(r for r in rows if code in r.fault_codes)


def test_SR_MON_demo_session_runs_and_passes(session: Session) -> None:
    assert session.code == 0, session.out
    assert session.ok, session.out
    assert "no terminal: running the built-in demo session" in session.out
    assert "demo session incomplete" not in session.out
    assert session.out.count("relay closed: the console may run the belt") == 2
    assert session.out.count("relay OPEN: the key circuit is cut") == 2
    # The plain state lines show the key-relay view: the relay, the Pi's sensor, no firmware.
    assert "relay closed | e-stop released key in grip both" in session.out
    assert "Pi sensor" in session.out
    assert "firmware link DOWN" not in session.out


def test_SR_MON_1_demo_relay_closes_only_when_the_start_conditions_hold(
    session: Session,
) -> None:
    """START without a hand on a rail (stage 1) is refused: not one toggle, relay open.
    START with the grip closes the relay within the pull-in (3 toggles, one a tick)."""
    rows = session.rows
    refused = _first(rows, "start_refused")
    started = _first(rows, "started")
    assert refused.now_ms < started.now_ms
    before = [r for r in rows if r.now_ms < started.now_ms]
    assert all(r.toggles == 0 and not r.relay_closed for r in before)
    assert all(r.belt_kmh == 0.0 for r in before)
    closed = next(r for r in rows if r.relay_closed)
    assert started.now_ms <= closed.now_ms <= started.now_ms + 4 * TICK_MS


def test_SR_MON_demo_console_speed_keys_drive_the_belt(session: Session) -> None:
    """``console start`` then ``console faster``: 1.0 then 1.5 km/h, set at the console."""
    rows = session.rows
    started = _first(rows, "started")
    lost = _first(rows, "grip_lost")
    running = [r for r in rows if started.now_ms <= r.now_ms < lost.now_ms]
    peak = max(r.belt_kmh for r in running)
    assert 1.4 <= peak <= 1.6
    assert running[-1].belt_kmh == pytest.approx(1.5, abs=0.1)
    assert [a for _t, a in HEADLESS_MONITOR_SCRIPT if a.startswith("console")][:2] == [
        "console start",
        "console faster",
    ]


def _assert_relay_opens_and_belt_stops(session: Session, fault: Row) -> tuple[int, int]:
    """From the tick that latched ``fault``: no further toggle; the relay contact open within
    the hold-off + its release time (to within a tick); the belt then at rest. Returns (ms
    from the decision to the contact open, ms from the decision to the belt at rest)."""
    after = [r for r in session.rows if r.now_ms >= fault.now_ms]
    restarted = next((r.now_ms for r in after if "started" in r.events), None)
    window = [r for r in after if restarted is None or r.now_ms < restarted]
    assert {r.toggles for r in window} == {fault.toggles}, "toggling went on after the fault"
    opened = next(r for r in window if not r.relay_closed)
    limit_ms = session.hold_off_ms + session.release_ms + TICK_MS
    assert opened.now_ms - fault.now_ms <= limit_ms
    at_rest = next(r for r in window if r.belt_kmh <= REST_KMH)
    assert all(r.belt_kmh <= REST_KMH for r in window if r.now_ms >= at_rest.now_ms)
    return opened.now_ms - fault.now_ms, at_rest.now_ms - fault.now_ms


def test_SR_MON_3_demo_grip_loss_at_stage_1_opens_the_relay_and_the_belt_stops(
    session: Session,
) -> None:
    fault = _fault(session.rows, "grip_lost")
    open_ms, rest_ms = _assert_relay_opens_and_belt_stops(session, fault)
    assert rest_ms <= 1000  # 1.5 km/h, the console's power-cut stop
    assert open_ms <= rest_ms


def test_SR_MON_2_demo_speeding_past_the_stage_limit_opens_the_relay(session: Session) -> None:
    """The console's + key held to 2.5 km/h at stage 1 (limit 2.0 km/h + 0.3 km/h margin)."""
    rows = session.rows
    fault = _fault(rows, "overspeed")
    assert fault.now_ms > _fault(rows, "grip_lost").now_ms
    peak = max(r.belt_kmh for r in rows)
    assert 2.3 < peak <= 2.55  # above the margin, never above what the console was asked
    open_ms, rest_ms = _assert_relay_opens_and_belt_stops(session, fault)
    assert open_ms < rest_ms <= 1000


def test_SR_MON_demo_reports_the_stop_after_the_relay_opened(session: Session) -> None:
    """The session prints when the belt was at rest after each relay opening."""
    stops_ms = [int(m) for m in re.findall(r"belt at rest (\d+) ms after the relay", session.out)]
    assert len(stops_ms) == 2
    assert all(0 < stop_ms <= 1000 for stop_ms in stops_ms)


def test_mock_panel_console_commands_need_key_relay_mode() -> None:
    class _FirmwareService:
        simulator: Any = object()  # a simulator without console keys (our firmware's)

    panel = MockPanel(_FirmwareService())  # type: ignore[arg-type]  # only .simulator is read
    assert panel.handle("console faster").startswith("error no simulated console treadmill")
    assert panel.handle("console jump").startswith("error console: use")
    assert panel.handle("sim hang 0").startswith("error sim hang 0")


def test_demo_refuses_port_in_key_relay_mode() -> None:
    err = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:  # the demo sets up logging for its own process
        code = demo_main(
            ["--monitor", "--port", "/dev/null", "--plain"], out=io.StringIO(), err=err
        )
    finally:
        root.handlers[:], root.level = handlers, level
    assert code == 2
    assert "key-relay mode" in err.getvalue()
    assert "leave out --port" in err.getvalue()


def test_SR_MON_demo_keys_in_key_relay_mode(tmp_path: Path) -> None:
    """The interactive keys: ``g`` grip, ``s`` START (the relay closes), ``b`` the console's
    START, ``+`` its speed key, ``h`` a 1 s hang of the Pi (the relay drops out, the belt
    stops), ``c`` does nothing (no cable to our firmware in this mode)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        base = load_config(bundled_config_path(monitor=True))
        config = demo_config(base, state_dir=tmp_path, broker=None, training=False)
        simulator = demo_simulator(config, seed=1, state_dir=tmp_path, clock_ms=loop.clock_ms)
        assert isinstance(simulator, ConsoleSimulator)
        service = Service(
            config,
            pin_factory=mock_pin_factory(loop.time),
            simulator=simulator,
            enable_mqtt=False,
            install_signal_handlers=False,
            clock_ms=loop.clock_ms,
        )
        run = asyncio.create_task(service.run(), name="demo-keys-service")
        console = simulator.console

        async def until(predicate: Callable[[], bool], what: str) -> None:
            deadline = loop.time() + 10.0
            while not predicate():
                assert loop.time() < deadline, f"timed out waiting for {what}"
                assert not run.done(), f"the service ended: exit {run.result()}"
                await asyncio.sleep(0.005)

        try:
            await until(lambda: service.ready.is_set() and service.panel is not None, "ready")
            demo = _Demo(service, None, tmp_path / "gpio.sock")
            demo.key("g")
            await until(lambda: demo.view(with_notes=False).grip == "both", "the grip")
            demo.key("s")
            await until(lambda: console.relay.closed(service.now_ms()), "the relay closed")
            demo.key("b")
            demo.key("+")
            assert console.target_kmh == pytest.approx(1.5)
            await until(lambda: console.true_speed_kmh > 1.4, "the belt at 1.5 km/h")
            demo.key("c")  # nothing to unplug
            demo.key("h")
            await until(lambda: not console.relay.closed(service.now_ms()), "the relay open")
            await until(lambda: console.true_speed_kmh <= 0.1, "the belt stopped")
            assert not console.running
            assert "console: b START" in "\n".join(demo.notes())
        finally:
            service.request_shutdown("test finished")
            await asyncio.wait_for(run, timeout=10)
        assert run.result() == 0

    run_virtual(main())

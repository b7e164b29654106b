"""Key-relay mode in the real service (SR-MON-1, SR-MON-3): mock pins, the simulated
console-driven treadmill and its retriggerable relay, on a virtual clock.

The relay output is the Pi's only hold on the belt: the control loop toggles it once a tick
while the core allows motion, and the simulated monostable drops the relay out
``hold_off_ms`` (+ the relay's release time) after the last toggle. These tests watch the
output from the outside (each toggle stamped on the service's clock) and the relay contact
and the belt on the simulator's side.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.adapters.gpio.inputs import mock_pin_factory
from controller.rules.model import Mode
from controller.runtime.service import Service
from controller.runtime.stats import TickRecord
from controller.settings.config import load_config
from controller.tools.mockpanel import MockPanel
from controller.tools.virtual_time import VirtualTimeLoop, run_virtual
from firmware_bridge.sim.console import ConsoleSimulator

REPO = Path(__file__).resolve().parents[2]
MONITOR_CONFIG = REPO / "config" / "monitor-demo.yaml"
TIMEOUT_S = 10.0  # virtual seconds


@dataclass
class Rig:
    service: Service
    simulator: ConsoleSimulator
    panel: MockPanel
    loop: VirtualTimeLoop
    toggles_ms: list[int] = field(default_factory=list)  # each toggle, on the service's clock
    ticks: list[tuple[int, Mode, int, bool]] = field(default_factory=list)  # ms, mode, toggles,
    # the core's Decision.key_relay

    @property
    def hold_off_ms(self) -> int:
        relay = self.service.config.drive.key_relay
        assert relay is not None
        return relay.hold_off_ms

    @property
    def drop_out_ms(self) -> float:
        """Hold-off + the relay's release time: the longest the contact stays closed."""
        return self.hold_off_ms + self.simulator.console.params.release_ms

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait on a condition, with a timeout on the virtual clock."""
        deadline = self.loop.time() + TIMEOUT_S
        while not predicate():
            if self.loop.time() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")
            await asyncio.sleep(0.005)

    async def run_belt(self, speed_kmh: float = 1.5) -> None:
        """Grip, START (the relay closes), START and the + key at the console."""
        self.panel.grip("both")
        await self.wait(self.last_grip, "the grip to be seen")
        self.panel.press("start")
        await self.wait(lambda: self.service.state.mode is Mode.RUNNING, "RUNNING")
        await self.wait(self.relay_closed, "the relay to pull in")
        self.simulator.press("start")
        self.simulator.set_target(speed_kmh)
        await self.wait(lambda: self.belt_kmh() >= speed_kmh - 0.05, "the belt at speed")

    def last_grip(self) -> bool:
        inputs = self.service.last_inputs
        return inputs is not None and inputs.grip_left and inputs.grip_right

    def relay_closed(self) -> bool:
        return bool(self.simulator.console.relay.closed(self.service.now_ms()))

    def belt_kmh(self) -> float:
        return float(self.simulator.firmware.true_speed_kmh)


@asynccontextmanager
async def relay_rig(state_dir: Path) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    base = load_config(MONITOR_CONFIG)
    config = base.model_copy(
        update={
            "gpio": base.gpio.model_copy(update={"mock_socket": None}),
            "mqtt": base.mqtt.model_copy(update={"enabled": False}),
            "training": base.training.model_copy(update={"enabled": False}),
            "state_dir": str(state_dir),
        }
    )
    simulator = ConsoleSimulator(seed=3, clock_ms=loop.clock_ms)
    service = Service(
        config,
        pin_factory=mock_pin_factory(loop.time),
        simulator=simulator,
        enable_mqtt=False,
        install_signal_handlers=False,
        clock_ms=loop.clock_ms,
    )
    task = asyncio.create_task(service.run(), name="relay-service-under-test")
    try:
        deadline = loop.time() + TIMEOUT_S
        while service.key_relay is None or service.mock_panel is None or not service.ready.is_set():
            assert not task.done(), f"the service ended early: exit {task.result()}"
            assert loop.time() < deadline, "the service did not start"
            await asyncio.sleep(0.005)
        relay = service.key_relay
        panel = service.mock_panel
        assert isinstance(panel, MockPanel)
        rig = Rig(service, simulator, panel, loop)
        forward = relay.on_toggle
        assert forward is not None, "the relay output is not wired to the simulated relay"

        def stamped() -> None:
            rig.toggles_ms.append(service.now_ms())
            forward()

        relay.on_toggle = stamped

        def observe(record: TickRecord) -> None:
            decision = service.last_decision
            assert decision is not None
            rig.ticks.append((record.now_ms, record.state.mode, relay.toggles, decision.key_relay))

        service.observers.append(observe)
        yield rig
    finally:
        service.request_shutdown("test finished")
        await asyncio.wait_for(task, timeout=TIMEOUT_S)
    assert task.result() == 0


def test_SR_MON_1_service_toggles_the_relay_every_tick_while_motion_is_allowed(
    tmp_path: Path,
) -> None:
    """One toggle per tick in RUNNING (woken ticks included), none in any other mode; the
    output level alternates and the simulated relay stays pulled in."""

    async def main() -> None:
        async with relay_rig(tmp_path) as rig:
            await rig.wait(lambda: len(rig.ticks) >= 10, "ten idle ticks")
            assert {t[2] for t in rig.ticks} == {0}, "the relay was toggled while idle"
            await rig.run_belt()
            first = len(rig.ticks)
            await rig.wait(lambda: len(rig.ticks) >= first + 100, "100 more ticks")
            running = rig.ticks[first - 1 :]
            assert all(mode is Mode.RUNNING and held for _t, mode, _n, held in running)
            steps = [b[2] - a[2] for a, b in itertools.pairwise(running)]
            assert steps == [1] * len(steps), "not exactly one toggle a tick"
            gaps_ms = [b - a for a, b in itertools.pairwise(rig.toggles_ms)]
            assert max(gaps_ms) < rig.hold_off_ms
            assert rig.relay_closed()
            assert rig.belt_kmh() == pytest.approx(1.5, abs=0.05)

    run_virtual(main())


def test_SR_MON_3_service_estop_stops_the_toggling_at_once(tmp_path: Path) -> None:
    """The e-stop edge wakes the loop: not one toggle after the press; the relay contact
    opens within the hold-off of the last toggle (on its own, whatever else cuts power)."""

    async def main() -> None:
        async with relay_rig(tmp_path) as rig:
            await rig.run_belt()
            pressed_ms = rig.service.now_ms()
            rig.panel.estop(True)
            await rig.wait(lambda: rig.service.state.mode is Mode.FAULTED, "the e-stop fault")
            first = next(i for i, tick in enumerate(rig.ticks) if tick[1] is Mode.FAULTED)
            before, faulted = rig.ticks[first - 1], rig.ticks[first]
            assert before[1] is Mode.RUNNING, "running until then"
            assert before[3], "motion was allowed until then"
            assert faulted[2] == before[2], "the tick that saw the e-stop toggled the relay"
            assert not faulted[3]
            assert 0 <= faulted[0] - pressed_ms <= 1, "the e-stop waited for a periodic tick"
            last_toggle_ms = rig.toggles_ms[-1]
            assert last_toggle_ms <= pressed_ms
            count = len(rig.toggles_ms)
            await rig.wait(
                lambda: rig.service.now_ms() > last_toggle_ms + rig.drop_out_ms + 200,
                "the hold-off and some more",
            )
            assert len(rig.toggles_ms) == count, "toggling went on after the e-stop"
            relay = rig.simulator.console.relay
            assert relay.opens_at_ms() == pytest.approx(last_toggle_ms + rig.drop_out_ms)
            assert not relay.closed(last_toggle_ms + rig.drop_out_ms + 1)
            await rig.wait(lambda: rig.belt_kmh() <= 0.1, "the belt at rest")

    run_virtual(main())


def test_SR_MON_1_hung_loop_lets_the_relay_open_within_its_hold_off(tmp_path: Path) -> None:
    """The control loop hangs for 1 s inside a tick (the event loop is blocked: the virtual
    clock jumps while it is). No toggle comes, the relay contact opens hold-off + release
    after the last one, and the belt stops with nobody deciding it. When the loop comes
    back the console has dropped out: the belt stays stopped until START at the console."""

    async def main() -> None:
        async with relay_rig(tmp_path) as rig:
            await rig.run_belt()
            hung: list[int] = []

            def hang(record: TickRecord) -> None:
                if not hung:
                    hung.append(record.now_ms)
                    rig.loop.advance(1.0)  # the tick does not return for 1 s

            rig.service.observers.append(hang)
            await rig.wait(lambda: bool(hung), "the hung tick")
            await rig.wait(lambda: rig.service.now_ms() > hung[0] + 1000, "the end of the hang")
            last_before_ms = max(t for t in rig.toggles_ms if t <= hung[0])
            opened_ms = rig.simulator.console.circuit_opened_ms
            assert opened_ms is not None, "the key circuit never opened during the hang"
            assert last_before_ms < opened_ms <= last_before_ms + rig.drop_out_ms + 1
            assert opened_ms < hung[0] + 1000, "the relay waited for the loop to come back"
            await rig.wait(lambda: rig.belt_kmh() <= 0.1, "the belt at rest")
            assert not rig.simulator.console.running, "the console restarted by itself"

    run_virtual(main())

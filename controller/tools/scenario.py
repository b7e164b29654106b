"""Scripted sessions on the simulator, checked against expectations: ``treadmill scenario``.

A scenario file (YAML, format in docs/scenarios.md) lists timed steps (grip, buttons, e-stop,
safety key, simulator faults, remote commands, ...) and expectations about what must follow
(the belt at most this fast then, this event between these times, this state, ...). The
runner drives the **real** :class:`~controller.runtime.service.Service` in real time, in-process,
against the simulated firmware on a pseudo-terminal and gpiozero mock pins, and records one
timeline row per control tick.

Every ``belt_kmh`` (timeline, expectations, stops) is the simulator's *true* belt speed, not
what the controller believes: a controller that misreads its sensor cannot pass by agreeing
with itself.

For every stop the report gives the cause, the stop time and the stop distance, measured from
the step that provoked it (a grip release, an e-stop press, a simulator fault, ...) to the
moment the true belt speed is at or below :data:`REST_KMH`.

Exit status of ``treadmill scenario``: 0 every expectation held, 1 one failed (or the run
could not be carried out), 2 the scenario file (or its config) is invalid; errors are printed
as ``PATH:LINE:COL: key.path: message``.

From Python::

    scenario = load_scenario(Path("scenarios/grip_loss_stage1_stops.yaml"))
    config = load_scenario_config(scenario)
    result = await run_scenario(scenario, config, timeline_path=Path("out.jsonl"))
    print(format_report(result))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from controller.errors import ScenarioError, ScenarioRunError

if TYPE_CHECKING:
    from controller.runtime.service import Service
    from controller.runtime.stats import TickRecord
    from controller.settings.schema import AppConfig
from controller.tools.scenario_plot import write_plot
from controller.tools.scenario_results import (
    REST_KMH,
    ScenarioResult,
    StepRecord,
    TimelineRow,
    _provokes_stop,
    evaluate,
    find_stops,
    format_report,
    write_timeline,
)
from controller.tools.scenario_spec import (
    SIM_FAULT_VALUE_PARAMS,
    ExpectSpec,
    Scenario,
    ScenarioSpec,
    SimulatorSpec,
    StepSpec,
    default_config_path,
    load_scenario,
    load_scenario_config,
    resolve_stage,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "REST_KMH",
    "ExpectSpec",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "ScenarioRunError",
    "ScenarioSpec",
    "StepSpec",
    "TimelineRow",
    "default_config_path",
    "format_report",
    "load_scenario",
    "load_scenario_config",
    "run_scenario",
    "run_scenarios",
    "write_plot",
    "write_timeline",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2


STARTUP_TIMEOUT_S: Final = 15.0
"""Time allowed for the service to open its inputs and finish the firmware handshake."""


# --------------------------------------------------------------------------- file format


# --------------------------------------------------------------------------- loading


# --------------------------------------------------------------------------- results


# --------------------------------------------------------------------------- running


def scenario_config(base: AppConfig, *, state_dir: str, training: bool) -> AppConfig:
    """``base`` pointed at the in-process simulator and mock pins, MQTT off, a temp state dir."""
    serial = base.serial.model_copy(update={"port": "sim://"})
    gpio = base.gpio.model_copy(update={"pin_factory": "mock", "mock_socket": None})
    mqtt = base.mqtt.model_copy(update={"enabled": False})
    training_section = base.training.model_copy(update={"enabled": training})
    return base.model_copy(
        update={
            "serial": serial,
            "gpio": gpio,
            "mqtt": mqtt,
            "state_dir": state_dir,
            "training": training_section,
        }
    )


def _grip_text(left: bool, right: bool) -> str:
    if left and right:
        return "both"
    if left:
        return "left"
    if right:
        return "right"
    return "none"


def _row(record: TickRecord, t0_ms: int) -> TimelineRow:
    state = record.state
    inputs = record.inputs
    firmware = inputs.firmware
    return TimelineRow(
        t_s=(record.now_ms - t0_ms) / 1000.0,
        belt_kmh=record.belt_true_kmh,
        measured_kmh=firmware.measured_kmh if firmware is not None else None,
        commanded_kmh=state.commanded_kmh,
        target_kmh=state.target_kmh,
        stage=state.stage,
        state=state.mode.value,
        grip=_grip_text(inputs.grip_left, inputs.grip_right),
        safety_key=inputs.safety_key_present,
        estop=inputs.estop_pressed,
        fault=state.fault.code.value if state.fault is not None else None,
        motion=type(record.motion).__name__,
        events=tuple((event.kind, event.message) for event in record.events),
    )


async def _wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, run_task: asyncio.Task[int]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if run_task.done():
            code = run_task.result() if not run_task.cancelled() else "cancelled"
            raise ScenarioRunError(f"the service stopped (exit {code}) while waiting for {what}")
        if loop.time() > deadline:
            raise ScenarioRunError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.002)  # polling a condition of the running service


class _Driver:
    """Carries out scenario steps on one running service."""

    def __init__(self, service: Service, reload_config: Callable[[str], AppConfig]) -> None:
        from controller.tools.mockpanel import MockPanel  # noqa: PLC0415 - needs the service module

        self.service = service
        self.panel = MockPanel(service)
        self._reload_config = reload_config

    async def do(self, step: StepSpec) -> None:
        from controller.rules.model import SelectStage, SetTarget  # noqa: PLC0415

        if step.grip is not None:
            self.panel.grip(step.grip)
        elif step.press is not None:
            self.panel.press(step.press)
        elif step.target_kmh is not None:
            self.service.submit_local(SetTarget(step.target_kmh))
        elif step.stage is not None:
            self.service.submit_local(SelectStage(step.stage))
        elif step.safety_key is not None:
            # The key and the e-stop are in series in the motor power path: the mock panel
            # opens the simulator's power circuit as well as the console input.
            self.panel.safety_key(step.safety_key == "inserted")
        elif step.estop is not None:
            self.panel.estop(step.estop == "pressed")
        elif step.sim_fault is not None:
            await _sim_inject(self.service.simulator, step.sim_fault, step.value)
        elif step.sim_clear is not None:
            await _sim_clear(self.service.simulator, step.sim_clear)
        elif step.mqtt is not None:
            self.panel.mqtt(step.mqtt.command, step.mqtt.payload_bytes())
        elif step.client is not None:
            self.panel.client(None if step.client == "none" else step.client)
        elif step.trainer is not None:
            self.panel.trainer_key(step.trainer)
        elif step.reload is not None:
            self.service.apply_config(self._reload_config(step.reload), step.reload)
        elif step.inject is not None:
            self.service.observers.append(_fail_once(self.service.observers))
        elif step.hang_ms is not None:
            # A hung controller: its relay output stops changing for hang_ms (modelled in the
            # simulator, so scenarios running alongside are not blocked).
            console = self.service.simulator
            if console is None or not hasattr(console, "hang_output"):
                raise ScenarioRunError(
                    "hang_ms steps need key-relay mode (drive.mode: key_relay) on the simulator"
                )
            console.hang_output(step.hang_ms)
        elif step.console is not None or step.console_kmh is not None:
            console = self.service.simulator
            if console is None or not hasattr(console, "press"):
                raise ScenarioRunError(
                    "console steps need key-relay mode (drive.mode: key_relay) on the simulator"
                )
            if step.console is not None:
                console.press(step.console)
            else:
                console.set_target(step.console_kmh)
        else:  # pragma: no cover - StepSpec validation requires one action
            raise ScenarioRunError(f"step at {step.at_s:g} s has no action")


def _fail_once(observers: list[Callable[[TickRecord], None]]) -> Callable[[TickRecord], None]:
    """An observer that raises in the next tick (the last part of the tick), then leaves."""

    def observer(_record: TickRecord) -> None:
        observers.remove(observer)
        raise RuntimeError("injected by the scenario: an exception in the control tick")

    return observer


async def _sim_inject(simulator: Any, name: str, value: float | None) -> None:
    if simulator is None:
        raise ScenarioRunError("no simulator: sim_fault steps need serial.port sim://")
    from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415

    fault = SimFault.parse(name)
    params: dict[str, Any] = {}
    if value is not None:
        params[SIM_FAULT_VALUE_PARAMS[fault.value]] = value
    await simulator.inject(fault, **params)


async def _sim_clear(simulator: Any, name: str) -> None:
    if simulator is None:
        raise ScenarioRunError("no simulator: sim_clear steps need serial.port sim://")
    from firmware_bridge.sim.firmware import SimFault  # noqa: PLC0415

    await simulator.clear(SimFault.parse(name))


def _sim_config(spec: SimulatorSpec) -> Any:
    from firmware_bridge.sim.firmware import SimConfig  # noqa: PLC0415
    from firmware_bridge.sim.physics import PhysicsParams  # noqa: PLC0415

    return SimConfig(
        self_checks=spec.self_checks,
        physics=PhysicsParams(walker_on_belt=spec.walker_on_belt),
    )


async def run_scenario(
    scenario: Scenario,
    config: AppConfig,
    *,
    timeline_path: Path | None = None,
    config_source: str = "",
) -> ScenarioResult:
    """Run ``scenario`` on ``config`` (pointed at the simulator and mock pins).

    In real time, or on a virtual clock when the running loop is a
    :class:`~controller.tools.virtual_time.VirtualTimeLoop`: the service, the simulator and the
    runner then all read the loop's clock, and idle time costs nothing.

    Raises :class:`ScenarioRunError` when the service cannot be started; a step that fails
    is recorded in ``errors`` (and fails the result).
    """
    from controller.adapters.gpio.inputs import mock_pin_factory  # noqa: PLC0415
    from controller.rules.model import SelectStage  # noqa: PLC0415
    from controller.runtime.service import Service, monotonic_ms  # noqa: PLC0415
    from controller.settings.config import load_config  # noqa: PLC0415 - keeps `--help` fast
    from controller.tools.virtual_time import VirtualTimeLoop  # noqa: PLC0415
    from firmware_bridge.sim.memory import MemorySimulator  # noqa: PLC0415
    from firmware_bridge.sim.pty import PtySimulator  # noqa: PLC0415

    spec = scenario.spec
    stage = resolve_stage(scenario, config)
    loop = asyncio.get_running_loop()
    virtual = isinstance(loop, VirtualTimeLoop)
    clock_ms = loop.clock_ms if isinstance(loop, VirtualTimeLoop) else monotonic_ms
    wall_start = loop.time()
    with tempfile.TemporaryDirectory(prefix="treadmill-scenario-") as state_dir:
        run_config = scenario_config(config, state_dir=state_dir, training=spec.training)
        # A stable link that disappears while "unplugged", like /dev/serial/by-id/...: a
        # reconnecting bridge must never open a recycled /dev/pts/N of another program.
        simulator: Any
        if config.drive.mode == "key_relay":
            from firmware_bridge.sim.console import ConsoleParams, ConsoleSimulator  # noqa: PLC0415

            simulator = ConsoleSimulator(
                ConsoleParams(physics=_sim_config(spec.simulator).physics),
                seed=spec.seed,
                clock_ms=clock_ms,
            )
        else:
            # On a virtual clock the cable is in memory; in real time it is a pseudo-terminal.
            simulator = (MemorySimulator if virtual else PtySimulator)(
                _sim_config(spec.simulator),
                seed=spec.seed,
                link_path=Path(state_dir) / "firmware.tty",
                clock_ms=clock_ms,
            )
        service = Service(
            run_config,
            pin_factory=mock_pin_factory(loop.time if virtual else None),
            simulator=simulator,
            enable_mqtt=False,
            install_signal_handlers=False,
            clock_ms=clock_ms,
            # the reconnect jitter too follows the scenario's seed: a replug is retried alike
            jitter_rng=random.Random(spec.seed),  # noqa: S311 - backoff jitter, not cryptography
        )
        records: list[TickRecord] = []
        service.observers.append(records.append)
        run_task = asyncio.create_task(service.run(), name=f"scenario-{scenario.name}")
        steps: list[StepRecord] = []
        errors: list[str] = []
        t0_ms = 0
        t0_loop = loop.time()
        try:
            await _wait_for(
                lambda: service.panel is not None, STARTUP_TIMEOUT_S, "the GPIO inputs", run_task
            )
            driver = _Driver(
                service,
                reload_config=lambda name: scenario_config(
                    load_config(scenario.base_dir / name),
                    state_dir=state_dir,
                    training=spec.training,
                ),
            )
            # Inputs at rest before the first tick: key in, e-stop released, no grip.
            driver.panel.reset_inputs()
            await _wait_for(
                service.ready.is_set,
                STARTUP_TIMEOUT_S,
                "the firmware handshake",
                run_task,
            )
            await _wait_for(lambda: bool(records), 2.0, "the first control tick", run_task)
            if stage != service.state.stage:
                service.submit_local(SelectStage(stage))
                await _wait_for(
                    lambda: service.state.stage == stage,
                    2.0,
                    f"stage {stage} to be selected",
                    run_task,
                )
            t0_ms = clock_ms()
            t0_loop = t0_ms / 1000.0  # the loop clock and clock_ms are the same clock
            await _run_steps(spec, driver, steps, t0_loop, run_task)
            remaining = t0_loop + spec.duration_s - loop.time()
            if remaining > 0 and not run_task.done():
                await asyncio.wait({run_task}, timeout=remaining)
            if run_task.done():
                errors.append(f"the service stopped early (exit {_exit_text(run_task)})")
        finally:
            shutdown_start = loop.time()
            service.request_shutdown("scenario finished")
            timeout_s = run_config.control.shutdown_timeout_s + 5.0
            done, _pending = await asyncio.wait({run_task}, timeout=timeout_s)
            if not done:
                run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run_task
                errors.append(f"the service did not stop within {timeout_s:g} s")
            if t0_ms:
                end_s = shutdown_start - t0_loop
                steps.append(StepRecord(end_s, end_s, "shutdown", "end of scenario: shutdown"))
    exit_code = run_task.result() if run_task.done() and not run_task.cancelled() else -1
    if exit_code != 0:
        errors.append(f"the service exited with status {exit_code}")
    rows = tuple(_row(r, t0_ms) for r in records if r.now_ms >= t0_ms)
    rows_in_run = tuple(r for r in rows if r.t_s <= spec.duration_s + 1e-9)
    stops = find_stops(rows, steps)
    expectations = tuple(
        evaluate(index, expectation, rows_in_run, rows)
        for index, expectation in enumerate(spec.expect)
    )
    result = ScenarioResult(
        scenario=scenario,
        config_source=config_source,
        stage=stage,
        rows=rows,
        steps=tuple(steps),
        stops=stops,
        expectations=expectations,
        errors=(*errors, *(s.error for s in steps if s.error is not None)),
        service_exit_code=exit_code,
        wall_time_s=loop.time() - wall_start,
        loop_stats=service.loop_stats.as_dict(),
        stages=run_config.stage_configs(),
        machine_max_kmh=run_config.firmware.max_speed_kmh,
    )
    if timeline_path is not None:
        write_timeline(result, timeline_path)
    return result


async def run_scenarios(
    items: Sequence[tuple[Scenario, AppConfig]],
    *,
    jobs: int = 1,
    config_sources: Sequence[str] | None = None,
) -> list[ScenarioResult | ScenarioRunError]:
    """Run several scenarios in this event loop, at most ``jobs`` at a time.

    Each has its own service, simulator and mock pins. Results come back in the order of
    ``items``; a scenario that could not be run gives its :class:`ScenarioRunError`.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    gate = asyncio.Semaphore(jobs)

    async def one(index: int) -> ScenarioResult | ScenarioRunError:
        scenario, config = items[index]
        source = config_sources[index] if config_sources is not None else ""
        async with gate:
            try:
                return await run_scenario(scenario, config, config_source=source)
            except ScenarioRunError as exc:
                return exc

    return list(await asyncio.gather(*(one(i) for i in range(len(items)))))


def _exit_text(task: asyncio.Task[int]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return repr(exc) if exc is not None else str(task.result())


async def _run_steps(
    spec: ScenarioSpec,
    driver: _Driver,
    records: list[StepRecord],
    t0_loop: float,
    run_task: asyncio.Task[int],
) -> None:
    """Carry out the steps at their times (loop clock), in file order for equal times."""
    loop = asyncio.get_running_loop()
    for step in sorted(spec.steps, key=lambda s: s.at_s):
        delay = t0_loop + step.at_s - loop.time()
        if delay > 0:
            await asyncio.wait({run_task}, timeout=delay)
        if run_task.done():
            return
        done_s = loop.time() - t0_loop
        error: str | None = None
        try:
            await driver.do(step)
        except Exception as exc:  # a failed step fails the scenario, with what went wrong
            error = f"step at {step.at_s:g} s ({step.describe()}) failed: {exc}"
            logger.error("%s", error)
        records.append(
            StepRecord(step.at_s, done_s, step.action, step.describe(), error, _provokes_stop(step))
        )


# --------------------------------------------------------------------------- analysis


# --------------------------------------------------------------------------- output


# --------------------------------------------------------------------------- command line

"""The treadmill service: gathers inputs, calls the pure safety core and carries out its
decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller import version
from controller.adapters.gpio.beltsensor import BeltSensor
from controller.adapters.gpio.inputs import PanelInputs, PanelReading, make_pin_factory
from controller.adapters.gpio.keyrelay import KeyRelayOutput
from controller.adapters.mqtt.commands import AssignClient, CommandRejected, ParsedCommand
from controller.adapters.mqtt.publisher import MqttPublisher
from controller.adapters.mqtt.telemetry import diagnostics_payload
from controller.adapters.systemd import Notifier
from controller.errors import TreadmillError
from controller.rules import core
from controller.rules.model import (
    CoreState,
    Decision,
    Event,
    Inputs,
    LocalCommand,
    Mode,
    MotionCommand,
    RemoteStop,
    RequestStop,
    SafetyConfig,
)
from controller.runtime import tasks
from controller.runtime.events import EventFeed
from controller.runtime.inputs import InputGatherer, TrainerAction, no_training_event
from controller.runtime.motion import MotionSender
from controller.runtime.parts import (
    open_belt_sensor,
    open_bridge,
    open_key_relay,
    open_training,
    start_simulator,
)
from controller.runtime.reload import load_for_reload, plan_reload
from controller.runtime.reports import belt_true_kmh, link_info, state_telemetry, status_line
from controller.runtime.stats import LoopStats, TickRecord
from controller.runtime.waker import LoopWaker, TickSchedule, monotonic_ms
from controller.runtime.wiring import input_specs, mqtt_settings
from controller.settings.schema import AppConfig
from firmware_bridge.port.bridge import FirmwareBridge

__all__ = ["EXIT_FAILURE", "EXIT_OK", "Service", "monotonic_ms"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
WATCHDOG_EVERY_MS = 250


class Service:
    """The running controller. Build it with a loaded config, then ``await run()``.

    Tasks (one ``asyncio.TaskGroup``, every task named):

    * ``firmware-bridge``: the serial link (``firmware_bridge.port.bridge``);
    * ``gpio-inputs``: watches the GPIO edge rate and reports a chattering input;
    * ``control-loop``: the fixed-rate loop; the only place that calls ``decide``;
    * ``mqtt-publisher``: telemetry and remote commands (never awaited by the loop);
    * ``training-writer``: the session log (SQLite, off the loop);
    * ``systemd-notify``: ``STATUS=`` updates (``WATCHDOG=1`` comes from the loop itself);
    * ``mock-panel``: only with mock pins and a socket configured, drives the mock inputs.

    The control loop runs on absolute deadlines (``t0 + k * period``) and is woken at once by
    an edge on a safety input (e-stop, key, grips) and when a timer of the core runs out
    (``Decision.next_deadline_ms``, SR-TIMER-1), so a grip grace acts when it ends, not at
    the next tick (``runtime/waker.py``). It never awaits I/O: motion commands are written
    to the serial transport without waiting, telemetry is handed to the publisher by
    reference.
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        config_path: Path | None = None,
        pin_factory: Any | None = None,
        notifier: Notifier | None = None,
        clock_ms: Callable[[], int] = monotonic_ms,
        simulator: Any | None = None,
        enable_mqtt: bool | None = None,
        install_signal_handlers: bool = True,
        jitter_rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._safety: SafetyConfig = config.safety()
        self._pending_safety: SafetyConfig | None = None
        self._pin_factory = pin_factory
        self.notifier = notifier if notifier is not None else Notifier()
        self._clock_ms = clock_ms
        self.simulator = simulator
        self._enable_mqtt = config.mqtt.enabled if enable_mqtt is None else enable_mqtt
        self._install_signal_handlers = install_signal_handlers
        self._jitter_rng = jitter_rng  # the bridge's reconnect jitter; None: unseeded

        self.state: CoreState = core.initial_state(self._safety)
        self.last_inputs: Inputs | None = None
        self.last_motion: MotionCommand | None = None
        self.last_decision: Decision | None = None
        self.loop_stats = LoopStats()
        self.observers: list[Callable[[TickRecord], None]] = []
        self.events = EventFeed(clock_ms)
        self.event_log: deque[tuple[int, Event]] = self.events.log
        self.waker = LoopWaker(clock_ms)
        self.intake = InputGatherer()
        self.exit_code = EXIT_OK
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()

        self._motion = MotionSender()
        self._trainer = TrainerAction()
        self._shutdown_reason: str | None = None
        self._shutdown_started_ms: int | None = None
        self._reload_requested = False
        self._last_watchdog_ms = -WATCHDOG_EVERY_MS
        self._session: dict[str, object] | None = None
        self._stage_cap = 1
        self._tasks: list[asyncio.Task[Any]] = []
        self._internal_errors = 0
        self.mock_panel: Any | None = None  # a controller.tools.mockpanel.MockPanel with mock pins

        self.panel: PanelInputs | None = None
        self.belt_sensor: BeltSensor | None = None
        self.key_relay: KeyRelayOutput | None = None  # key-relay mode only
        self.relay_mode = config.drive.mode == "key_relay"
        self.bridge: FirmwareBridge | None = None
        self.publisher: Any | None = None
        self.training: Any | None = None

    # ------------------------------------------------------------------ inputs from outside

    def now_ms(self) -> int:
        """The service's clock (integer monotonic milliseconds), as the core sees it."""
        return self._clock_ms()

    def submit_local(self, command: LocalCommand) -> None:
        """A local console action (mock panel, demo keys, scenario steps, training)."""
        self.intake.local.append(command)

    def on_remote_command(self, command: ParsedCommand) -> None:
        """Called by the MQTT publisher for every command it parsed. Cheap and non-blocking."""
        if isinstance(command, CommandRejected):
            # The publisher has already published the command_rejected event. Record it here
            # for logs and timelines, folding a flood into one line per second.
            self.events.rejected(command)
            return
        if isinstance(command, RemoteStop):
            self.intake.remote_stop = True  # never dropped, whatever the queue holds
            self._wake()
            return
        if isinstance(command, AssignClient):
            self._assign_client(command.client_id, source="mqtt")
            return
        dropped = self.intake.submit_remote(command)
        if dropped is not None:
            self._emit(dropped)

    def assign_client(self, client_id: str | None) -> None:
        """Assign (or clear) the client at the console (local)."""
        self._assign_client(client_id, source="console")

    def _assign_client(self, client_id: str | None, *, source: str) -> None:
        if self.training is None:
            self._emit(no_training_event())
            return
        event = self.training.assign_client(
            client_id, belt_at_rest=self._belt_at_rest(), source=source
        )
        self._emit(event)

    def request_shutdown(self, reason: str = "shutdown") -> None:
        if self._shutdown_reason is None:
            logger.info("shutdown requested (%s): stopping the belt first", reason)
            self._shutdown_reason = reason
        self._wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        self.waker.wake()

    # ------------------------------------------------------------------ helpers

    def _emit(self, event: Event, *, publish: bool = True) -> None:
        self.events.emit(event, publish=publish)

    def _belt_at_rest(self) -> bool:
        """The core's verdict of the last tick (``Decision.belt_at_rest``): idle or faulted,
        a usable firmware status, measured speed and firmware set-point at standstill."""
        return self.last_decision is not None and self.last_decision.belt_at_rest

    def status_line(self) -> str:
        """The systemd ``STATUS=`` line: mode, stage, measured speed, fault."""
        return status_line(self.state, self.last_inputs)

    def _firmware_fresh(self) -> bool:
        """The core's verdict of the last tick (``Decision.firmware_fresh``). In key-relay
        mode there is no firmware: the inputs are fresh once the loop has ticked."""
        if self.relay_mode:
            return self.last_decision is not None
        return self.last_decision is not None and self.last_decision.firmware_fresh

    # ------------------------------------------------------------------ stops

    def _internal_fault(self, exc: Exception) -> None:
        """An exception in a tick: latch ``internal`` with a controlled stop and keep the loop
        alive, so the stop stays commanded and watched (SR-FAULT-4). The first one is logged
        with its traceback; repeats are counted."""
        now_ms = self._clock_ms()
        self._internal_errors += 1
        what = f"{type(exc).__name__}: {exc}"
        if self._internal_errors == 1:
            logger.error(
                "internal error in the control tick (%s): latching 'internal', controlled stop",
                what,
                exc_info=exc,
            )
        else:
            logger.debug("internal error in the control tick again (%s)", what)
        decision = core.internal_fault(
            self.state, self._safety, now_ms, f"Internal error in the control tick ({what})"
        )
        self.state = decision.state
        self.last_motion = decision.motion
        firmware = None if self.last_inputs is None else self.last_inputs.firmware
        self._motion.carry_out(self.bridge, decision.motion, now_ms, firmware)
        for event in decision.events:
            self._emit(event)

    def _last_resort_stop(self, reason: str) -> None:
        """The service is going down: a controlled STOP on the wire, if there is a wire."""
        self._motion.last_resort_stop(self.bridge, reason, self._safety.stop_decel_kmh_s)

    # ------------------------------------------------------------------ the tick

    def _tick(self) -> None:
        """One control tick: gather inputs, decide, carry out. Never awaits."""
        panel = self.panel
        if panel is None:
            raise RuntimeError("the service's GPIO inputs are not open yet")
        bridge = self.bridge
        now_ms = self._clock_ms()
        reading = panel.read(now_ms)
        shutdown_stop = None
        if self._shutdown_reason is not None and self.state.mode == Mode.RUNNING:
            shutdown_stop = RequestStop(self._shutdown_reason)
        inputs = self.intake.gather(
            reading,
            bridge=bridge,
            belt_sensor=self.belt_sensor,
            stage_cap=self._stage_cap,
            shutdown_stop=shutdown_stop,
        )
        decision = core.decide(self.state, inputs, self._safety, now_ms)
        self._motion.carry_out(bridge, decision.motion, now_ms, inputs.firmware)
        if decision.clear_firmware_fault and bridge is not None:
            bridge.clear_fault()
        if decision.key_relay and self.key_relay is not None:
            self.key_relay.toggle()  # SR-MON-1: the relay stays in only while this goes on
        self.state = decision.state
        self.waker.deadline_ms = decision.next_deadline_ms
        self.last_inputs = inputs
        self.last_motion = decision.motion
        self.last_decision = decision
        if not self.ready.is_set() and core.link_settled(self.state, inputs, self._safety, now_ms):
            self._announce_ready()
        for event in decision.events:
            self._emit(event)
        self._run_training(reading, inputs, decision, now_ms)
        self._after_tick(inputs, decision, now_ms)

    def _announce_ready(self) -> None:
        """Ready once a START could be accepted as far as the link goes (SR-LINK-2)."""
        self.ready.set()
        self.notifier.ready(self.status_line())
        logger.info(
            "ready: controller %s, firmware handshake done and the link settled, "
            "control loop at %s Hz",
            version(),
            self.config.control.rate_hz,
        )

    def _run_training(
        self, reading: PanelReading, inputs: Inputs, decision: Decision, now_ms: int
    ) -> None:
        """The training program's part of the tick: stage cap, session, its stop requests."""
        if self.training is None:
            self._stage_cap = len(self._safety.stages)
            return
        out = self.training.on_tick(
            now_ms=now_ms,
            utc=datetime.now(UTC),
            core=self.state,
            measured_kmh=inputs.firmware.measured_kmh if inputs.firmware is not None else None,
            belt_at_rest=decision.belt_at_rest,
            events=decision.events,
            trainer_action=self._trainer.check(self.config.training.trainer, reading, now_ms),
        )
        self._stage_cap = out.stage_cap
        self._session = out.session
        if out.request_stop is not None:
            self.intake.local.append(RequestStop(out.request_stop))
        for event in out.events:
            self._emit(event)
        if out.finished_session is not None and self.publisher is not None:
            self.publisher.publish_session(out.finished_session)

    def _after_tick(self, inputs: Inputs, decision: Decision, now_ms: int) -> None:
        """Pending looser limits, the systemd watchdog, the publisher and the observers."""
        if self._pending_safety is not None and self._belt_at_rest():
            self._safety = self._pending_safety
            self._pending_safety = None
            self._emit(
                Event("config_applied", "loosened limits applied now that the belt is at rest")
            )
        if self._firmware_fresh() and now_ms - self._last_watchdog_ms >= WATCHDOG_EVERY_MS:
            self.notifier.watchdog()
            self._last_watchdog_ms = now_ms
        new_events = self.events.new
        if self.publisher is not None and new_events:
            self.publisher.nudge()  # the publisher pulls the state at its own rate
        if self.observers:
            record = TickRecord(
                now_ms=now_ms,
                state=self.state,
                inputs=inputs,
                motion=decision.motion,
                events=tuple(new_events),
                belt_true_kmh=belt_true_kmh(self.simulator),
                session=self._session,
            )
            for observer in self.observers:
                observer(record)
        new_events.clear()

    def link_info(self) -> dict[str, object]:
        """The link, loop and MQTT counters."""
        return link_info(self.bridge, self.loop_stats, self.publisher)

    def _mqtt_state(self) -> dict[str, object]:
        """The MQTT ``state`` payload: the counters go to ``diagnostics`` instead."""
        return self.telemetry(self._clock_ms(), with_link=False)

    def diagnostics(self) -> dict[str, object]:
        """The MQTT ``diagnostics`` payload (docs/mqtt.md): link, loop and MQTT counters."""
        return diagnostics_payload(ts=datetime.now(UTC), link=self.link_info())

    def telemetry(self, now_ms: int, *, with_link: bool = True) -> dict[str, object]:
        """The ``state`` payload (docs/mqtt.md); ``with_link`` adds the counters under
        ``link`` (the local status and tools; MQTT sends them apart, less often)."""
        return state_telemetry(
            now_ms,
            self.state,
            self.last_inputs,
            self._safety,
            simulator=self.simulator,
            bridge=self.bridge,
            link=self.link_info() if with_link else None,
            session=self._session,
            decision=self.last_decision,
        )

    # ------------------------------------------------------------------ control loop

    async def _control_loop(self) -> None:
        if not self.relay_mode:  # in key-relay mode the treadmill's own console drives it
            await self._wait_for_firmware()
        # Start-up garbage is frozen out of the collector, so a full collection during a
        # command flood does not pause the loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        ticks = TickSchedule(self.waker, self.loop_stats, self.config.control.rate_hz)
        try:
            while True:
                await ticks.next_tick()
                if self._reload_requested:
                    self._reload_requested = False
                    self._tasks.append(asyncio.create_task(self._reload(), name="config-reload"))
                try:
                    self._tick()
                except Exception as exc:  # the single catch-all (SR-FAULT-4)
                    self._internal_fault(exc)
                if self._shutdown_reason is not None and self._shutdown_done():
                    break
        except asyncio.CancelledError:
            self._last_resort_stop("control loop cancelled while the service was running")
            raise
        except Exception:
            # The catch-all itself failed: the fault could not be recorded or the STOP not
            # handed over. The process exits; the firmware's lease stops the belt (SR-FAULT-4).
            self._last_resort_stop("the control loop's error handling failed")
            raise
        finally:
            ticks.close()
        self._finish_shutdown()

    async def _wait_for_firmware(self) -> None:
        bridge = self.bridge
        if bridge is None:
            raise RuntimeError("the service's firmware bridge is not open yet")
        stopping = lambda: self._shutdown_reason is not None  # noqa: E731  # a one-line query
        if await tasks.wait_for_firmware(bridge, self.config.serial.port, self.notifier, stopping):
            raise _ShutdownBeforeReadyError

    # ------------------------------------------------------------------ shutdown

    def _shutdown_done(self) -> bool:
        now_ms = self._clock_ms()
        if self._shutdown_started_ms is None:
            self._shutdown_started_ms = now_ms
        verdict = tasks.shutdown_verdict(
            firmware_fresh=self._firmware_fresh(),
            belt_at_rest=self._belt_at_rest(),
            waited_ms=now_ms - self._shutdown_started_ms,
            timeout_ms=int(self.config.control.shutdown_timeout_s * 1000),
            lease_ms=self._safety.lease_ms,
        )
        if verdict == "timeout":
            self._motion.emergency_stop(self.bridge, "shutdown timeout")
            self.exit_code = EXIT_FAILURE
        return verdict is not None

    def _finish_shutdown(self) -> None:
        self.notifier.stopping(f"stopped: {self._shutdown_reason}")
        logger.info("belt at rest; service stopping (%s)", self._shutdown_reason)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    # ------------------------------------------------------------------ reload

    async def _reload(self) -> None:
        self.notifier.reloading()
        loaded = await load_for_reload(self.config_path)
        if isinstance(loaded, Event):
            self._emit(loaded)
        else:
            self.apply_config(loaded, str(self.config_path))
        self.notifier.ready(self.status_line())

    def apply_config(self, new_config: AppConfig, source: str) -> None:
        """Apply a loaded, checked config as SIGHUP does (``runtime/reload.py``): tighter
        limits at once, looser ones when the belt is at rest (SR-STAGE-6 clamps a stage no
        longer in the table); sections that need a restart keep their running values."""
        plan = plan_reload(
            self.config, self._safety, new_config, source, belt_at_rest=self._belt_at_rest()
        )
        self._safety = plan.safety
        self._pending_safety = plan.pending
        self.config = plan.config
        self._emit(plan.event)

    # ------------------------------------------------------------------ other tasks

    async def _gpio_watch(self) -> None:
        """Report GPIO chatter: an edge rate no person can produce means a wiring fault."""
        if self.panel is None:
            raise RuntimeError("the service's GPIO inputs are not open yet")
        await tasks.watch_gpio(self.panel, self._emit)

    def _on_link_change(self, up: bool, reason: str) -> None:
        if up:
            self._emit(
                Event("link_restored", f"firmware link up ({reason}; controller {version()})")
            )
        else:
            self._emit(Event("link_lost", f"firmware link down: {reason}"))

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        """Run until shutdown. Returns the process exit status."""
        signals = tasks.signal_handlers(
            self._install_signal_handlers, self.request_shutdown, self.request_reload
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.enter_context(signals)
                await self._start_parts(stack)
                try:
                    await self._run_tasks()
                except BaseExceptionGroup:
                    # Python 3.11's TaskGroup leaves this task marked as cancelled when a child
                    # fails (CPython gh-116720, fixed in 3.12): the clean-up below (closing the
                    # serial port, the simulator) would then be interrupted at its first await.
                    task = asyncio.current_task()
                    while task is not None and task.cancelling() > 0:
                        task.uncancel()
                    raise
        except* _ShutdownBeforeReadyError:
            logger.info("shutdown requested before the firmware answered; the belt never moved")
        except* Exception as group:
            for exc in group.exceptions:
                logger.critical("service failed: %s", exc, exc_info=exc)
            self.exit_code = EXIT_FAILURE
        finally:
            self.notifier.close()
            self.stopped.set()
        return self.exit_code

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        self.simulator, port = await start_simulator(
            config, self.simulator, stack, relay_mode=self.relay_mode
        )
        factory = self._pin_factory
        if factory is None:
            factory = make_pin_factory(config.gpio.pin_factory)
            self._pin_factory = factory
        self.panel = PanelInputs(
            input_specs(config),
            pin_factory=factory,
            grip_debounce_ms=config.grip_sensor.debounce_ms,
            on_safety_edge=self._wake,
            loop=asyncio.get_running_loop(),
            clock_ms=self._clock_ms,
        )
        stack.callback(self.panel.close)
        self.belt_sensor = open_belt_sensor(config, factory, self.simulator, stack)
        if config.gpio.pin_factory == "mock":
            # Mock pins start at their pull level, which for fail-safe wiring means "e-stop
            # pressed, key removed". Put the simulated console in its normal state. The mock
            # panel is a developer tool: loaded only with mock pins.
            from controller.tools.mockpanel import MockPanel  # noqa: PLC0415

            self.mock_panel = MockPanel(self)
            self.mock_panel.reset_inputs()
        if self.relay_mode:
            self.key_relay = open_key_relay(config, factory, self.simulator, stack)
        else:
            self.bridge = open_bridge(
                config, port, self._clock_ms, self.simulator, rng=self._jitter_rng
            )
            self.bridge.on_link_change = self._on_link_change
        if config.training.enabled:
            self.training = open_training(config, self._safety)
            for event in await self.training.open():
                self._emit(event)
        if self._enable_mqtt:
            self.publisher = MqttPublisher(mqtt_settings(config), on_command=self.on_remote_command)
            self.publisher.set_sources(state=self._mqtt_state, diagnostics=self.diagnostics)
            self.events.publisher = self.publisher

    async def _run_tasks(self) -> None:
        async with asyncio.TaskGroup() as group:
            bridge = self.bridge
            stop = self._last_resort_stop
            spawn: list[tuple[str, Coroutine[Any, Any, None]]] = []
            if bridge is not None:
                spawn.append(("firmware-bridge", bridge.run()))
            spawn.append(("gpio-inputs", self._gpio_watch()))
            status = tasks.report_status(self.notifier, self.status_line, "starting")
            spawn.append(("systemd-notify", status))
            if self.publisher is not None:
                spawn.append(("mqtt-publisher", self.publisher.run()))
            if self.training is not None:
                spawn.append(("training-writer", self.training.run_writer()))
            if self.mock_panel is not None and self.config.gpio.mock_socket:
                from controller.tools.mockpanel import serve_mock_socket  # noqa: PLC0415

                socket_path = Path(self.config.gpio.mock_socket)
                spawn.append(("mock-panel", serve_mock_socket(socket_path, self.mock_panel)))
            for name, coro in spawn:
                self._tasks.append(group.create_task(tasks.guard(name, coro, stop), name=name))
            group.create_task(self._control_loop(), name="control-loop")
        if self.training is not None:
            await self.training.close()


class _ShutdownBeforeReadyError(TreadmillError):
    """SIGTERM arrived before the firmware handshake: nothing moved, exit cleanly.

    A control-flow signal, never shown to a user: it derives from the project's base only,
    with no builtin second base that a broad ``except`` elsewhere could catch by accident.
    """

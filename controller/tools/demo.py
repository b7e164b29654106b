"""``treadmill demo``: the real controller on a simulated treadmill, in one terminal.

Runs :class:`~controller.runtime.service.Service` in-process against the simulated firmware on a
pseudo-terminal (``serial.port: sim://``), with gpiozero mock pins for the grips, e-stop,
safety key and buttons, and a throw-away MQTT broker on 127.0.0.1 (:mod:`controller.tools.broker`)
so the same telemetry can be watched with ``mosquitto_sub`` or ``treadmill monitor``.

On a terminal the view (:mod:`controller.tools.view`) is redrawn several times a second and keys
drive the mock console::

    g grip (both hands / none)   s START   x STOP   + / - target +-0.5 km/h
    1-4 stage                    e e-stop  k safety key   r RESET
    c USB cable unplug / plug    q quit (stops the belt first)

Key-relay (monitor) mode, ``treadmill demo --monitor`` (the bundled
``config/monitor-demo.yaml``; any config with ``drive.mode: key_relay`` works the same way):
the treadmill's own console drives the belt (:mod:`firmware_bridge.sim.console`) and the Pi
only holds the key-circuit relay, toggling its output every tick while motion is allowed; the
simulated retriggerable relay drops out ``hold_off_ms`` after the last toggle and the belt
stops. The Pi's belt sensor reads the simulated belt. Keys::

    g grip   s START (Pi: allow motion, closes the relay)   x STOP (Pi: opens the relay)
    b console START   n console STOP   + / - console speed keys   h hang the Pi for 1 s
    1-4 stage         e e-stop   k safety key   r RESET   q quit

Without a terminal (stdin or stdout not a tty, e.g. in CI) a short built-in session runs
instead (grip, start, ramp, release the grip -> stop and fault, reset; in key-relay mode
also a START refused without grip and a console speeding past the stage limit) and the
state is printed as plain lines twice a second; it exits 0 when the session went as
expected.

Nothing is kept: the state directory, the mock-panel socket and the broker live in a
temporary folder removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from controller.tools.broker import BrokerUnavailableError, DemoBroker
from controller.tools.demo_session import demo_session

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig

__all__ = ["bundled_config_path", "demo_config", "demo_main", "demo_simulator"]

logger = logging.getLogger(__name__)


def bundled_config_path(*, monitor: bool = False) -> Path:
    """The demo config shipped with the package: ``config/demo.yaml``, or
    ``config/monitor-demo.yaml`` for key-relay (monitor) mode."""
    from controller.resources import bundled_config  # noqa: PLC0415 - keeps --help fast

    return bundled_config("monitor-demo.yaml" if monitor else "demo.yaml")


def demo_simulator(
    config: AppConfig,
    *,
    seed: int,
    state_dir: Path,
    clock_ms: Callable[[], int] | None = None,
) -> Any:
    """The in-process simulator for ``config``: the console-driven treadmill in key-relay
    mode (on ``clock_ms``, default the monotonic clock), else our firmware on a
    pseudo-terminal."""
    if config.drive.mode == "key_relay":
        from firmware_bridge.sim.console import ConsoleSimulator  # noqa: PLC0415

        if clock_ms is None:
            return ConsoleSimulator(seed=seed)
        return ConsoleSimulator(seed=seed, clock_ms=clock_ms)
    from firmware_bridge.sim.pty import PtySimulator  # noqa: PLC0415

    return PtySimulator(seed=seed, link_path=state_dir / "firmware.tty")


def demo_config(
    base: AppConfig,
    *,
    state_dir: Path,
    broker: tuple[str, int] | None,
    training: bool,
    port: str = "sim://",
    mqtt_protocol: str = "auto",
) -> AppConfig:
    """``base`` on the simulator and mock pins, its state in ``state_dir``, MQTT to ``broker``
    with ``mqtt_protocol`` (``3.1.1`` for amqtt, which hangs on an MQTT 5 CONNECT).

    ``port``: the firmware's serial port; the default runs the simulator in-process, a path
    talks to a firmware runner such as ``treadmill sim --avr firmware/build/treadmill.elf``.
    With a runner in another process the Pi's belt sensor is left out (one speed channel):
    its mock pin gets pulses only from the in-process simulator.
    """
    serial = base.serial.model_copy(update={"port": port})
    gpio = base.gpio.model_copy(
        update={"pin_factory": "mock", "mock_socket": str(state_dir / "gpio.sock")}
    )
    mqtt_update: dict[str, object] = {"enabled": broker is not None}
    if broker is not None:
        mqtt_update.update(
            host=broker[0],
            port=broker[1],
            tls=None,
            credentials_file=None,
            protocol=mqtt_protocol,
        )
    mqtt = base.mqtt.model_copy(update=mqtt_update)
    training_section = base.training.model_copy(update={"enabled": training})
    update: dict[str, object] = {
        "serial": serial,
        "gpio": gpio,
        "mqtt": mqtt,
        "state_dir": str(state_dir),
        "training": training_section,
    }
    if port != "sim://":
        update["belt_sensor"] = None
    return base.model_copy(update=update)


async def _start_broker(kind: str, err: TextIO) -> DemoBroker | None:
    if kind == "none":
        return None
    broker = DemoBroker(kind)  # type: ignore[arg-type]  # argparse restricts the choices
    try:
        await broker.start()
    except BrokerUnavailableError as exc:
        if kind != "auto":
            raise
        err.write(f"demo: running without MQTT: {exc}\n")
        return None
    return broker


async def _demo(args: argparse.Namespace, interactive: bool, out: TextIO, err: TextIO) -> int:
    from controller.adapters.gpio.inputs import mock_pin_factory  # noqa: PLC0415
    from controller.runtime.service import Service  # noqa: PLC0415
    from controller.settings.config import ConfigError, load_config  # noqa: PLC0415

    try:
        path = Path(args.config) if args.config else bundled_config_path(monitor=args.monitor)
        base = load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            err.write(line + "\n")
        return 78
    if base.drive.mode == "key_relay" and args.port is not None:
        err.write(
            f"demo: --port talks to our firmware, but {path} is in key-relay mode "
            "(drive.mode: key_relay), where the treadmill's own console drives the belt: "
            "leave out --port (the console-driven treadmill is simulated in-process)\n"
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="treadmill-demo-") as folder:
        state_dir = Path(folder)
        if interactive:
            # Log lines would tear the screen: they go to a file shown at exit.
            _log_to(logging.FileHandler(state_dir.parent / f"{state_dir.name}.log"))
        broker = await _start_broker(args.broker, err)
        try:
            config = demo_config(
                base,
                state_dir=state_dir,
                broker=(broker.host, broker.port) if broker is not None else None,
                training=args.training,
                port=args.port if args.port is not None else "sim://",
                mqtt_protocol="3.1.1" if broker is not None and broker.kind == "amqtt" else "auto",
            )
            simulator = (
                demo_simulator(config, seed=args.seed, state_dir=state_dir)
                if args.port is None
                else None
            )
            service = Service(
                config,
                pin_factory=mock_pin_factory(),
                simulator=simulator,
                enable_mqtt=broker is not None,
            )
            if broker is not None:
                out.write(f"watch the telemetry: {broker.subscribe_hint()}\n")
            if args.port is not None and base.belt_sensor is not None:
                err.write(
                    "demo: one speed channel: the Pi's belt sensor is left out, its pulses "
                    "come only from the in-process simulator (without --port)\n"
                )
            code, ok = await demo_session(
                service,
                out,
                broker=broker,
                socket_path=state_dir / "gpio.sock",
                interactive=interactive,
            )
        finally:
            if broker is not None:
                await broker.stop()
    if interactive:
        out.write(f"demo stopped (exit {code}); log: {state_dir.parent / state_dir.name}.log\n")
    if code == 0 and not ok:
        return 1
    return code


def _log_to(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill demo",
        description="The controller on a simulated treadmill with a live terminal view. "
        "Without a terminal it runs a short built-in session and exits.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--config",
        default=None,
        help="config (default: the bundled config/demo.yaml; one with drive.mode: key_relay "
        "runs key-relay mode)",
    )
    which.add_argument(
        "--monitor",
        action="store_true",
        help="key-relay (monitor) mode: the treadmill's own console drives the belt and the Pi "
        "holds its key-circuit relay (the bundled config/monitor-demo.yaml)",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt", "none"),
        default="auto",
        help="MQTT broker on 127.0.0.1 for the telemetry (default: mosquitto if installed, "
        "else amqtt)",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="keep the training program on (stages are then capped by the client's progress)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator random seed")
    parser.add_argument(
        "--port",
        metavar="PATH",
        help="talk to the firmware on this port (the PTY printed by `treadmill sim --avr ELF` "
        "or `--native`) instead of the in-process simulator",
    )
    parser.add_argument(
        "--plain", action="store_true", help="run the built-in session even on a terminal"
    )
    return parser


def demo_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``treadmill demo``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    interactive = not args.plain and sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive:
        handler = logging.StreamHandler(err)
        _log_to(handler)
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return asyncio.run(_demo(args, interactive, out, err))
    except BrokerUnavailableError as exc:
        err.write(f"demo: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()

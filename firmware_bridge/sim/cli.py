"""``treadmill sim``: run the simulated firmware on a pseudo-terminal until SIGINT/SIGTERM.

The first line on stdout is ``PTY <path>``: the port to give the controller (the stable
``--link`` path when one was asked for). Run-time commands are read from stdin, one a line,
and each gets a one-line answer starting with ``OK`` or ``ERR``::

    inject runaway            inject corrupt_bytes 10     inject runaway 1.0 (km/h/s)
    clear runaway             key open                    key closed
    status                    help

``inject disconnect`` unplugs the simulated cable and ``clear disconnect`` plugs it back in
(the new pty is announced with a new ``PTY <path>`` line before the answer);
``inject reboot`` resets the firmware.

``--avr FIRMWARE.elf`` runs the real firmware instead, on an emulated ATmega328P and treadmill
(the simavr harness ``firmware/build/emu/treadmill-emu``, built on first use), and
``--native [BINARY]`` runs the native host build of the firmware's C core. Both speak the same
stdin commands and print the same ``PTY <path>`` line (docs/firmware.md).

The simulator also models the Pi's own belt sensor (the second speed channel), with its own
faults, separate from the firmware's sensor: ``inject belt_sensor_frozen``,
``inject belt_sensor_silent``, ``inject belt_sensor_noisy 20`` (percent jitter and bounce),
and for both channels ``inject belt_slip 30`` (the belt slips 30 % on the driven roller, where
the firmware's sensor is) and ``inject sensor_silent`` (the firmware's sensor). Its pulses
reach a controller that runs the simulator in-process (``serial.port: sim://``, the demo, the
scenarios); ``status`` shows the speed of its last period as ``belt_sensor_kmh``. A controller
in another process cannot receive them: a config with mock pins, this runner's pty as
``serial.port`` and a ``belt_sensor`` section is refused at load (remove the section to run on
one speed channel). Key-relay mode (the console-driven treadmill, ``drive.mode: key_relay``)
is simulated in-process only (docs/firmware.md, "What a runner in another process cannot
simulate").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from firmware_bridge.sim.firmware import InjectedFault, SimConfig, SimFault
from firmware_bridge.sim.physics import PhysicsParams
from firmware_bridge.sim.pty import PtySimulator

__all__ = ["EMU_BINARY", "NATIVE_BINARY", "execute_command", "sim_main"]

_LOG = logging.getLogger(__name__)

#: The firmware sources of this checkout (``firmware/``), next to the Python packages.
FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"
#: The simavr harness that runs the AVR ELF (``make -C firmware/emu``).
EMU_BINARY = FIRMWARE_DIR / "build" / "emu" / "treadmill-emu"
#: The native host build of the firmware's C core (``make -C firmware native``).
NATIVE_BINARY = FIRMWARE_DIR / "build" / "treadmill-native"
#: MC2100 drive: 85 % duty gives the top speed (docs/firmware.md); the ``duty_pct`` of
#: ``status`` is the simulated set-point expressed that way.
_MC2100_TOP_KMH = 12.9
_MC2100_TOP_DUTY_PCT = 85.0

_HELP = (
    "commands: inject FAULT [VALUE] | clear FAULT | key open | key closed | status | help; "
    "faults: " + ", ".join(f.value for f in SimFault)
)


def _parse_fault_arg(text: str) -> InjectedFault:
    """``NAME`` or ``NAME=VALUE`` (VALUE: percent for drop/corrupt, km/h/s for runaway)."""
    name, _, value_text = text.partition("=")
    try:
        fault = SimFault.parse(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if fault in (SimFault.REBOOT, SimFault.DISCONNECT):
        raise argparse.ArgumentTypeError(
            f"--fault {fault.value} is an event, not a state: send `inject {fault.value}` on "
            "stdin while the simulator runs"
        )
    value: float | None = None
    if value_text:
        try:
            value = float(value_text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--fault {text!r}: {value_text!r} is not a number (e.g. corrupt_bytes=10)"
            ) from None
    if fault is SimFault.RUNAWAY:
        return InjectedFault(fault, accel_kmh_s=value)
    return InjectedFault(fault, pct=value)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill sim",
        description="Simulated treadmill firmware on a pseudo-terminal (prints `PTY <path>`).",
    )
    parser.add_argument(
        "--link",
        metavar="PATH",
        help="stable symlink to the pty, like /dev/serial/by-id (re-pointed on re-plug)",
    )
    parser.add_argument(
        "--fault",
        metavar="NAME[=VALUE]",
        action="append",
        type=_parse_fault_arg,
        default=[],
        help="inject at start (repeatable): "
        + ", ".join(f.value for f in SimFault if f not in (SimFault.REBOOT, SimFault.DISCONNECT)),
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--distance-per-pulse-mm",
        type=float,
        default=PhysicsParams().distance_per_pulse_mm,
        help="belt travel per speed-sensor pulse (default 12.5: 20 magnets on a 250.9 mm roller)",
    )
    runner = parser.add_mutually_exclusive_group()
    runner.add_argument(
        "--avr",
        metavar="ELF",
        help="run this firmware ELF on an emulated ATmega328P (simavr) instead of the "
        "Python simulation",
    )
    runner.add_argument(
        "--native",
        metavar="BINARY",
        nargs="?",
        const=str(NATIVE_BINARY),
        help="run the native host build of the firmware's C core (default: "
        "firmware/build/treadmill-native)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default WARNING)",
    )
    return parser


def _status_line(sim: PtySimulator) -> str:
    fw = sim.firmware
    faults = ",".join(sorted(f.value for f in fw.active_faults)) or "none"
    duty_pct = (
        fw.commanded_kmh / _MC2100_TOP_KMH * _MC2100_TOP_DUTY_PCT if fw.motor_enabled else 0.0
    )
    return (
        f"OK status state={fw.state.name.lower()} fault={fw.fault.name.lower()} "
        f"belt_kmh={fw.true_speed_kmh:.3f} duty_pct={duty_pct:.2f} "
        f"motor_enabled={int(fw.motor_enabled)} motor_powered={int(fw.motor_powered)} "
        f"true_kmh={fw.true_speed_kmh:.2f} measured_kmh={fw.measured_kmh:.2f} "
        f"commanded_kmh={fw.commanded_kmh:.2f} key={'closed' if fw.safety_key_closed else 'open'} "
        f"boot_id={fw.boot_id:#010x} cable={'in' if sim.connected else 'out'} "
        f"belt_sensor_kmh={fw.physics.aux_speed_kmh:.2f} injected={faults}"
    )


async def execute_command(sim: PtySimulator, line: str) -> str:
    """Carry out one stdin command; return its one-line answer (``OK ...`` or ``ERR ...``)."""
    words = line.split()
    if not words:
        return ""
    verb = words[0].lower()
    args = words[1:]
    try:
        if verb == "help":
            return f"OK {_HELP}"
        if verb == "status" and not args:
            return _status_line(sim)
        if verb == "key" and len(args) == 1 and args[0].lower() in ("open", "closed"):
            closed = args[0].lower() == "closed"
            sim.set_safety_key(closed)
            return f"OK key {'closed' if closed else 'open'}"
        if verb in ("inject", "clear") and len(args) in (1, 2):
            fault = SimFault.parse(args[0])
            if verb == "clear":
                if len(args) != 1:
                    return f"ERR `clear` takes only a fault name: {_HELP}"
                await sim.clear(fault)
                return f"OK clear {fault.value}"
            value = float(args[1]) if len(args) == 2 else None
            if fault is SimFault.RUNAWAY:
                await sim.inject(fault, accel_kmh_s=value)
            elif value is not None:
                await sim.inject(fault, pct=value)
            else:
                await sim.inject(fault)
            suffix = f" {args[1]}" if len(args) == 2 else ""
            return f"OK inject {fault.value}{suffix}"
    except ValueError as exc:
        return f"ERR {exc}"
    return f"ERR unknown command {line.strip()!r}: {_HELP}"


async def _serve(args: argparse.Namespace, out: TextIO) -> int:
    config = SimConfig(
        physics=PhysicsParams(distance_per_pulse_mm=args.distance_per_pulse_mm),
        faults=tuple(args.fault),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with PtySimulator(config, seed=args.seed, link_path=args.link) as sim:
        out.write(f"PTY {sim.port}\n")
        out.flush()
        async with asyncio.TaskGroup() as tg:
            stdin_task = tg.create_task(_read_commands(sim, out), name="sim-stdin")
            await stop.wait()
            stdin_task.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return 0


async def _read_commands(sim: PtySimulator, out: TextIO) -> None:
    """Answer stdin commands until EOF (then keep running until a signal)."""
    loop = asyncio.get_running_loop()
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (ValueError, OSError, AttributeError):
        mode = 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()):
        # /dev/null, a regular file or no stdin at all: no run-time commands.
        _LOG.info("sim: stdin is not a pipe or terminal: no run-time commands")
        return
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError) as exc:
        # stdin is a regular file, a closed descriptor or absent: no run-time commands.
        _LOG.info("sim: no run-time commands (stdin cannot be watched: %s)", exc)
        return
    while True:
        raw = await reader.readline()
        if not raw:
            return
        was_connected = sim.connected
        answer = await execute_command(sim, raw.decode("utf-8", errors="replace"))
        if sim.connected and not was_connected:
            # A re-plug makes a new pty: say where, before the answer.
            out.write(f"PTY {sim.port}\n")
        if answer:
            out.write(answer + "\n")
            out.flush()


def _ensure_emulator() -> Path:
    """The simavr harness, built with ``make -C firmware/emu`` when missing or out of date."""
    sources = [FIRMWARE_DIR / "emu" / "harness.c", FIRMWARE_DIR / "host" / "belt_model.c"]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    if EMU_BINARY.exists() and EMU_BINARY.stat().st_mtime >= newest:
        return EMU_BINARY
    if not (FIRMWARE_DIR / "emu" / "Makefile").exists():
        raise SystemExit(
            f"treadmill sim --avr: {EMU_BINARY} is missing and there are no firmware sources "
            "to build it from: run it from a checkout of the repository"
        )
    # make from $PATH, on the repository's own Makefile: a developer tool, no outside input.
    done = subprocess.run(  # noqa: S603
        ["make", "-s", "-C", str(FIRMWARE_DIR / "emu")],  # noqa: S607
        stdout=sys.stderr,
        check=False,
    )
    if done.returncode != 0 or not EMU_BINARY.exists():
        raise SystemExit(
            "treadmill sim --avr: building the simavr harness failed (see above); it needs "
            "gcc and the Debian packages simavr libsimavr-dev libelf-dev"
        )
    return EMU_BINARY


def _exec_firmware(argv: list[str]) -> int:
    """Replace this process with a firmware runner (same stdin, stdout, signals)."""
    os.execv(argv[0], argv)  # noqa: S606 - a path the user named on the command line
    return 1  # pragma: no cover - execv does not return


def sim_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``treadmill sim``. Returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.avr is not None or args.native is not None:
        if args.fault or args.link:
            parser.error("--fault and --link work with the Python simulation only")
        per_pulse = ["--distance-per-pulse-mm", str(args.distance_per_pulse_mm)]
        if args.avr is not None:
            elf = Path(args.avr)
            if not elf.is_file():
                parser.error(f"--avr {args.avr}: no such file (build it with `make -C firmware`)")
            return _exec_firmware([str(_ensure_emulator()), *per_pulse, str(elf)])
        native = Path(args.native)
        if not native.is_file():
            parser.error(
                f"--native {args.native}: no such file (build it with `make -C firmware native`)"
            )
        return _exec_firmware([str(native), *per_pulse])
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args, sys.stdout))
    return 0

"""``treadmill sim``: run the simulated firmware on a pseudo-terminal until SIGINT/SIGTERM.

The first line on stdout is ``PTY <path>``: the port to give the controller (the stable
``--link`` path when one was asked for). Run-time commands are read from stdin, one a line,
and each gets a one-line answer starting with ``OK`` or ``ERR``::

    inject runaway            inject corrupt_bytes 10     inject runaway 1.0 (km/h/s)
    clear runaway             key open                    key closed
    status                    help

``inject disconnect`` unplugs the simulated cable and ``clear disconnect`` plugs it back in;
``inject reboot`` resets the firmware.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from typing import TextIO

from firmware_bridge.sim.firmware import InjectedFault, SimConfig, SimFault
from firmware_bridge.sim.physics import PhysicsParams
from firmware_bridge.sim.pty import PtySimulator

__all__ = ["execute_command", "sim_main"]

_LOG = logging.getLogger(__name__)

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
    return (
        f"OK status state={fw.state.name.lower()} fault={fw.fault.name.lower()} "
        f"true_kmh={fw.true_speed_kmh:.2f} measured_kmh={fw.measured_kmh:.2f} "
        f"commanded_kmh={fw.commanded_kmh:.2f} key={'closed' if fw.safety_key_closed else 'open'} "
        f"boot_id={fw.boot_id:#010x} cable={'in' if sim.connected else 'out'} injected={faults}"
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
        answer = await execute_command(sim, raw.decode("utf-8", errors="replace"))
        if answer:
            out.write(answer + "\n")
            out.flush()


def sim_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``treadmill sim``. Returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args, sys.stdout))
    return 0

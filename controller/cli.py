"""The ``treadmill`` console script.

treadmill --version                  the installed version
treadmill run --config PATH          the service (systemd runs this)
treadmill check-config PATH          validate a config file; exit 0 or 78
treadmill sim [...]                  simulated firmware on a pseudo-terminal
treadmill demo                       simulated treadmill with a live terminal view
treadmill scenario FILE [...]        run a scripted session and check expectations
treadmill verify-config PATH         commissioning report for a config on the simulator
treadmill monitor [...]              live view of treadmills from MQTT
treadmill history [...]              training sessions per week
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h

_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald reads the priority prefix (SyslogLevelPrefix)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr; journald format under systemd, timestamps on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    use_journal = fmt == "journal" or (fmt == "auto" and "JOURNAL_STREAM" in os.environ)
    if use_journal:
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.errors import GpioError
    from controller.runtime.service import Service
    from controller.settings.config import ConfigError, load_config

    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    service = Service(config, config_path=path)
    try:
        return asyncio.run(service.run())
    except GpioError as exc:
        logging.getLogger(__name__).critical("%s", exc)
        return 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    from controller.tools.checkconfig import check_config_main

    return check_config_main(Path(args.path), sys.stdout, sys.stderr)


def _cmd_sim(rest: list[str]) -> int:
    from firmware_bridge.sim.cli import sim_main

    return sim_main(rest)


def _cmd_history(rest: list[str]) -> int:
    from controller.tools.history import history_main

    return history_main(rest, out=sys.stdout)


def _cmd_passthrough(name: str, rest: list[str]) -> int:
    if name == "demo":
        from controller.tools.demo import demo_main

        return demo_main(rest)
    if name == "scenario":
        from controller.tools.scenario_cli import scenario_main

        return scenario_main(rest)
    if name == "verify-config":
        from controller.tools.verify import verify_main

        return verify_main(rest)
    if name == "monitor":
        from controller.tools.monitor import monitor_main

        return monitor_main(rest)
    raise AssertionError(name)


PASSTHROUGH = ("sim", "history", "demo", "scenario", "verify-config", "monitor")

#: What each command does, for ``treadmill --help``.
COMMAND_HELP: dict[str, str] = {
    "run": "run the controller service (systemd runs this)",
    "check-config": "validate a config file; exit 0 if valid, 78 if not",
    "demo": "the controller on a simulated treadmill with a live terminal view and MQTT",
    "scenario": "run a scripted session on the simulator and check what must happen",
    "verify-config": "commissioning report: check a config's limits on the simulator",
    "monitor": "live view of one or more treadmills from their MQTT telemetry",
    "history": "training sessions per week and stage progression, per client",
    "sim": "the simulated motor-controller firmware on a pseudo-terminal",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        name, rest = argv[0], argv[1:]
        if name == "sim":
            return _cmd_sim(rest)
        if name == "history":
            return _cmd_history(rest)
        return _cmd_passthrough(name, rest)

    from controller import version

    parser = argparse.ArgumentParser(
        prog="treadmill",
        description="Treadmill controller and safety monitor for backward walking.",
        epilog="Each command takes --help. Try it without hardware: treadmill demo",
    )
    parser.add_argument("--version", action="version", version=f"treadmill {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help=COMMAND_HELP["run"])
    run.add_argument("--config", required=True, help="path to the YAML config")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check-config", help=COMMAND_HELP["check-config"])
    check.add_argument("path")
    check.set_defaults(func=_cmd_check_config)
    for name in ("demo", "scenario", "verify-config", "monitor", "history", "sim"):
        sub.add_parser(name, help=COMMAND_HELP[name], add_help=False)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``treadmill scenario`` command: arguments, runs and exit status."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from controller.errors import ScenarioError, ScenarioRunError

if TYPE_CHECKING:
    from controller.settings.schema import AppConfig
from controller.tools.scenario import EXIT_FAILED, EXIT_INVALID, EXIT_OK, run_scenarios
from controller.tools.scenario_plot import check_plot_available, write_plot
from controller.tools.scenario_results import format_report, write_timeline
from controller.tools.scenario_spec import (
    Scenario,
    default_config_path,
    load_scenario,
    load_scenario_config,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill scenario",
        description="Run scripted sessions on the simulated treadmill and check expectations "
        "(format: docs/scenarios.md). Exit 0 all held, 1 one failed, 2 invalid file.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="scenario YAML, or the name of a bundled scenario (see --list)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the bundled scenarios and where they are"
    )
    parser.add_argument("--config", type=Path, help="config to run on (overrides the file's)")
    parser.add_argument(
        "--timeline",
        type=Path,
        metavar="OUT.jsonl",
        help="write one JSON line per control tick (one FILE only)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="write a speed/time plot (needs matplotlib; one FILE only)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="run up to this many scenarios at once (each has its own simulator; default 1)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the files (and their configs), do not run them",
    )
    parser.add_argument(
        "--virtual-time",
        action="store_true",
        help="run on a virtual clock: idle time costs nothing (the test suite's default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the service at INFO")
    return parser


def scenario_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``treadmill scenario``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        from controller.resources import bundled_scenarios, scenario_dir  # noqa: PLC0415

        library = bundled_scenarios()
        for path in library:
            out.write(f"{path.stem}\n")
        out.write(f"({len(library)} scenarios in {scenario_dir()})\n")
        return EXIT_OK
    if not args.files:
        parser.print_usage(err)
        err.write("treadmill scenario: give a scenario FILE or a bundled name (--list)\n")
        return EXIT_INVALID
    from controller.resources import resolve_scenario  # noqa: PLC0415

    args.files = [resolve_scenario(path) for path in args.files]
    if len(args.files) > 1 and (args.timeline or args.plot):
        err.write("--timeline and --plot take one scenario FILE\n")
        return EXIT_INVALID
    if args.plot is not None:
        problem = check_plot_available()
        if problem is not None:
            err.write(problem + "\n")
            return EXIT_INVALID
    _setup_logging(args.verbose, err)
    loaded: list[tuple[Scenario, AppConfig, str]] = []
    invalid = False
    for path in args.files:
        try:
            scenario = load_scenario(path)
            config = load_scenario_config(scenario, args.config)
        except ScenarioError as exc:
            for line in exc.lines():
                err.write(line + "\n")
            invalid = True
            continue
        source = str(
            args.config
            or (
                scenario.base_dir / scenario.spec.config
                if scenario.spec.config
                else default_config_path()
            )
        )
        loaded.append((scenario, config, source))
    if invalid:
        return EXIT_INVALID
    if args.check:
        for scenario, _config, _source in loaded:
            out.write(f"{scenario.source}: ok\n")
        return EXIT_OK
    if args.jobs < 1:
        err.write(f"--jobs must be at least 1, got {args.jobs}\n")
        return EXIT_INVALID
    batch = run_scenarios(
        [(scenario, config) for scenario, config, _source in loaded],
        jobs=args.jobs,
        config_sources=[source for _scenario, _config, source in loaded],
    )
    if args.virtual_time:
        from controller.tools.virtual_time import run_virtual  # noqa: PLC0415

        results = run_virtual(batch)
    else:
        results = asyncio.run(batch)
    failed = 0
    for (scenario, _config, _source), result in zip(loaded, results, strict=True):
        if isinstance(result, ScenarioRunError):
            err.write(f"{scenario.source}: could not run: {result}\n")
            failed += 1
            continue
        out.write(format_report(result) + "\n")
        if args.timeline is not None:
            write_timeline(result, args.timeline)
            out.write(f"timeline written to {args.timeline}\n")
        if args.plot is not None:
            write_plot(result, args.plot)
            out.write(f"plot written to {args.plot}\n")
        if not result.passed:
            failed += 1
    if len(loaded) > 1:
        out.write(f"{len(loaded) - failed} of {len(loaded)} scenarios passed\n")
    return EXIT_FAILED if failed else EXIT_OK


def _setup_logging(verbose: bool, err: TextIO) -> None:
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)

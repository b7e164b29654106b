"""``treadmill history``: training sessions per ISO week against the weekly goal.

    treadmill history [--config PATH | --db PATH] [--client ID] [--weeks N] [--json]
                      [--plot FILE.png]

Reads the session log read-only (it never creates, migrates or writes it). For each client: one
row per ISO week (Monday to Sunday, local time of the computer running the report) with the
number of sessions, how many lasted the goal's minimum, moving minutes in total and per stage,
and whether the week met the goal (by default at least 3 sessions of at least 10 minutes; more
than 4 sessions or a session over 15 minutes is noted). Then the client's unlocked stage and
where they stand towards the next one.

``python -m controller.tools.history --generate-demo DB`` writes a month of realistic
sessions for three clients into a new file (:mod:`controller.tools.history_demo`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from controller.errors import StoreError
from controller.tools.history_demo import generate_demo
from controller.training.config import TrainingConfig, WeeklyGoalConfig
from controller.training.progression import UnlockStatus, unlock_status
from controller.training.sessions import SessionRecord, iso_z
from controller.training.store import ClientRecord, SessionStore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG, as for the other commands
PLOT_HINT = "pip install 'treadmill-controller[plot]'"
NO_CLIENT = "(no client)"


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class WeekRow:
    """One ISO week of one client's sessions. Minutes are moving minutes."""

    week: str  # "2025-W10"
    monday: date
    sessions: int
    goal_sessions: int  # sessions that lasted at least the goal's minimum
    minutes: float
    stage_minutes: dict[int, float]
    longest_min: float
    goal_met: bool
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "monday": self.monday.isoformat(),
            "sessions": self.sessions,
            "goal_sessions": self.goal_sessions,
            "minutes": round(self.minutes, 1),
            "stage_minutes": {str(k): round(v, 1) for k, v in sorted(self.stage_minutes.items())},
            "longest_min": round(self.longest_min, 1),
            "goal_met": self.goal_met,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ClientReport:
    client_id: str | None
    unlocked_stage: int
    stage_since: datetime | None
    weeks: tuple[WeekRow, ...]
    next_unlock: UnlockStatus | None  # None for sessions without a client
    sessions: tuple[SessionRecord, ...] = ()  # the sessions in the weeks shown (the plot)

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "unlocked_stage": self.unlocked_stage,
            "stage_since_utc": None if self.stage_since is None else iso_z(self.stage_since),
            "weeks": [row.to_json() for row in self.weeks],
            "weeks_goal_met": sum(1 for row in self.weeks if row.goal_met),
            "sessions": sum(row.sessions for row in self.weeks),
            "minutes": round(sum(row.minutes for row in self.weeks), 1),
            "next_unlock": None if self.next_unlock is None else self.next_unlock.to_json(),
        }


def iso_week(day: date) -> tuple[str, date]:
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", day - timedelta(days=weekday - 1)


def local_day(moment: datetime) -> date:
    """The calendar day of ``moment`` in the local time zone of this computer."""
    return moment.astimezone().date()


def weekly_rows(
    sessions: Sequence[SessionRecord],
    *,
    today: date,
    weeks: int,
    goal: WeeklyGoalConfig,
    in_progress: bool = False,
) -> tuple[WeekRow, ...]:
    """One row per ISO week, oldest first, for the ``weeks`` weeks ending with ``today``'s.

    ``in_progress``: ``today`` is the real today, so its week is noted as not over yet.
    """
    _, this_monday = iso_week(today)
    mondays = [this_monday - timedelta(weeks=back) for back in range(weeks - 1, -1, -1)]
    by_monday: dict[date, list[SessionRecord]] = {monday: [] for monday in mondays}
    for record in sessions:
        _, monday = iso_week(local_day(record.start_utc))
        if monday in by_monday:
            by_monday[monday].append(record)
    rows = []
    for monday in mondays:
        week_sessions = by_monday[monday]
        stage_minutes: dict[int, float] = {}
        for record in week_sessions:
            for stage, seconds in record.stage_s:
                stage_minutes[stage] = stage_minutes.get(stage, 0.0) + seconds / 60.0
        goal_sessions = sum(1 for r in week_sessions if r.moving_min >= goal.session_min_min - 1e-9)
        longest = max((r.moving_min for r in week_sessions), default=0.0)
        notes = []
        if len(week_sessions) > goal.sessions_max:
            notes.append(f"{len(week_sessions)} sessions (goal at most {goal.sessions_max})")
        if longest > goal.session_max_min + 0.05:
            notes.append(f"longest {longest:.0f} min (goal at most {goal.session_max_min:g})")
        interrupted = sum(1 for r in week_sessions if r.status.value == "interrupted")
        if interrupted:
            notes.append(f"{interrupted} interrupted")
        faults = sum(len(r.faults) for r in week_sessions)
        if faults:
            notes.append(f"{faults} fault stop{'s' if faults > 1 else ''}")
        if in_progress and monday == this_monday and today.weekday() < 6:
            notes.append(f"week in progress (to {today.strftime('%a')})")
        rows.append(
            WeekRow(
                week=iso_week(monday)[0],
                monday=monday,
                sessions=len(week_sessions),
                goal_sessions=goal_sessions,
                minutes=sum(r.moving_min for r in week_sessions),
                stage_minutes=stage_minutes,
                longest_min=longest,
                goal_met=goal_sessions >= goal.sessions_min,
                notes=tuple(notes),
            )
        )
    return tuple(rows)


def build_reports(
    sessions: Sequence[SessionRecord],
    clients: dict[str, ClientRecord],
    *,
    config: TrainingConfig,
    max_stage: int,
    today: date,
    weeks: int,
    client_id: str | None,
    in_progress: bool = False,
) -> list[ClientReport]:
    """Reports for one client (``client_id``) or every client, plus sessions without one."""
    by_client: dict[str | None, list[SessionRecord]] = {}
    for record in sessions:
        by_client.setdefault(record.client_id, []).append(record)
    if client_id is not None:
        wanted: list[str | None] = [client_id]
    else:
        known = sorted(set(clients) | {c for c in by_client if c is not None})
        wanted = [*known, *([None] if None in by_client else [])]
    reports = []
    for wanted_id in wanted:
        history = by_client.get(wanted_id, [])
        rows = weekly_rows(
            history, today=today, weeks=weeks, goal=config.goal, in_progress=in_progress
        )
        shown = tuple(
            sorted(
                (
                    r
                    for r in history
                    if rows
                    and rows[0].monday
                    <= local_day(r.start_utc)
                    <= rows[-1].monday + timedelta(days=6)
                ),
                key=lambda r: r.start_utc,
            )
        )
        if wanted_id is None:
            reports.append(ClientReport(None, 1, None, rows, None, shown))
            continue
        client = clients.get(wanted_id)
        unlocked = 1 if client is None else min(client.unlocked_stage, max_stage)
        status = unlock_status(history, unlocked, config, max_stage=max_stage)
        reports.append(
            ClientReport(
                wanted_id,
                unlocked,
                None if client is None else client.updated_utc,
                rows,
                status,
                shown,
            )
        )
    return reports


# --------------------------------------------------------------------------- rendering


def _minutes(value: float) -> str:
    return f"{value:.0f}" if value >= 0.5 else ("0" if value == 0 else "<1")


def render_table(
    reports: Sequence[ClientReport], *, goal: WeeklyGoalConfig, max_stage: int, source: str
) -> str:
    lines: list[str] = []
    stage_columns = list(range(1, max_stage + 1))
    header = (
        f"{'week':<9} {'sessions':>8} {f'≥{goal.session_min_min:g} min':>9} {'minutes':>7} "
        + " ".join(f"{f'S{s} min':>6}" for s in stage_columns)
        + "  goal"
    )
    for report in reports:
        if lines:
            lines.append("")
        if report.client_id is None:
            lines.append(f"Sessions without a client {NO_CLIENT}")
        else:
            since = (
                ""
                if report.stage_since is None
                else f" (since {local_day(report.stage_since).isoformat()})"
            )
            lines.append(
                f"Client {report.client_id}: unlocked stage {report.unlocked_stage}{since}"
            )
        lines.append(header)
        for row in report.weeks:
            cells = " ".join(f"{_minutes(row.stage_minutes.get(s, 0.0)):>6}" for s in stage_columns)
            mark = "✓" if row.goal_met else "✗"
            note = f"  {'; '.join(row.notes)}" if row.notes else ""
            lines.append(
                f"{row.week:<9} {row.sessions:>8} {row.goal_sessions:>9} "
                f"{_minutes(row.minutes):>7} {cells}  {mark:^4}{note}".rstrip()
            )
        met = sum(1 for row in report.weeks if row.goal_met)
        lines.append(
            f"goal met in {met} of {len(report.weeks)} weeks "
            f"({sum(r.sessions for r in report.weeks)} sessions, "
            f"{_minutes(sum(r.minutes for r in report.weeks))} min)"
        )
        status = report.next_unlock
        if status is None:
            continue
        if status.next_stage is None:
            lines.append(f"at the highest stage ({status.current_stage})")
            continue
        verdict = "all criteria met" if status.all_met else "not yet"
        lines.append(f"towards stage {status.next_stage}: {verdict}")
        for criterion in status.criteria:
            mark = "✓" if criterion.met else "✗"
            lines.append(
                f"  {mark} {criterion.name}: {criterion.actual:g}, needs {criterion.required:g}"
            )
        if status.all_met and status.needs_trainer:
            lines.append(
                f"  -> a trainer unlocks stage {status.next_stage} at the machine "
                "(trainer action, belt at rest, client assigned)"
            )
    lines.append("")
    lines.append(
        f"Goal: {goal.sessions_min}-{goal.sessions_max} sessions a week of "
        f"{goal.session_min_min:g}-{goal.session_max_min:g} min; a week meets it with at least "
        f"{goal.sessions_min} sessions"
    )
    lines.append(
        f"of {goal.session_min_min:g} min or more. Minutes are moving minutes. Log: {source}"
    )
    return "\n".join(lines) + "\n"


def render_json(
    reports: Sequence[ClientReport],
    *,
    goal: WeeklyGoalConfig,
    today: date,
    weeks: int,
    source: str,
) -> str:
    payload = {
        "source": source,
        "today": today.isoformat(),
        "weeks": weeks,
        "goal": goal.model_dump(),
        "clients": [report.to_json() for report in reports],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def write_plot(
    reports: Sequence[ClientReport], path: Path, *, goal: WeeklyGoalConfig, max_stage: int
) -> None:
    """One row per client: sessions per week against the goal (left), speed per session
    (right: average and top speed, the average coloured by the session's highest stage).

    The goal is a number of sessions of a minimum length, so the left panel counts sessions:
    those that reached the goal's minimum length, and the shorter ones on top, with the
    goal's session count as the line. Raises :class:`ImportError` when matplotlib is missing
    (``pip install 'treadmill-controller[plot]'``).
    """
    import matplotlib  # noqa: PLC0415 -- optional dependency, imported only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- optional dependency, see above
    from matplotlib.dates import DateFormatter  # noqa: PLC0415 -- see above

    panels = max(len(reports), 1)
    figure, axes = plt.subplots(
        panels, 2, figsize=(12, 2.9 * panels + 0.8), squeeze=False, width_ratios=(1, 1.4)
    )
    for row_axes, report in zip(axes, reports, strict=False):
        left, right = row_axes
        name = report.client_id or NO_CLIENT
        labels = [row.week[5:] for row in report.weeks]
        qualifying = [row.goal_sessions for row in report.weeks]
        shorter = [row.sessions - row.goal_sessions for row in report.weeks]
        left.bar(labels, qualifying, color="C0",
                 label=f"sessions of {goal.session_min_min:g} min or more")  # fmt: skip
        left.bar(labels, shorter, bottom=qualifying, color="C0", alpha=0.3, hatch="//",
                 label="shorter sessions")  # fmt: skip
        left.axhline(goal.sessions_min, linestyle="--", linewidth=1, color="grey")
        left.text(
            -0.45, goal.sessions_min,
            f"goal: {goal.sessions_min} of {goal.session_min_min:g} min or more",
            va="bottom", ha="left", fontsize="small", color="dimgrey",
        )  # fmt: skip
        totals = [row.sessions for row in report.weeks]
        top = max([goal.sessions_max, *totals]) + 1.5
        left.set_ylim(0, top)
        for index, row in enumerate(report.weeks):
            mark = "✓" if row.goal_met else ""
            left.text(index, totals[index] + 0.05, mark, ha="center", va="bottom", color="green")
        left.set_title(f"{name}: sessions per week", fontsize="medium")
        left.set_ylabel("sessions")
        left.yaxis.get_major_locator().set_params(integer=True)
        left.legend(loc="upper left", fontsize="x-small", framealpha=0.8)
        # speed progression, one point per session
        days = [local_day(r.start_utc) for r in report.sessions]
        if report.sessions:
            right.plot(days, [r.max_kmh for r in report.sessions], color="grey", linewidth=0.8,
                       marker=".", label="top speed")  # fmt: skip
            right.plot(days, [r.avg_kmh for r in report.sessions], color="black",
                       linewidth=1.2, label="average speed")  # fmt: skip
            for stage in range(1, max_stage + 1):
                picked = [r for r in report.sessions if r.highest_stage == stage]
                if picked:
                    right.scatter(
                        [local_day(r.start_utc) for r in picked],
                        [r.avg_kmh for r in picked],
                        color=f"C{stage - 1}", zorder=3, s=28, label=f"stage {stage}",
                    )  # fmt: skip
            right.set_ylim(0, max(r.max_kmh for r in report.sessions) * 1.25 + 0.1)
            right.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small")
        else:
            right.text(0.5, 0.5, "no sessions", transform=right.transAxes, ha="center")
        if report.weeks:
            first = report.weeks[0].monday
            right.set_xlim(first - timedelta(days=0.5), report.weeks[-1].monday + timedelta(6.5))
        right.xaxis.set_major_formatter(DateFormatter("%d %b"))  # type: ignore[no-untyped-call]  # matplotlib is untyped here
        right.set_title(
            f"{name}: speed per session (unlocked stage {report.unlocked_stage})",
            fontsize="medium",
        )
        right.set_ylabel("km/h")
        right.tick_params(axis="x", labelsize="small")
        right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill history",
        description="Training sessions per ISO week against the weekly goal, per client.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the controller's config file (default /etc/treadmill/treadmill.yaml): the log is "
        "state_dir/training.db_file, with this machine's goal and unlock rules",
    )
    source.add_argument(
        "--db", type=Path, default=None, help="a session log file (default rules and goal)"
    )
    parser.add_argument("--client", default=None, help="only this client id")
    parser.add_argument(
        "--weeks", type=int, default=8, help="how many ISO weeks, ending with this one (8)"
    )
    parser.add_argument(
        "--until",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="the last week shown is the one holding this day (default today)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="also draw a bar chart"
    )
    return parser


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None


@dataclass(frozen=True)
class _Source:
    db_path: Path
    config: TrainingConfig
    max_stage: int


def _resolve_source(args: argparse.Namespace, err: TextIO) -> _Source | int:
    if args.db is not None:
        config = TrainingConfig()
        return _Source(args.db, config, len(config.unlock) + 1)
    from controller.settings.config import ConfigError, load_config_report  # noqa: PLC0415 -- only needed with --config

    path = args.config if args.config is not None else Path("/etc/treadmill/treadmill.yaml")
    try:
        app = load_config_report(path).config  # its warnings are about running, not reports
    except ConfigError as exc:
        for line in exc.lines():
            err.write(line + "\n")
        return EXIT_CONFIG
    return _Source(
        Path(app.state_dir) / app.training.db_file, app.training, len(app.stage_configs())
    )


def history_main(
    argv: list[str] | None,
    *,
    out: TextIO,
    err: TextIO | None = None,
    today: date | None = None,
) -> int:
    """``treadmill history``. Returns the exit status (0 ok, 1 log unreadable, 2 usage,
    78 config refused). ``today`` stands in for the clock (``--until`` overrides both)."""
    err = sys.stderr if err is None else err
    parser = _parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)  # --help to out, usage errors to err
    except SystemExit as exc:  # argparse has printed the usage or help message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if not 1 <= args.weeks <= 520:
        err.write(f"--weeks {args.weeks}: use 1 to 520\n")
        return EXIT_USAGE
    resolved = _resolve_source(args, err)
    if isinstance(resolved, int):
        return resolved
    try:
        store = SessionStore.open(resolved.db_path, read_only=True)
    except StoreError as exc:
        err.write(f"{exc}\n")
        return EXIT_FAILED
    try:
        sessions = store.sessions()
        clients = store.clients()
    except StoreError as exc:
        err.write(f"{exc}\n")
        return EXIT_FAILED
    finally:
        store.close()
    if args.until is not None:
        day = args.until
    else:
        day = today if today is not None else datetime.now().astimezone().date()
    reports = build_reports(
        sessions,
        clients,
        config=resolved.config,
        max_stage=resolved.max_stage,
        today=day,
        weeks=args.weeks,
        client_id=args.client,
        in_progress=args.until is None,
    )
    if args.client is not None and not any(r.client_id == args.client for r in reports):
        err.write(f"no client {args.client!r} in {resolved.db_path}\n")
        return EXIT_FAILED
    if (
        args.client is not None
        and args.client not in clients
        and not any(s.client_id == args.client for s in sessions)
    ):
        err.write(f"client {args.client!r} has no sessions and no stage in {resolved.db_path}\n")
        return EXIT_FAILED
    source = str(resolved.db_path)
    goal = resolved.config.goal
    if args.json:
        out.write(render_json(reports, goal=goal, today=day, weeks=args.weeks, source=source))
    else:
        out.write(render_table(reports, goal=goal, max_stage=resolved.max_stage, source=source))
    if args.plot is not None:
        try:
            write_plot(reports, args.plot, goal=goal, max_stage=resolved.max_stage)
        except ImportError:
            err.write(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}\n")
            return EXIT_FAILED
        except OSError as exc:
            err.write(f"--plot: cannot write {args.plot}: {exc}\n")
            return EXIT_FAILED
        if not args.json:
            out.write(f"plot written to {args.plot}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- demo data


def main(argv: list[str] | None = None) -> int:
    """``python -m controller.tools.history --generate-demo DB`` (history_demo.generate_demo)."""
    parser = argparse.ArgumentParser(prog="python -m controller.tools.history")
    parser.add_argument("--generate-demo", type=Path, metavar="DB", required=True)
    parser.add_argument("--today", type=date.fromisoformat, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    today = args.today if args.today is not None else datetime.now().astimezone().date()
    try:
        count = generate_demo(args.generate_demo, today=today, seed=args.seed)
    except (FileExistsError, StoreError) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_FAILED
    sys.stdout.write(f"{count} sessions written to {args.generate_demo}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

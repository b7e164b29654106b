"""``treadmill history``: the weekly table, JSON, the plot, and the generated demo month."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.tools.history import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    history_main,
    weekly_rows,
)
from controller.tools.history_demo import generate_demo
from controller.training.config import WeeklyGoalConfig
from controller.training.store import ClientRecord, SessionStore
from tests.training.helpers import record

TODAY = date(2025, 3, 30)  # a Sunday: the report's last week is 2025-W13 (24-30 March)
GOAL = WeeklyGoalConfig()


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def run(argv: list[str], today: date = TODAY) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = history_main(argv, out=out, err=err, today=today)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "sessions.sqlite3"
    count = generate_demo(path, today=TODAY, seed=7)
    assert 30 <= count <= 50  # three clients, a month
    return path


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    """Hand-made sessions with known figures for client c1 in weeks 12 and 13."""
    path = tmp_path / "sessions.sqlite3"
    monday_w12 = date(2025, 3, 17)
    monday_w13 = date(2025, 3, 24)
    sessions = [
        record(session_id="a", start=at(monday_w12), moving_min=12),
        record(session_id="b", start=at(monday_w12 + timedelta(2)), moving_min=10),
        record(session_id="c", start=at(monday_w12 + timedelta(4)), moving_min=11, stage=2),
        record(session_id="d", start=at(monday_w13), moving_min=9),
        record(session_id="e", start=at(monday_w13 + timedelta(1)), moving_min=20),
        record(session_id="f", start=at(monday_w13 + timedelta(3)), moving_min=10),
        record(session_id="x", client_id=None, start=at(monday_w13), moving_min=3),
    ]
    store = SessionStore.open(path)
    store.write(sessions=sessions, clients=[ClientRecord("c1", 2, at(monday_w12))])
    store.close()
    return path


def test_weekly_rows_count_goal_sessions_and_note_excess() -> None:
    monday = date(2025, 3, 24)
    sessions = [
        record(session_id=str(i), start=at(monday + timedelta(i)), moving_min=minutes)
        for i, minutes in enumerate([10, 12, 9.9, 16, 11])
    ]
    (row,) = weekly_rows(sessions, today=TODAY, weeks=1, goal=GOAL)
    assert row.week == "2025-W13"
    assert row.sessions == 5
    assert row.goal_sessions == 4
    assert row.goal_met
    assert row.minutes == pytest.approx(58.9)
    assert row.notes == ("5 sessions (goal at most 4)", "longest 16 min (goal at most 15)")


def test_weekly_rows_include_empty_weeks_oldest_first() -> None:
    rows = weekly_rows([], today=TODAY, weeks=3, goal=GOAL)
    assert [row.week for row in rows] == ["2025-W11", "2025-W12", "2025-W13"]
    assert not any(row.goal_met for row in rows)


def test_table_for_known_sessions(small_db: Path) -> None:
    status, out, err = run(["--db", str(small_db), "--weeks", "2", "--client", "c1"])
    assert (status, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0] == "Client c1: unlocked stage 2 (since 2025-03-17)"
    assert lines[1].split() == [
        "week", "sessions", "≥10", "min", "minutes", "S1", "min", "S2", "min", "S3", "min",
        "S4", "min", "goal",
    ]  # fmt: skip
    assert lines[2].split() == ["2025-W12", "3", "3", "33", "22", "11", "0", "0", "✓"]
    assert lines[3].split()[:9] == ["2025-W13", "3", "2", "39", "39", "0", "0", "0", "✗"]
    assert lines[3].endswith("longest 20 min (goal at most 15)")
    assert lines[4] == "goal met in 1 of 2 weeks (6 sessions, 72 min)"
    assert lines[5] == "towards stage 3: not yet"
    assert "✗ sessions at stage 2 (at least 5 min): 1, needs 6" in out  # not "1 of 6"


def test_all_clients_and_sessions_without_a_client(small_db: Path) -> None:
    status, out, _ = run(["--db", str(small_db), "--weeks", "1"])
    assert status == EXIT_OK
    assert "Client c1: unlocked stage 2" in out
    assert "Sessions without a client (no client)" in out


def test_json_output_matches_the_table(small_db: Path) -> None:
    status, out, _ = run(["--db", str(small_db), "--weeks", "2", "--client", "c1", "--json"])
    assert status == EXIT_OK
    payload = json.loads(out)
    assert payload["today"] == "2025-03-30"
    assert payload["goal"]["sessions_min"] == 3
    (client,) = payload["clients"]
    assert client["client_id"] == "c1"
    assert client["unlocked_stage"] == 2
    assert [w["week"] for w in client["weeks"]] == ["2025-W12", "2025-W13"]
    assert [w["goal_met"] for w in client["weeks"]] == [True, False]
    assert client["weeks"][0]["stage_minutes"] == {"1": 22.0, "2": 11.0}
    assert client["sessions"] == 6
    assert client["next_unlock"]["next_stage"] == 3
    assert client["next_unlock"]["all_met"] is False


def test_generated_month_reads_as_a_plausible_program(demo_db: Path) -> None:
    status, out, _ = run(["--db", str(demo_db), "--weeks", "4", "--json"])
    assert status == EXIT_OK
    clients = {c["client_id"]: c for c in json.loads(out)["clients"]}
    assert set(clients) == {"c101", "c102", "c103"}
    # the steady client met the goal every week and was unlocked to stage 2 by a trainer
    assert clients["c101"]["weeks_goal_met"] == 4
    assert clients["c101"]["unlocked_stage"] == 2
    # the irregular client did not, and stays at stage 1
    assert clients["c102"]["unlocked_stage"] == 1
    assert clients["c102"]["weeks_goal_met"] < 4
    assert any("fault stop" in note for w in clients["c102"]["weeks"] for note in w["notes"])
    # every session of the month is in one of the four weeks
    store = SessionStore.open(demo_db, read_only=True)
    sessions = store.sessions()
    log = store.unlock_log()
    store.close()
    assert sum(c["sessions"] for c in clients.values()) == len(sessions)
    assert all(s.status.value == "complete" for s in sessions)
    assert {(e.client_id, e.to_stage, e.source) for e in log} >= {("c101", 2, "trainer_key")}
    # no session at stages 1 and 2 ran longer than their 15 min session length
    capped = [s for s in sessions if s.highest_stage <= 2]
    assert max(s.moving_s for s in capped) <= 15 * 60 + 1
    # the client who tried stage 3 before it was unlocked was held at stage 2 by the cap
    c103 = [s for s in sessions if s.client_id == "c103"]
    first_stage3 = min(s.start_utc for s in c103 if s.highest_stage == 3)
    unlocked_3 = min(e.utc for e in log if (e.client_id, e.to_stage) == ("c103", 3))
    assert unlocked_3 < first_stage3


def test_table_of_the_generated_month(demo_db: Path) -> None:
    status, out, _ = run(["--db", str(demo_db), "--weeks", "4", "--client", "c101"])
    assert status == EXIT_OK
    assert out.startswith("Client c101: unlocked stage 2")
    assert [line.split()[0] for line in out.splitlines()[2:6]] == [
        "2025-W10",
        "2025-W11",
        "2025-W12",
        "2025-W13",
    ]


def test_history_never_changes_the_log(demo_db: Path) -> None:
    before = hashlib.sha256(demo_db.read_bytes()).hexdigest()
    assert run(["--db", str(demo_db)])[0] == EXIT_OK
    assert hashlib.sha256(demo_db.read_bytes()).hexdigest() == before


def test_plot_writes_a_png(small_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "weeks.png"
    status, out, _ = run(["--db", str(small_db), "--plot", str(target)])
    assert status == EXIT_OK
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {target}" in out


def test_plot_without_matplotlib_says_how_to_install_it(
    small_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    status, _, err = run(["--db", str(small_db), "--plot", str(tmp_path / "x.png")])
    assert status == EXIT_FAILED
    assert "pip install 'treadmill-controller[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_errors_are_clear(small_db: Path, tmp_path: Path) -> None:
    status, _, err = run(["--db", str(tmp_path / "missing.sqlite3")])
    assert status == EXIT_FAILED
    assert "no session log at" in err
    assert not (tmp_path / "missing.sqlite3").exists()
    status, _, err = run(["--db", str(small_db), "--client", "nobody"])
    assert status == EXIT_FAILED
    assert "'nobody'" in err
    status, _, err = run(["--db", str(small_db), "--weeks", "0"])
    assert status == EXIT_USAGE
    assert "--weeks 0" in err
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (2)")
    raw.close()
    status, _, err = run(["--db", str(newer)])
    assert status == EXIT_FAILED
    assert "schema v2 is newer than this controller (v1)" in err


def test_config_gives_the_log_path_and_the_rules(small_db: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "config" / "demo.yaml").read_text()
    assert "state_dir: /tmp/treadmill-demo" in text
    config = tmp_path / "treadmill.yaml"
    config.write_text(
        text.replace("state_dir: /tmp/treadmill-demo", f"state_dir: {small_db.parent}")
    )
    status, out, err = run(["--config", str(config), "--client", "c1", "--weeks", "1"])
    assert (status, err) == (EXIT_OK, "")
    assert out.startswith("Client c1: unlocked stage 2")
    assert f"Log: {small_db}" in out


def test_a_refused_config_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("treadmill: [\n")
    status, _, err = run(["--config", str(config)])
    assert status == 78
    assert str(config) in err


def test_config_and_db_are_exclusive(small_db: Path) -> None:
    status, _, err = run(["--db", str(small_db), "--config", "/etc/x.yaml"])
    assert status == EXIT_USAGE
    assert "not allowed with argument" in err


def test_generate_demo_refuses_an_existing_file(small_db: Path) -> None:
    with pytest.raises(FileExistsError, match="new file only"):
        generate_demo(small_db, today=TODAY)


def test_until_picks_the_last_week_and_the_current_week_is_marked(small_db: Path) -> None:
    wednesday = date(2025, 3, 26)
    status, out, _ = run(["--db", str(small_db), "--weeks", "1", "--client", "c1"], wednesday)
    assert status == EXIT_OK
    assert "week in progress (to Wed)" in out
    status, out, _ = run(
        ["--db", str(small_db), "--weeks", "1", "--client", "c1", "--until", "2025-03-21"],
        wednesday,
    )
    assert status == EXIT_OK
    assert out.splitlines()[2].split()[:2] == ["2025-W12", "3"]
    assert "in progress" not in out
    status, _, err = run(["--db", str(small_db), "--until", "21.03.2025"])
    assert status == EXIT_USAGE
    assert "'21.03.2025' is not a date: use YYYY-MM-DD" in err


def test_report_carries_the_sessions_of_the_weeks_shown_for_the_speed_plot() -> None:
    """The speed-progression panel plots each session of the weeks shown, in order, and no
    session after the report's last week (``--until``)."""
    from controller.tools.history import build_reports
    from controller.training.config import TrainingConfig

    monday = date(2025, 3, 24)
    sessions = [
        record(session_id="old", start=at(monday - timedelta(weeks=3))),
        record(session_id="b", start=at(monday + timedelta(2))),
        record(session_id="a", start=at(monday)),
        record(session_id="later", start=at(monday + timedelta(weeks=1))),
    ]
    (report,) = build_reports(
        sessions,
        {"c1": ClientRecord("c1", 1, at(monday))},
        config=TrainingConfig(),
        max_stage=4,
        today=monday + timedelta(days=6),
        weeks=2,
        client_id="c1",
    )
    assert [r.session_id for r in report.sessions] == ["a", "b"]
    assert all(r.avg_kmh > 0 for r in report.sessions)

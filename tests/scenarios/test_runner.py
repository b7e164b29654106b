"""The scenario runner itself: file validation, exit status, report, timeline and plot."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.tools.scenario import EXIT_FAILED, EXIT_INVALID, EXIT_OK, ScenarioError
from controller.tools.scenario_cli import scenario_main
from controller.tools.scenario_results import (
    StepRecord,
    TimelineRow,
    evaluate,
    find_stops,
    measure_stop,
)
from controller.tools.scenario_spec import ExpectSpec, load_scenario_text

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "config" / "demo.yaml"

SHORT_RUN = """\
# Rules: SR-START-1
stage: 1
duration_s: 2.5
steps:
  - {at_s: 0.0, grip: both}
  - {at_s: 0.1, press: start}
  - {at_s: 1.5, press: stop}
expect:
  - {from_s: 0.1, to_s: 0.3, event: started}
  - {at_s: 1.4, belt_kmh_at_least: 5.0}      # wrong on purpose: stage 1 walks at 0.5 km/h
  - {at_s: 1.4, state: running}
"""


def _write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = scenario_main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ running


@pytest.mark.slow
def test_wrong_expectation_exits_1_and_writes_timeline_and_plot(tmp_path: Path) -> None:
    path = _write(tmp_path, SHORT_RUN)
    timeline = tmp_path / "out" / "timeline.jsonl"
    plot = tmp_path / "out" / "speed.png"
    code, out, _err = _main(
        [str(path), "--config", str(DEMO_CONFIG), "--timeline", str(timeline), "--plot", str(plot)]
    )
    assert code == EXIT_FAILED, out
    assert "FAIL  at 1.4 s belt_kmh_at_least 5.0: belt 0." in out
    assert "PASS  at 1.4 s state running" in out
    assert "PASS  0.1-0.3 s event started" in out
    assert "result: FAIL (1 of 3 expectations failed)" in out
    # The stop press is reported with its cause, time and distance.
    assert "stop_button: trigger 'press stop' at 1.5" in out
    assert "distance" in out
    rows = [json.loads(line) for line in timeline.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 80, "about 50 rows a second for 2.5 s"
    assert set(rows[0]) >= {
        "t_s",
        "belt_kmh",
        "measured_kmh",
        "commanded_kmh",
        "target_kmh",
        "stage",
        "state",
        "grip",
        "safety_key",
        "estop",
        "fault",
        "events",
    }
    kinds = [event["kind"] for row in rows for event in row["events"]]
    assert "started" in kinds
    assert "stopped" in kinds
    times = [row["t_s"] for row in rows]
    assert times == sorted(times)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_holding_expectations_exit_0(tmp_path: Path) -> None:
    text = SHORT_RUN.replace("belt_kmh_at_least: 5.0", "belt_kmh_at_most: 0.6")
    code, out, _err = _main([str(_write(tmp_path, text)), "--config", str(DEMO_CONFIG)])
    assert code == EXIT_OK, out
    assert "result: PASS (3/3 expectations held)" in out


# ------------------------------------------------------------------ validation

INVALID = """\
stage: 1
duration_s: 5
steps:
  - {at_s: 0.0, grip: bothh}
  - {at_s: 1.0, press: start, grip: none}
  - {at_s: 9.0, press: stop}
  - {at_s: 1.0, sim_fault: runaways}
expect:
  - {at_s: 1.0, event: grip_lots}
  - {from_s: 1.0, to_s: 2.0, no_event: grip_lots}
  - {at_s: 1.0, fault: overspeeed}
  - {at_s: 1.0, belt_kmh_at_most: 2, colour: red}
"""


def test_invalid_file_exits_2_with_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, INVALID, "bad.yaml")
    code, out, err = _main([str(path)])
    assert code == EXIT_INVALID
    assert out == ""
    lines = err.splitlines()
    assert f"{path}:4:" in err
    assert "steps[0].grip" in err
    assert "bothh" in err
    assert any(line.startswith(f"{path}:5:") and "exactly one action" in line for line in lines)
    assert any(line.startswith(f"{path}:9:") and "time span" in line for line in lines)
    assert any(line.startswith(f"{path}:12:") and "unknown key 'colour'" in line for line in lines)


def test_invalid_file_exit_status_from_the_console_script(tmp_path: Path) -> None:
    path = _write(tmp_path, INVALID, "bad.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "scenario", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == EXIT_INVALID, done.stderr
    assert f"{path}:4:" in done.stderr


def _issues(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "s.yaml", base_dir=REPO)
    return caught.value.lines()


def test_second_pass_names_unknown_kinds_faults_and_late_steps() -> None:
    lines = _issues(
        "duration_s: 5\n"
        "steps:\n"
        "  - {at_s: 9.0, press: stop}\n"
        "  - {at_s: 1.0, sim_fault: runaways}\n"
        "  - {at_s: 1.0, sim_fault: reboot, value: 3}\n"
        "expect:\n"
        "  - {from_s: 1.0, to_s: 2.0, no_event: grip_lots}\n"
        "  - {at_s: 1.0, fault: overspeeed}\n"
    )
    text = "\n".join(lines)
    assert "s.yaml:3:" in text
    assert "after the end of the scenario" in text
    assert "s.yaml:4:" in text
    assert "did you mean 'runaway'" in text
    assert "s.yaml:5:" in text
    assert "takes no value" in text
    assert "s.yaml:7:" in text
    assert "did you mean 'grip_lost'" in text
    assert "s.yaml:8:" in text
    assert "did you mean 'overspeed'" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps: []\n", "required key 'duration_s' is missing"),
        ("duration_s: 5\nduration_s: 6\n", "duplicate key 'duration_s'"),
        ("duration_s: -1\n", "duration_s"),
        ("duration_s: 5\nexpect:\n  - {at_s: 1, stop_within_s: 2}\n", "after_event"),
        ("duration_s: 5\nexpect:\n  - {from_s: 3, to_s: 1, event: fault}\n", "before from_s"),
        ("duration_s: 5\nsteps:\n  - {at_s: 1, client: abc}\n", "training: true"),
        ("duration_s: 5\nsimulator: {self_check: false}\n", "did you mean 'self_checks'"),
        ("- a\n- b\n", "a scenario is a mapping"),
        ("duration_s: 5\nsteps: [\n", "YAML syntax error"),
    ],
)
def test_invalid_scenarios_are_explained(text: str, expected: str) -> None:
    joined = "\n".join(_issues(text))
    assert expected in joined
    assert joined.startswith("s.yaml:")


def test_stage_by_name_and_unknown_stage() -> None:
    from controller.settings.config import load_config
    from controller.tools.scenario_spec import resolve_stage

    config = load_config(DEMO_CONFIG)
    by_name = load_scenario_text("duration_s: 1\nstage: Backward Jog\n", "s.yaml", base_dir=REPO)
    assert resolve_stage(by_name, config) == 4
    unknown = load_scenario_text("duration_s: 1\nstage: sprint\n", "s.yaml", base_dir=REPO)
    with pytest.raises(ScenarioError, match=r"s\.yaml:2:\d+: stage: no stage named 'sprint'"):
        resolve_stage(unknown, config)


def test_missing_config_file_is_an_invalid_scenario(tmp_path: Path) -> None:
    path = _write(tmp_path, "duration_s: 1\nconfig: nowhere.yaml\n")
    code, _out, err = _main([str(path), "--check"])
    assert code == EXIT_INVALID
    assert f"{path}:2:" in err
    assert "does not exist" in err


def test_missing_reload_file_is_an_invalid_scenario(tmp_path: Path) -> None:
    path = _write(tmp_path, "duration_s: 2\nsteps:\n  - {at_s: 1, reload: nowhere.yaml}\n")
    code, out, err = _main([str(path), "--config", str(DEMO_CONFIG), "--check"])
    assert code == EXIT_INVALID
    assert out == ""
    assert f"{path}:3:" in err
    assert "steps[0].reload" in err
    assert "nowhere.yaml" in err
    assert "does not exist" in err


def test_invalid_reload_file_is_an_invalid_scenario_with_its_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEMO_CONFIG.read_text().replace("max_kmh: 2.0 ", "max_kmh: -2.0", 1))
    path = _write(tmp_path, "duration_s: 2\nsteps:\n  - {at_s: 1, reload: broken.yaml}\n")
    code, _out, err = _main([str(path), "--config", str(DEMO_CONFIG), "--check"])
    assert code == EXIT_INVALID
    assert "is not a valid config; its problems follow" in err
    assert f"{broken}:" in err
    assert "max_kmh" in err


def test_check_only_validates(tmp_path: Path) -> None:
    path = _write(tmp_path, SHORT_RUN)
    code, out, _err = _main([str(path), "--config", str(DEMO_CONFIG), "--check"])
    assert code == EXIT_OK
    assert out.strip() == f"{path}: ok"


# ------------------------------------------------------------------ stop measurement


def _row(t_s: float, belt_kmh: float, events: tuple[tuple[str, str], ...] = ()) -> TimelineRow:
    return TimelineRow(
        t_s=t_s,
        belt_kmh=belt_kmh,
        measured_kmh=belt_kmh,
        commanded_kmh=belt_kmh,
        target_kmh=2.0,
        stage=1,
        state="running",
        grip="both",
        safety_key=True,
        estop=False,
        fault=None,
        motion="SetSpeed",
        events=events,
    )


def test_stop_is_measured_from_the_provoking_step_to_rest() -> None:
    # 3.6 km/h (1 m/s) ramping down to 0 over 1 s from t = 1.2 s: 0.5 m, plus 0.2 s at 1 m/s
    # between the step (1.0 s) and the decision (1.2 s).
    rows = [_row(t / 10, 3.6) for t in range(13)]
    rows[12] = _row(1.2, 3.6, (("transition", "running -> faulted (grip_lost)"),))
    rows += [_row(1.2 + k / 10, max(0.0, 3.6 - 0.36 * k)) for k in range(1, 12)]
    steps = [StepRecord(1.0, 1.0, "grip", "grip none")]
    (stop,) = find_stops(rows, steps)
    assert stop.cause == "grip_lost"
    assert stop.trigger == "grip none"
    assert stop.trigger_s == pytest.approx(1.0)
    assert stop.decision_s == pytest.approx(1.2)
    assert stop.rest_s == pytest.approx(2.2)
    assert stop.stop_time_s == pytest.approx(1.2)
    assert stop.distance_m == pytest.approx(0.7, abs=0.01)


def test_stop_not_reaching_rest_is_reported() -> None:
    rows = [_row(t / 10, 2.0) for t in range(20)]
    rest_s, distance_m, speed_kmh, peak_kmh = measure_stop(rows, 0.5)
    assert rest_s is None
    assert speed_kmh == pytest.approx(2.0)
    assert peak_kmh == pytest.approx(2.0)
    assert distance_m == pytest.approx(2.0 / 3.6 * 1.4, abs=0.01)


TRAINING_RUN = """\
stage: 1
duration_s: 2
training: true
steps:
  - {at_s: 0.2, client: alice}
  - {at_s: 0.5, press: stage_up}
expect:
  - {from_s: 0.2, to_s: 0.4, event: client_assigned, message_contains: alice}
  - {from_s: 0.5, to_s: 0.7, event: command_rejected, message_contains: above the allowed}
  - {at_s: 1.9, stage: 1}
"""


@pytest.mark.slow
def test_training_steps_run_with_the_training_program(tmp_path: Path) -> None:
    """A new client's stage cap is 1: raising the stage is refused."""
    path = _write(tmp_path, TRAINING_RUN)
    code, out, _err = _main([str(path), "--config", str(DEMO_CONFIG)])
    assert code == EXIT_OK, out
    assert "result: PASS (3/3 expectations held)" in out


@pytest.mark.slow
async def test_plot_marks_the_stage_limit_and_the_grip_grace_window(tmp_path: Path) -> None:
    """The grace window starts when the grip is released at a grip-watched stage and lasts
    the stage's grace time (the fault comes at its end); the limit follows the stage."""
    from controller.tools.scenario import run_scenario
    from controller.tools.scenario_plot import (
        grace_windows,
        grouped_events,
        stage_limit_series,
        write_plot,
    )
    from controller.tools.scenario_spec import load_scenario, load_scenario_config

    path = REPO / "scenarios" / "grip_loss_stage2_stops_after_longer_grace.yaml"
    scenario = load_scenario(path)
    result = await run_scenario(scenario, load_scenario_config(scenario))
    stage2 = result.stages[1]
    (window,) = grace_windows(result)
    start_s, end_s, stage = window
    assert stage == 2
    released = next(s.done_s for s in result.steps if s.text == "grip none")
    assert abs(start_s - released) < 0.1
    assert abs((end_s - start_s) - stage2.grip_grace_ms / 1000) < 0.05
    fault_s = next(t for t, kinds, _alarm in grouped_events(result) if "fault" in kinds)
    assert abs(fault_s - end_s) < 0.1  # the grip-loss fault at the end of the window
    limits = stage_limit_series(result)
    assert max(limits) == min(stage2.max_kmh, result.machine_max_kmh)
    grouped = grouped_events(result)
    assert any({"grip_lost", "fault"} <= set(kinds) for _t, kinds, _a in grouped)  # one label
    plot = tmp_path / "plot.png"
    write_plot(result, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("at_s", "passes"), [(1.0, True), (1.9, True), (2.2, False), (5.0, False)])
def test_at_expectations_after_the_service_died_fail(at_s: float, passes: bool) -> None:
    """The service died at 1.9 s (its last tick): an ``at`` check later than that says the
    service was gone instead of passing on the last row."""
    rows = [_row(t / 10, 1.0) for t in range(20)]
    result = evaluate(0, ExpectSpec(at_s=at_s, state="running"), rows, rows)
    assert result.passed is passes, result
    if not passes:
        assert "the service was gone (last tick at 1.90 s)" in result.observed

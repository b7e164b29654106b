"""The plot of a scenario run (matplotlib, optional)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Final

from controller.rules.model import GripLossAction

if TYPE_CHECKING:
    pass
from controller.tools.scenario_results import ScenarioResult


def check_plot_available() -> str | None:
    """None when matplotlib can be imported, else what to install."""
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional extra, probed only
    except ImportError:
        return "--plot needs matplotlib, which is not installed: .venv/bin/pip install -e '.[plot]'"
    return None


_MARKED_EVENTS: Final = frozenset(
    {
        "fault",
        "started",
        "stopped",
        "grip_lost",
        "grip_warning",
        "command_rejected",
        "start_refused",
        "reset_refused",
        "fault_cleared",
        "link_lost",
        "link_restored",
    }
)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


_GRIP_HANDS: Final = {"both": 2, "left": 1, "right": 1, "none": 0}


_LABEL_GROUP_S: Final = 0.25  # events closer together than this share one label


def stage_limit_series(result: ScenarioResult) -> list[float]:
    """The stage's speed limit at every row (nan where the stage is unknown)."""
    limits: list[float] = []
    for row in result.rows:
        if 1 <= row.stage <= len(result.stages):
            limits.append(min(result.stages[row.stage - 1].max_kmh, result.machine_max_kmh))
        else:
            limits.append(math.nan)
    return limits


def grace_windows(result: ScenarioResult) -> list[tuple[float, float, int]]:
    """``(start_s, end_s, stage)`` of every grip grace window: the required grip was released
    while the belt ran at a stage that watches grip; its action is due at the end
    (SR-GRIP-*). A window ends early when the grip comes back."""
    windows: list[tuple[float, float, int]] = []
    held_before = True
    open_at: tuple[float, float, int] | None = None
    for row in result.rows:
        stage = result.stages[row.stage - 1] if 1 <= row.stage <= len(result.stages) else None
        watched = (
            stage is not None
            and stage.grip_hands_required > 0
            and stage.on_grip_loss is not GripLossAction.NONE
        )
        held = not watched or _GRIP_HANDS.get(row.grip, 0) >= (
            stage.grip_hands_required if stage is not None else 0
        )
        if open_at is not None and (held or row.t_s >= open_at[1]):
            windows.append((open_at[0], min(row.t_s, open_at[1]), open_at[2]))
            open_at = None
        if stage is not None and held_before and not held and row.state == "running":
            open_at = (row.t_s, row.t_s + stage.grip_grace_ms / 1000.0, stage.number)
        held_before = held
    if open_at is not None:
        windows.append(open_at)
    return windows


def grouped_events(result: ScenarioResult) -> list[tuple[float, list[str], bool]]:
    """Marked events as ``(t_s, kinds, alarm)``; events within 0.25 s share one label."""
    groups: list[tuple[float, list[str], bool]] = []
    for row in result.rows:
        for kind, _message in row.events:
            if kind not in _MARKED_EVENTS:
                continue
            alarm = kind in ("fault", "grip_lost")
            if groups and row.t_s - groups[-1][0] < _LABEL_GROUP_S:
                t_s, kinds, was_alarm = groups[-1]
                if kind not in kinds:
                    kinds.append(kind)
                groups[-1] = (t_s, kinds, was_alarm or alarm)
            else:
                groups.append((row.t_s, [kind], alarm))
    return groups


def write_plot(result: ScenarioResult, path: Path) -> None:
    """PNG of true, measured, commanded and target speed against time, with the stage limit,
    the grip grace windows, the events (labels above the plot) and the steps (below)."""
    import matplotlib  # noqa: PLC0415 - optional extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result.rows
    t = [r.t_s for r in rows]
    figure, axes = plt.subplots(figsize=(12, 6), dpi=100)
    try:
        limits = stage_limit_series(result)
        axes.plot(t, [_nan(r.belt_kmh) for r in rows], label="belt (true)", linewidth=2.0)
        axes.plot(t, [_nan(r.measured_kmh) for r in rows], label="measured", linewidth=1.0)
        axes.plot(t, [r.commanded_kmh for r in rows], label="commanded", linestyle="--")
        axes.plot(t, [r.target_kmh for r in rows], label="target", linestyle=":")
        axes.step(t, limits, where="post", color="black", linewidth=1.2, alpha=0.6,
                  label="stage limit")  # fmt: skip
        finite_limits = [v for v in limits if math.isfinite(v)]
        top = (
            max(
                [0.5, *finite_limits, *(v for r in rows for v in (r.belt_kmh or 0.0, r.target_kmh))]
            )
            * 1.12
        )
        for index, (start_s, end_s, stage) in enumerate(grace_windows(result)):
            axes.axvspan(
                start_s,
                end_s,
                color="orange",
                alpha=0.2,
                label="grip grace window" if index == 0 else None,
            )
            axes.text(
                (start_s + end_s) / 2, top * 0.5, f"grace\nstage {stage}", fontsize=7,
                ha="center", va="center", color="darkorange",
            )  # fmt: skip
        for t_s, kinds, alarm in grouped_events(result):
            colour = "red" if alarm else "dimgrey"
            axes.axvline(t_s, color=colour, alpha=0.4, linewidth=0.8)
            # Above the plot area, rotated: labels never cover the curves or each other.
            axes.annotate(
                ", ".join(kinds), xy=(t_s, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, 3), textcoords="offset points", rotation=60, fontsize=7,
                color=colour, ha="left", va="bottom", annotation_clip=False,
            )  # fmt: skip
        step_groups: list[tuple[float, list[str]]] = []
        for step in result.steps:
            axes.axvline(step.done_s, color="green", alpha=0.25, linewidth=0.6)
            if step_groups and step.done_s - step_groups[-1][0] < _LABEL_GROUP_S:
                step_groups[-1][1].append(step.text)
            else:
                step_groups.append((step.done_s, [step.text]))
        for done_s, texts in step_groups:
            axes.text(
                done_s,
                top * 0.02,
                " " + "; ".join(texts),
                rotation=90,
                fontsize=6,
                color="darkgreen",
                va="bottom",
                ha="right",
            )
        axes.set_ylim(0, top)
        axes.set_xlim(min(t, default=0.0), max(t, default=1.0))
        axes.set_xlabel("time (s)")
        axes.set_ylabel("speed (km/h)")
        verdict = "PASS" if result.passed else "FAIL"
        figure.suptitle(f"{result.scenario.name} ({verdict})", y=0.99)
        # The legend beside the plot, never over the curves or the event labels.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        axes.grid(alpha=0.3)
        figure.tight_layout(rect=(0, 0, 1, 0.93))
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)

"""Run every benchmark, print the table, write the figures as JSON.

    python -m bench                 # full run (about 2 h on a 2-core x86 box)
    python -m bench --quick         # smoke run: a few trials of everything (about a minute)
    python -m bench --only loop --conditions healthy --loop-s 60
    python -m bench --update-doc    # full run, then rewrite the table in docs/performance.md
    python -m bench --doc-from a.json b.json   # no run: the table from saved runs, merged

Each benchmark runs the real ``treadmill run`` process against the simulated firmware on a
pseudo-terminal (see bench/rig.py) and measures at the firmware's end of the wire. The method
and the figures of the last full run are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.conditions import CONDITIONS, broker_condition
from bench.floor import floor_runs
from bench.loop import LoopRun, loop_run, startup_runs
from bench.reaction import (
    TrialSet,
    bench_stage1_edit,
    edge_trials,
    grip_trials,
    open_power_chain,
    remote_stop_trials,
)
from bench.rig import REPO, Rig, RigOptions
from bench.stats import summary

__all__ = ["GOALS", "main"]

RESULTS_DIR = REPO / "bench" / "results"
DOC_PATH = REPO / "docs" / "performance.md"
DOC_BEGIN = "<!-- bench table: begin (written by python -m bench --update-doc) -->"
DOC_END = "<!-- bench table: end -->"
STAGE1_GRACE_MS = 300  # config/demo.yaml, stages[0].grip.grace_ms
STAGE1_START_KMH = 0.5  # config/demo.yaml, stages[0].start_kmh
LOOP_TARGET_KMH = 2.0  # stage 1's maximum: a steady session at the top of stage 1
FLOOR_S = 60.0  # per wake pattern of the platform floor (bench/floor.py)


@dataclass(frozen=True)
class Goal:
    """A target figure: ``metric`` (a key of a summary) at most ``limit`` ``unit``."""

    metric: str
    limit: float
    unit: str


GOALS: dict[str, tuple[Goal, ...]] = {
    "reaction": (Goal("p99", 5.0, "ms"), Goal("max", 20.0, "ms")),
    "remote_stop": (Goal("p99", 100.0, "ms"),),
    "loop_lateness": (Goal("p99", 2.0, "ms"),),
    "missed_ticks": (Goal("count", 0, "ticks"),),
    # CPU of one core, per broker condition. Healthy: the goal. Down: a dead broker must not
    # cost more than a healthy one. Flooded: 2,000 junk commands a second are parsed up to the
    # intake limit and dropped beyond it; this bound is the stated price of that flood.
    "cpu": (Goal("pct_of_core", 2.0, "%"),),
    "cpu_down": (Goal("pct_of_core", 2.0, "%"),),
    "cpu_flooded": (Goal("pct_of_core", 15.0, "%"),),
    "rss": (Goal("peak", 60.0, "MiB"),),
    "startup": (Goal("max", 1500.0, "ms"),),
}


@dataclass(frozen=True)
class Plan:
    quick: bool
    reaction_conditions: tuple[str, ...]
    loop_conditions: tuple[str, ...]
    grip_trials: int
    edge_trials: int
    remote_stop_trials: int
    loop_s: float
    loop_target_kmh: float
    startup_runs: int
    flood_rate: float
    only: frozenset[str]
    seed: int


def _plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    conditions = tuple(args.conditions.split(",")) if args.conditions else None
    for name in conditions or ():
        if name not in CONDITIONS:
            raise SystemExit(f"--conditions: unknown {name!r}; use {', '.join(CONDITIONS)}")
    return Plan(
        quick=quick,
        reaction_conditions=conditions or ("healthy", "flooded", "down"),
        loop_conditions=conditions or ("healthy", "flooded", "down"),
        grip_trials=args.grip_trials or (3 if quick else 1000),
        edge_trials=args.edge_trials or (2 if quick else 300),
        remote_stop_trials=args.remote_stop_trials or (2 if quick else 300),
        loop_s=args.loop_s or (5.0 if quick else 300.0),
        loop_target_kmh=0.8 if quick else LOOP_TARGET_KMH,
        startup_runs=args.startup_runs or (2 if quick else 10),
        flood_rate=args.flood_rate,
        only=frozenset(args.only.split(",")) if args.only else frozenset(),
        seed=args.seed,
    )


def _wanted(plan: Plan, part: str) -> bool:
    return not plan.only or part in plan.only


def _trialset_json(trials: TrialSet) -> dict[str, Any]:
    return {
        "latency_ms": summary(trials.latencies_ms),
        "rtt_ms": summary(trials.rtt_ms),
        "failures": trials.failures[:20],
        "failure_count": len(trials.failures),
        "elapsed_s": round(trials.elapsed_s, 1),
        "samples_ms": [round(v, 3) for v in trials.latencies_ms],
    }


async def _reaction(plan: Plan, condition: str, workdir: Path) -> dict[str, Any]:
    rng = random.Random(plan.seed)  # noqa: S311 - trial phases, not cryptography
    out: dict[str, Any] = {}
    async with broker_condition(
        condition, workdir / f"broker-{condition}-reaction", flood_rate_per_s=plan.flood_rate
    ) as env:
        options = RigOptions(mqtt=env.mqtt, edit=bench_stage1_edit, seed=plan.seed)
        async with Rig(options) as rig:
            sys.stderr.write(f"[{condition}] reaction trials\n")
            grip = await grip_trials(
                rig,
                plan.grip_trials,
                grace_ms=STAGE1_GRACE_MS,
                start_kmh=STAGE1_START_KMH,
                rng=rng,
            )
            estop = await edge_trials(
                rig,
                plan.edge_trials,
                command="estop pressed",
                hardware=open_power_chain,
                start_kmh=STAGE1_START_KMH,
                rng=rng,
                label="estop",
            )
            key = await edge_trials(
                rig,
                plan.edge_trials,
                command="key removed",
                hardware=open_power_chain,
                start_kmh=STAGE1_START_KMH,
                rng=rng,
                label="key",
            )
            if env.stop_sender is not None and plan.remote_stop_trials > 0:
                stop = await remote_stop_trials(
                    rig,
                    plan.remote_stop_trials,
                    sender=env.stop_sender,
                    topic="treadmill/demo/cmd/stop",
                    start_kmh=STAGE1_START_KMH,
                    rng=rng,
                )
                out["remote_stop"] = _trialset_json(stop)
            state = await rig.status()
            out["grip_release"] = _trialset_json(grip)
            out["estop"] = _trialset_json(estop)
            out["safety_key"] = _trialset_json(key)
            out["loop_during_trials"] = state["link"]["loop"]
            out["mqtt"] = state["link"].get("mqtt")
            out["service_log_lines"] = rig.service.line_count
    if env.flooder:
        out["flooder"] = env.flooder
    return out


async def _loop(plan: Plan, condition: str, workdir: Path) -> dict[str, Any]:
    async with broker_condition(
        condition, workdir / f"broker-{condition}-loop", flood_rate_per_s=plan.flood_rate
    ) as env:
        sys.stderr.write(f"[{condition}] loop, CPU and memory for {plan.loop_s:.0f} s\n")
        run: LoopRun = await loop_run(
            RigOptions(mqtt=env.mqtt, training=True, seed=plan.seed),
            duration_s=plan.loop_s,
            target_kmh=plan.loop_target_kmh,
        )
    out = asdict(run)
    if env.flooder:
        out["flooder"] = env.flooder
    return out


async def _startup(plan: Plan, workdir: Path) -> dict[str, Any]:
    async with broker_condition("healthy", workdir / "broker-startup") as env:
        sys.stderr.write(f"[healthy] start-up to READY=1, {plan.startup_runs} runs\n")
        times = await startup_runs(RigOptions(mqtt=env.mqtt, training=True), plan.startup_runs)
    return {"ready_ms": summary(times), "samples_ms": [round(t, 1) for t in times]}


def _decoder(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The codec's own benchmark (bench/decoder_throughput.py), run as its own process."""
    if not (REPO / "bench" / "decoder_throughput.py").exists():
        return {"error": "bench/decoder_throughput.py is missing"}
    sys.stderr.write("decoder throughput (python -m bench.decoder_throughput)\n")
    json_path = workdir / "decoder.json"
    argv = [sys.executable, "-m", "bench.decoder_throughput", "--json", str(json_path)]
    if plan.quick:
        argv += ["--frames", "10000", "--repeat", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False, timeout=1800)
    result: dict[str, Any] = {"argv": argv[1:], "exit": done.returncode}
    try:
        result["result"] = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        result["output"] = done.stdout[-4000:]
        result["stderr"] = done.stderr[-2000:]
    return result


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


def _verdict(value: float, goal: Goal) -> str:
    if math.isnan(value):
        return "n/a"
    if value <= goal.limit:
        return "met"
    return f"MISSED by {value - goal.limit:.2f} {goal.unit}"


def _rows(results: dict[str, Any]) -> list[list[str]]:
    """Table rows: figure, condition, p50, p99, max, goal, verdict."""
    rows: list[list[str]] = []
    nan = math.nan

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.2f}"
        return str(value)

    for condition, block in results.get("reaction", {}).items():
        for name, title in (
            ("grip_release", "grip release: grace end -> STOP (ms)"),
            ("estop", "e-stop edge -> ESTOP (ms)"),
            ("safety_key", "safety key edge -> ESTOP (ms)"),
        ):
            if name not in block:
                continue
            lat = block[name]["latency_ms"]
            rtt = block[name]["rtt_ms"]
            p99, mx = lat.get("p99", nan), lat.get("max", nan)
            verdicts = [
                f"p99 {_verdict(p99, GOALS['reaction'][0])}",
                f"max {_verdict(mx, GOALS['reaction'][1])}",
            ]
            rows.append(
                [
                    title + f" n={lat.get('n', 0)}",
                    condition,
                    fmt(lat.get("p50", nan)),
                    fmt(p99),
                    fmt(mx),
                    "p99<=5, max<=20",
                    ", ".join(verdicts),
                ]
            )
            rows.append(
                [
                    "  socket round trip of the command (ms)",
                    condition,
                    fmt(rtt.get("p50", nan)),
                    fmt(rtt.get("p99", nan)),
                    fmt(rtt.get("max", nan)),
                    "",
                    "",
                ]
            )
        if "remote_stop" in block:
            lat = block["remote_stop"]["latency_ms"]
            p99 = lat.get("p99", nan)
            rows.append(
                [
                    f"remote cmd/stop: publish -> STOP (ms) n={lat.get('n', 0)}",
                    condition,
                    fmt(lat.get("p50", nan)),
                    fmt(p99),
                    fmt(lat.get("max", nan)),
                    "p99<=100",
                    _verdict(p99, GOALS["remote_stop"][0]),
                ]
            )
    for condition, run in results.get("loop", {}).items():
        cpu_goal = GOALS.get(f"cpu_{condition}", GOALS["cpu"])[0]
        loop = run["loop"]
        p99 = float(loop["lateness_p99_ms"])
        rows.append(
            [
                f"loop lateness, {run['duration_s']:.0f} s (ms)",
                condition,
                fmt(float(loop["lateness_p50_ms"])),
                fmt(p99),
                fmt(float(loop["lateness_max_ms"])),
                "p99<=2",
                _verdict(p99, GOALS["loop_lateness"][0]),
            ]
        )
        wire = run["wire_interval_ms"]
        rows.append(
            [
                "  SET_SPEED spacing at the firmware (ms)",
                condition,
                fmt(wire.get("p50", nan)),
                fmt(wire.get("p99", nan)),
                fmt(wire.get("max", nan)),
                "",
                f"{run['wire_gaps_over_30ms']} gaps > 30 ms",
            ]
        )
        rows.append(
            [
                "missed ticks",
                condition,
                "",
                "",
                str(run["missed_ticks"]),
                "0",
                _verdict(float(run["missed_ticks"]), GOALS["missed_ticks"][0]),
            ]
        )
        rows.append(
            [
                "CPU, % of one core",
                condition,
                "",
                "",
                fmt(float(run["cpu_pct_of_core"])),
                f"<={cpu_goal.limit:g}",
                _verdict(float(run["cpu_pct_of_core"]), cpu_goal),
            ]
        )
        peak_mib = run["rss_peak_kb"] / 1024
        rows.append(
            [
                "peak RSS, VmHWM (MiB)",
                condition,
                "",
                "",
                fmt(peak_mib),
                "<=60",
                _verdict(peak_mib, GOALS["rss"][0]),
            ]
        )
    rows += _floor_rows(results)
    decoder = results.get("decoder", {}).get("result")
    if isinstance(decoder, dict) and "decode_frames_per_s" in decoder:
        rows.append(
            [
                "decoder: STATUS frames/s (x the 115200 baud line)",
                "-",
                "",
                "",
                f"{decoder['decode_frames_per_s']} ({decoder.get('ratio_to_line')}x)",
                f">={decoder.get('goal_ratio')}x",
                "met" if decoder.get("meets_goal") else "MISSED",
            ]
        )
    if "startup" in results:
        ready = results["startup"]["ready_ms"]
        mx = ready.get("max", nan)
        rows.append(
            [
                f"start -> READY=1 (ms) n={ready.get('n', 0)}",
                "healthy",
                fmt(ready.get("p50", nan)),
                fmt(ready.get("p99", nan)),
                fmt(mx),
                "<=1500",
                _verdict(mx, GOALS["startup"][0]),
            ]
        )
    return rows


def _floor_rows(results: dict[str, Any]) -> list[list[str]]:
    """The platform floor (bench/floor.py), and the service's CPU above it: context, no goal."""
    floor = results.get("floor")
    if not isinstance(floor, dict):
        return []
    rows: list[list[str]] = []
    titles = {
        "sleep": "floor: time.sleep at 50 Hz, no event loop (CPU %)",
        "tick": "floor: asyncio loop, 50 Hz alarm, no work (CPU %)",
        "tick_and_frames": "floor: same + 50 Hz frames on a pty (CPU %)",
    }
    for pattern, title in titles.items():
        if pattern in floor:
            pct = float(floor[pattern]["cpu_pct_of_core"])
            rows.append([title, "-", "", "", f"{pct:.2f}", "", "context"])
    base = floor.get("tick_and_frames")
    for condition, run in results.get("loop", {}).items():
        if base is not None and condition != "flooded":
            above = float(run["cpu_pct_of_core"]) - float(base["cpu_pct_of_core"])
            rows.append(
                [
                    "  service CPU above that floor (%)",
                    condition,
                    "",
                    "",
                    f"{above:.2f}",
                    "",
                    "context",
                ]
            )
    return rows


def _table(rows: Sequence[Sequence[str]]) -> str:
    header = ["figure", "condition", "p50", "p99", "max", "goal", "verdict"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


async def run(plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if plan.quick else "full",
            "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": _machine(),
            "loadavg_start": os.getloadavg(),
            "plan": asdict(plan) | {"only": sorted(plan.only)},
        }
    }
    with tempfile.TemporaryDirectory(prefix="treadmill-bench-") as tmp:
        workdir = Path(tmp)
        if _wanted(plan, "reaction"):
            results["reaction"] = {}
            for condition in plan.reaction_conditions:
                results["reaction"][condition] = await _reaction(plan, condition, workdir)
        if _wanted(plan, "loop"):
            results["loop"] = {}
            for condition in plan.loop_conditions:
                results["loop"][condition] = await _loop(plan, condition, workdir)
        if _wanted(plan, "floor"):
            sys.stderr.write("platform floor: empty processes that wake like the service\n")
            results["floor"] = await floor_runs(min(plan.loop_s, FLOOR_S))
        if _wanted(plan, "startup"):
            results["startup"] = await _startup(plan, workdir)
        if _wanted(plan, "decoder"):
            results["decoder"] = await asyncio.to_thread(_decoder, plan, workdir)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    results["table"] = _rows(results)
    return results


def merge_results(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs (e.g. subsets) as one: later runs win per condition and per part."""
    merged: dict[str, Any] = {"meta": {"runs": [run["meta"] for run in runs]}}
    for run in runs:
        for part in ("reaction", "loop"):
            if part in run:
                merged.setdefault(part, {}).update(run[part])
        for part in ("startup", "decoder", "floor"):
            if part in run:
                merged[part] = run[part]
    merged["table"] = _rows(merged)
    return merged


def _run_line(meta: dict[str, Any]) -> str:
    machine = meta.get("machine", {})
    plan = meta.get("plan", {})
    start = meta.get("loadavg_start") or [math.nan] * 3
    end = meta.get("loadavg_end") or [math.nan] * 3
    only = ",".join(plan.get("only") or []) or "everything"
    counts = (
        f"{plan.get('grip_trials', '?')} grip, {plan.get('edge_trials', '?')} e-stop and key, "
        f"{plan.get('remote_stop_trials', '?')} remote-stop trials per condition, loops of "
        f"{plan.get('loop_s', '?')} s, {plan.get('startup_runs', '?')} start-ups"
    )
    return (
        f"{meta.get('started_utc', '?')}, {meta.get('mode', '?')} run of {only} ({counts}) "
        f"(reaction: {', '.join(plan.get('reaction_conditions') or []) or '-'}; loop: "
        f"{', '.join(plan.get('loop_conditions') or []) or '-'}), "
        f"{meta.get('elapsed_s', 0) / 60:.0f} min, commit {machine.get('commit', '?')}; "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, Linux "
        f"{machine.get('kernel', '?')}, CPython {machine.get('python', '?')}; load average "
        f"(1/5/15 min) {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f} at the start, "
        f"{end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f} at the end"
    )


def markdown_table(results: dict[str, Any]) -> str:
    """The figures as the Markdown block of docs/performance.md, with how they were run."""
    metas = results["meta"].get("runs", [results["meta"]])
    lines = ["Generated by `python -m bench` from:", ""]
    lines += [f"- {_run_line(meta)}" for meta in metas]
    lines += [
        "",
        "| figure | condition | p50 | p99 | max | goal | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["table"]:
        cells = [str(cell).strip().replace("|", "/") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_doc(results: dict[str, Any], path: Path = DOC_PATH) -> None:
    """Replace the block between DOC_BEGIN and DOC_END in ``path`` with the figures."""
    text = path.read_text()
    try:
        head, rest = text.split(DOC_BEGIN, 1)
        _old, tail = rest.split(DOC_END, 1)
    except ValueError as exc:
        msg = f"{path}: the markers {DOC_BEGIN!r} and {DOC_END!r} are missing"
        raise SystemExit(msg) from exc
    path.write_text(f"{head}{DOC_BEGIN}\n{markdown_table(results)}\n{DOC_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few trials of everything")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/...)")
    parser.add_argument("--only", help="comma list of: reaction, loop, floor, startup, decoder")
    parser.add_argument("--conditions", help=f"comma list of: {', '.join(CONDITIONS)}")
    parser.add_argument("--grip-trials", type=int)
    parser.add_argument("--edge-trials", type=int, help="e-stop and safety-key trials each")
    parser.add_argument(
        "--remote-stop-trials", type=int, help="cmd/stop trials (conditions with a broker)"
    )
    parser.add_argument("--loop-s", type=float, help="seconds of steady running per condition")
    parser.add_argument("--startup-runs", type=int)
    parser.add_argument("--flood-rate", type=float, default=2000.0, help="commands per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--update-doc", action="store_true", help="rewrite the table in docs/performance.md"
    )
    parser.add_argument(
        "--doc-from",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no run: merge these saved runs (later ones win) into docs/performance.md",
    )
    args = parser.parse_args(argv)
    if args.doc_from:
        merged = merge_results([json.loads(path.read_text()) for path in args.doc_from])
        update_doc(merged)
        print(_table(merged["table"]))
        print(f"\n{DOC_PATH} updated from {', '.join(map(str, args.doc_from))}")
        return 0
    plan = _plan(args)
    default_name = "quick.json" if plan.quick else "latest.json"
    out_path: Path = args.out or RESULTS_DIR / default_name
    results = asyncio.run(run(plan))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    print(_table(results["table"]))
    if "decoder" in results:
        print("\ndecoder throughput:", json.dumps(results["decoder"].get("result"))[:500])
    failures = sum(
        block[name]["failure_count"]
        for block in results.get("reaction", {}).values()
        for name in ("grip_release", "estop", "safety_key", "remote_stop")
        if name in block
    )
    print(f"\n{failures} failed trial(s); figures written to {out_path}")
    if args.update_doc:
        update_doc(results)
        print(f"{DOC_PATH} updated")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

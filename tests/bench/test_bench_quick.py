"""The benchmark scripts keep working: ``python -m bench --quick`` runs end to end.

No timing is asserted here (the figures depend on the machine and its load); only that every
benchmark ran, produced its figures, and that no trial failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_bench_quick_runs_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = json.loads(out.read_text())
    for condition in ("healthy", "flooded", "down"):
        block = results["reaction"][condition]
        names = ["grip_release", "estop", "safety_key"]
        if condition != "down":  # a remote stop needs a broker
            names.append("remote_stop")
        for name in names:
            assert block[name]["failure_count"] == 0, block[name]["failures"]
            assert block[name]["latency_ms"]["n"] >= 2, block[name]
    assert results["reaction"]["flooded"]["mqtt"]["commands_rejected"] > 0
    for condition in ("healthy", "flooded", "down"):
        run = results["loop"][condition]
        assert run["ticks"] > 0
        assert run["cpu_s"] >= 0
        assert run["rss_peak_kb"] > 0
        assert run["loop"]["ticks"] > 0
    for pattern in ("sleep", "tick", "tick_and_frames"):
        assert results["floor"][pattern]["cpu_pct_of_core"] >= 0, results["floor"]
    assert results["floor"]["tick_and_frames"]["frames_written"] > 0
    assert "floor: asyncio loop" in done.stdout
    assert results["startup"]["ready_ms"]["n"] == 2
    assert results["decoder"]["exit"] == 0, results["decoder"]
    assert "figure" in done.stdout
    assert "start -> READY=1" in done.stdout


@pytest.mark.timeout(120)
def test_bench_tick_cpu_runs_and_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.tick_cpu", "--ticks", "100", "--repeat", "1", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run = json.loads(done.stdout[: done.stdout.rindex("]") + 1])[0]
    assert run["ticks"] >= 100
    assert run["tick_us"] > 0
    assert run["process_us"] >= run["tick_us"]
    assert {"gc0_per_1000_ticks", "gc1_cpu_us_max", "blocks_per_tick"} <= set(run)

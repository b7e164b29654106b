"""The table block of docs/performance.md is written from saved runs (no benchmark runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.run_all import DOC_BEGIN, DOC_END, DOC_PATH, merge_results, update_doc


def run(condition: str, p99_ms: float, commit: str) -> dict[str, Any]:
    latency = {"n": 10, "p50": 1.0, "p99": p99_ms, "max": p99_ms}
    trials = {"latency_ms": latency, "rtt_ms": latency, "failure_count": 0}
    return {
        "meta": {
            "started_utc": "2026-12-01T15:00:00+00:00",
            "mode": "full",
            "elapsed_s": 600.0,
            "machine": {"commit": commit, "cpu": "x86", "cores": 2},
            "loadavg_start": [0.1, 0.2, 0.3],
            "loadavg_end": [0.4, 0.5, 0.6],
            "plan": {"only": ["reaction"], "reaction_conditions": [condition]},
        },
        "reaction": {
            condition: {
                "grip_release": trials,
                "estop": trials,
                "safety_key": trials,
                "remote_stop": trials,
            }
        },
    }


def test_doc_has_the_markers() -> None:
    text = DOC_PATH.read_text()
    assert text.count(DOC_BEGIN) == 1
    assert text.count(DOC_END) == 1
    assert text.index(DOC_BEGIN) < text.index(DOC_END)


def test_saved_runs_merge_into_the_doc_block(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nbefore\n{DOC_BEGIN}\nold table\n{DOC_END}\nafter\n")
    merged = merge_results([run("flooded", 9.0, "aaa1111"), run("down", 3.0, "bbb2222")])
    update_doc(merged, doc)
    text = doc.read_text()
    assert "old table" not in text
    assert text.startswith("# Performance\n\nbefore\n")
    assert text.endswith(f"{DOC_END}\nafter\n")
    assert "commit aaa1111" in text
    assert "commit bbb2222" in text
    assert "load average (1/5/15 min) 0.10/0.20/0.30 at the start" in text
    rows = [line for line in text.splitlines() if line.startswith("| grip release")]
    assert len(rows) == 2
    assert "| flooded | 1.00 | 9.00 | 9.00 |" in rows[0]
    assert "p99 MISSED by 4.00 ms, max met" in rows[0]
    assert "| down | 1.00 | 3.00 | 3.00 |" in rows[1]
    assert rows[1].endswith("| p99 met, max met |")
    assert any(line.startswith("| remote cmd/stop") for line in text.splitlines())


def test_a_doc_without_markers_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n")
    with pytest.raises(SystemExit, match="markers"):
        update_doc(merge_results([run("down", 1.0, "c")]), doc)

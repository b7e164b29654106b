"""The decoder benchmark runs, checks what it decoded and reports its figures."""

from __future__ import annotations

import json
from pathlib import Path

from bench.decoder_throughput import build_stream, main, measure


def test_stream_decodes_to_the_frames_it_was_built_with() -> None:
    data, expected = build_stream(frames=500, garbage_every=3, seed=4)
    _, count = measure(data, chunk=7)
    assert count == expected == 500


def test_benchmark_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    rc = main(["--frames", "2000", "--repeat", "1", "--json", str(out)])
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["frames_decoded"] == results["frames"] == 2000
    assert results["status_frame_bytes"] == 23
    assert results["line_frames_per_s"] == round(11_520 / 23, 1)
    assert rc == (0 if results["meets_goal"] else 2)  # speed depends on the machine's load
    assert results["decode_frames_per_s"] > 0

"""Throughput of the firmware-link codec against the capacity of the serial line.

Decodes a long stream of STATUS frames with some garbage mixed in (corrupted frames, random
bytes, truncated frames), fed in serial-read-sized chunks, and compares the decoded frames per
second with what a 115200 baud line can carry (11 520 bytes/s / 23 bytes per STATUS frame,
about 500 frames/s). Also times encoding SET_SPEED frames, the host's per-tick cost::

    python -m bench.decoder_throughput [--frames 100000] [--chunk 64] [--json OUT]

The goal is a decoder at least 50 times faster than the line, so that decoding costs the
control loop a few percent of one core at most even on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

from firmware_bridge.wire.codec import SYNC, FrameDecoder, encode_frame
from firmware_bridge.wire.messages import FwFault, FwState, SetSpeed, Status

__all__ = ["build_stream", "main", "measure"]

BAUD = 115_200
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
LINE_BYTES_PER_S = BAUD / BITS_PER_BYTE
GOAL_RATIO = 50.0
STATUS_RATE_HZ = 50


def _status(i: int) -> Status:
    return Status(
        measured_kmh=(i % 800) / 100,
        commanded_kmh=(i % 750) / 100,
        state=FwState.RUNNING,
        fault=FwFault.NONE,
        safety_key_closed=True,
        uptime_ms=i * 20,
        last_applied_seq=i % 256,
        config_checksum=0x8E93,
        lease_remaining_ms=280,
    )


def build_stream(frames: int, garbage_every: int, seed: int) -> tuple[bytes, int]:
    """A stream of ``frames`` STATUS frames with garbage after every ``garbage_every``-th.

    Returns the bytes and the number of valid frames in them.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible benchmark data, not a secret
    parts: list[bytes] = []
    for i in range(frames):
        frame = encode_frame(i % 256, _status(i))
        parts.append(frame)
        if garbage_every and i % garbage_every == garbage_every - 1:
            kind = rng.randrange(3)
            if kind == 0:  # a corrupted STATUS frame
                bad = bytearray(encode_frame(0, _status(i + 1)))
                bad[rng.randrange(1, len(bad))] ^= 1 << rng.randrange(8)
                parts.append(bytes(bad))
            elif kind == 1:  # line noise
                parts.append(rng.randbytes(rng.randrange(1, 40)))
            else:  # a frame cut short
                parts.append(frame[: rng.randrange(1, len(frame))])
    return b"".join(parts), frames


def measure(data: bytes, chunk: int) -> tuple[float, int]:
    """Decode ``data`` fed in ``chunk``-byte pieces; return (seconds, frames decoded)."""
    decoder = FrameDecoder()
    feed = decoder.feed
    count = 0
    start = time.perf_counter()
    for pos in range(0, len(data), chunk):
        count += len(feed(data[pos : pos + chunk]))
    elapsed = time.perf_counter() - start
    return elapsed, count


def measure_noise(size: int, chunk: int, seed: int, *, sync_dense: bool) -> float:
    """Seconds to decode ``size`` bytes of noise.

    ``sync_dense``: every other byte is SYNC followed by a plausible LEN, the worst case (a
    CRC check for every second byte); otherwise uniform random bytes (line noise).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible benchmark data, not a secret
    if sync_dense:
        noise = bytes(b for _ in range(size // 2) for b in (SYNC, rng.randrange(49)))
    else:
        noise = rng.randbytes(size)
    elapsed, _ = measure(noise, chunk)
    return elapsed


def measure_encode(frames: int) -> float:
    """Seconds to build and encode ``frames`` SET_SPEED frames (message object included)."""
    start = time.perf_counter()
    for i in range(frames):
        encode_frame(i & 0xFF, SetSpeed(speed_kmh=(i % 800) / 100, accel_kmh_s=0.5, lease_ms=300))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decoder_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--frames", type=int, default=100_000, help="STATUS frames in the stream")
    parser.add_argument(
        "--garbage-every", type=int, default=50, help="garbage after every Nth frame (0: none)"
    )
    parser.add_argument("--chunk", type=int, default=64, help="bytes per feed() call")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one is reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.frames <= 0 or args.chunk <= 0 or args.repeat <= 0 or args.garbage_every < 0:
        parser.error("--frames, --chunk and --repeat must be > 0, --garbage-every >= 0")

    data, expected = build_stream(args.frames, args.garbage_every, args.seed)
    frame_bytes = len(encode_frame(0, _status(0)))
    best_s = float("inf")
    for _ in range(args.repeat):
        elapsed, count = measure(data, args.chunk)
        # Garbage passes the CRC once in 65536 candidates and may then hide one frame.
        if count < expected * 0.999:
            print(f"error: decoded {count} frames, expected {expected}", file=sys.stderr)
            return 1
        best_s = min(best_s, elapsed)
    encode_s = min(measure_encode(args.frames) for _ in range(args.repeat))
    noise_bytes = 1_000_000
    noise_s = min(
        measure_noise(noise_bytes, args.chunk, args.seed, sync_dense=False)
        for _ in range(args.repeat)
    )
    worst_bytes = 200_000
    worst_s = min(
        measure_noise(worst_bytes, args.chunk, args.seed, sync_dense=True)
        for _ in range(args.repeat)
    )

    frames_per_s = count / best_s
    line_frames_per_s = LINE_BYTES_PER_S / frame_bytes
    ratio = frames_per_s / line_frames_per_s
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "frames": expected,
        "frames_decoded": count,
        "stream_bytes": len(data),
        "garbage_every": args.garbage_every,
        "chunk_bytes": args.chunk,
        "status_frame_bytes": frame_bytes,
        "decode_s": round(best_s, 4),
        "decode_frames_per_s": round(frames_per_s),
        "decode_bytes_per_s": round(len(data) / best_s),
        "decode_us_per_frame": round(best_s / count * 1e6, 2),
        "line_frames_per_s": round(line_frames_per_s, 1),
        "ratio_to_line": round(ratio, 1),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
        "cpu_share_at_50hz_pct": round(STATUS_RATE_HZ / frames_per_s * 100, 3),
        "noise_bytes_per_s": round(noise_bytes / noise_s),
        "noise_ratio_to_line": round(noise_bytes / noise_s / LINE_BYTES_PER_S, 1),
        "worst_noise_bytes_per_s": round(worst_bytes / worst_s),
        "worst_noise_ratio_to_line": round(worst_bytes / worst_s / LINE_BYTES_PER_S, 1),
        "encode_set_speed_per_s": round(args.frames / encode_s),
        "encode_us_per_frame": round(encode_s / args.frames * 1e6, 2),
    }
    rows = [
        ("stream", f"{expected} STATUS frames, {len(data)} bytes, chunks of {args.chunk}"),
        ("decoded", f"{count} frames"),
        ("decode", f"{frames_per_s:,.0f} frames/s ({results['decode_us_per_frame']} us/frame)"),
        ("115200 baud line", f"{line_frames_per_s:,.1f} frames/s of {frame_bytes} bytes"),
        ("ratio", f"{ratio:,.1f}x the line (goal >= {GOAL_RATIO:.0f}x)"),
        ("CPU at 50 Hz STATUS", f"{results['cpu_share_at_50hz_pct']} % of one core"),
        (
            "pure noise",
            f"{results['noise_bytes_per_s']:,} bytes/s "
            f"({results['noise_ratio_to_line']}x the line's {LINE_BYTES_PER_S:,.0f} bytes/s)",
        ),
        (
            "SYNC-dense noise",
            f"{results['worst_noise_bytes_per_s']:,} bytes/s "
            f"({results['worst_noise_ratio_to_line']}x the line)",
        ),
        ("encode SET_SPEED", f"{results['encode_set_speed_per_s']:,} frames/s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if results["meets_goal"] else 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the service spends its CPU: py-spy samples of ``treadmill run`` during a session.

    pip install py-spy        # any environment; it attaches to the service's process
    python -m bench.profile --condition healthy --seconds 60
    python -m bench.profile --condition flooded --seconds 30 --py-spy /path/to/py-spy

Runs the belt at stage 1's maximum under the given broker condition (bench/conditions.py),
samples the service with ``py-spy record --format raw`` and prints the functions with the most
samples, by own time (the function itself) and by total time (itself and what it calls).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.conditions import CONDITIONS, broker_condition
from bench.rig import Rig, RigError, RigOptions

__all__ = ["main", "summarise_collapsed"]


def summarise_collapsed(
    text: str, top: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's collapsed stacks: total samples, top by own samples, top by total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return samples, own.most_common(top), total.most_common(top)


async def _profile(args: argparse.Namespace, py_spy: str) -> int:
    with tempfile.TemporaryDirectory(prefix="treadmill-profile-") as tmp:
        workdir = Path(tmp)
        async with (
            broker_condition(args.condition, workdir / "broker") as env,
            Rig(RigOptions(mqtt=env.mqtt, training=True)) as rig,
        ):
            await rig.start_belt(args.target_kmh, timeout_s=60)
            out = workdir / "stacks.txt"
            proc = await asyncio.create_subprocess_exec(
                py_spy,
                "record",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.seconds),
                "--nonblocking",
                "--output",
                str(out),
                "--pid",
                str(rig.service.pid),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0 or not out.exists():
                raise RigError(f"py-spy failed ({proc.returncode}): {err.decode()[-1000:]}")
            stats = rig.service.proc_stats()
            text = out.read_text()
    samples, own, total = summarise_collapsed(text, args.top)
    print(f"condition {args.condition}: {samples} samples at {args.rate} Hz over {args.seconds} s")
    print(f"(service CPU so far {stats.cpu_s:.1f} s; samples include idle waits in epoll)\n")
    for title, rows in (("own samples", own), ("total samples", total)):
        print(f"top {args.top} by {title}:")
        for name, count in rows:
            print(f"  {100.0 * count / max(1, samples):5.1f} %  {name}")
        print()
    if args.save:
        args.save.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--condition", default="healthy", choices=sorted(CONDITIONS))
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--target-kmh", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", help="path to py-spy (default: from PATH)")
    parser.add_argument("--save", type=Path, help="keep the collapsed stacks here")
    args = parser.parse_args(argv)
    py_spy = args.py_spy or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy not found: pip install py-spy, or give --py-spy PATH", file=sys.stderr)
        return 2
    return asyncio.run(_profile(args, py_spy))


if __name__ == "__main__":
    sys.exit(main())

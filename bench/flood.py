"""A command flooder for MQTT: thousands of malformed and valid-but-harmless commands a second.

Run as its own process so that its CPU use does not disturb the measuring process::

    python -m bench.flood --host 127.0.0.1 --port 1883 --username trainer \\
        --password-file pw.txt --prefix treadmill/demo --rate 2000

It publishes to ``<prefix>/cmd/<name>`` at QoS 0 until SIGTERM or SIGINT, then prints one JSON
line with what it sent. Never ``cmd/stop`` and never a command that lowers a target or a stage
cap below what a benchmark runs at: the flood must have no effect on the belt, only cost.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["FLOOD_MESSAGES", "main"]

#: (command name, payload): most are refused by the parser, the rest by the safety core or the
#: training program (they would only raise a target or a cap, or assign a client while moving).
FLOOD_MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("target_kmh", b"fast"),
    ("target_kmh", b"NaN"),
    ("target_kmh", b"-1"),
    ("target_kmh", b"1e309"),
    ("target_kmh", b'{"speed_kmh": 99}'),
    ("target_kmh", b'{"speed_kmh": "2"}'),
    ("target_kmh", b"9" * 2000),  # above max_payload_bytes
    ("target_kmh", b"[" * 400 + b"]" * 400),
    ("target_kmh", b"\xff\xfe\x00garbage"),
    ("target_kmh", b"8.0"),  # valid, but it would raise the target: refused by the core
    ("stage_cap", b"0"),
    ("stage_cap", b"[]"),
    ("stage_cap", b"4"),  # valid, never lowers the cap in the benchmarks (stage 1)
    ("start", b"1"),
    ("reset", b""),
    ("clear_fault", b"PRESS"),
    ("speed_kmh", b"5"),
    ("unknown_command", b"x"),
    ("client", b'{"client_id": "../../etc/passwd"}'),
    ("client", b'{"client_id": null}'),  # valid, refused while the belt moves
    ("target_kmh/extra/levels", b"1"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path)
    parser.add_argument("--prefix", default="treadmill/demo", help="topic prefix, no cmd/")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-flooder", protocol=mqtt.MQTTv311
    )
    if args.username:
        password = args.password_file.read_text().strip() if args.password_file else None
        client.username_pw_set(args.username, password)
    client.max_queued_messages_set(10_000)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible mix, not cryptography
    slot_s = 0.01
    per_slot = max(1, round(args.rate * slot_s))
    sent = failed = 0
    start = time.monotonic()
    next_slot = start
    try:
        while not stop.is_set():
            for _ in range(per_slot):
                name, payload = FLOOD_MESSAGES[rng.randrange(len(FLOOD_MESSAGES))]
                info = client.publish(f"{args.prefix}/cmd/{name}", payload, qos=0)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    sent += 1
                else:
                    failed += 1
            next_slot += slot_s
            delay = next_slot - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_slot = time.monotonic()  # fell behind: do not burst
    finally:
        elapsed = time.monotonic() - start
        client.loop_stop()
        client.disconnect()
        sys.stdout.write(
            json.dumps(
                {
                    "sent": sent,
                    "failed": failed,
                    "elapsed_s": round(elapsed, 3),
                    "rate_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
                }
            )
            + "\n"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

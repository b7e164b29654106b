"""``treadmill monitor``: watch treadmills live from MQTT, read-only.

Subscribes to ``<prefix>/+/state``, ``<prefix>/+/event`` and ``<prefix>/+/availability``
(``<prefix>`` is ``treadmill``; payloads in docs/mqtt.md) and shows either

* every treadmill seen, one line each (the default), or
* one treadmill (``--id``) with the same full view as ``treadmill demo``.

It never publishes anything (no will either), so a dashboard user with read-only rights on
``treadmill/#`` is enough. On a terminal the view is redrawn in place about five times a
second; without one (a pipe, a log) it prints a line whenever a treadmill's line changes (at
most twice a second each) and one line per event. It reconnects on its own when the broker
goes away. Ctrl-C (or SIGTERM) ends it with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import shutil
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from controller.tools.view import (
    HIDE_CURSOR,
    SHOW_CURSOR,
    TreadmillView,
    ViewEvent,
    render_line,
    render_screen,
    screen_text,
    view_from_state,
    wrap_line,
)

__all__ = ["Fleet", "TreadmillEntry", "monitor_main"]

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
REFRESH_S: Final = 0.2
PLAIN_MIN_INTERVAL_S: Final = 0.5
EVENTS_KEPT: Final = 6
STALE_AFTER_S: Final = 5.0
MAX_PAYLOAD_BYTES: Final = 65536
RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 15.0
ALT_SCREEN_ON: Final = "\x1b[?1049h"
ALT_SCREEN_OFF: Final = "\x1b[?1049l"


@dataclass
class TreadmillEntry:
    """What the monitor knows about one treadmill."""

    treadmill_id: str
    state: dict[str, object] = field(default_factory=dict)
    online: bool | None = None
    events: deque[ViewEvent] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    state_seen_s: float | None = None  # monotonic time of the last state message
    malformed: int = 0

    def view(self, now_s: float, *, notes: tuple[str, ...] = ()) -> TreadmillView:
        extra: list[str] = []
        if self.state_seen_s is not None and now_s - self.state_seen_s > STALE_AFTER_S:
            extra.append(f"  last state {now_s - self.state_seen_s:.0f} s ago")
        if self.malformed:
            extra.append(f"  {self.malformed} malformed message(s) ignored")
        return view_from_state(
            self.state,
            title=f"treadmill {self.treadmill_id}",
            online=self.online,
            events=tuple(self.events),
            notes=(*extra, *notes),
        )

    def line(self, now_s: float) -> str:
        text = f"{self.treadmill_id:<16} "
        if not self.state:
            online = {True: "online ", False: "OFFLINE", None: "?"}[self.online]
            return text + f"{online} no state yet"
        text += render_line(self.view(now_s))
        if self.state_seen_s is not None and now_s - self.state_seen_s > STALE_AFTER_S:
            text += f" (state {now_s - self.state_seen_s:.0f} s old)"
        return text


class Fleet:
    """Every treadmill seen on the broker, fed one MQTT message at a time (no I/O here)."""

    def __init__(self, prefix: str = "treadmill", only_id: str | None = None) -> None:
        self.prefix = prefix
        self.only_id = only_id
        self.entries: dict[str, TreadmillEntry] = {}

    def entry(self, treadmill_id: str) -> TreadmillEntry:
        if treadmill_id not in self.entries:
            self.entries[treadmill_id] = TreadmillEntry(treadmill_id)
        return self.entries[treadmill_id]

    def handle(
        self, topic: str, payload: bytes, now_s: float
    ) -> tuple[str, ViewEvent | None] | None:
        """Apply one message. Returns ``(treadmill id, new event or None)`` when it concerned
        a treadmill, None when the topic is not one of ours."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.prefix:
            return None
        treadmill_id, kind = parts[1], parts[2]
        if self.only_id is not None and treadmill_id != self.only_id:
            return None
        if kind == "availability":
            entry = self.entry(treadmill_id)
            text = payload.decode("utf-8", errors="replace").strip()
            entry.online = {"online": True, "offline": False}.get(text)
            return treadmill_id, None
        if kind not in ("state", "event"):
            return None
        entry = self.entry(treadmill_id)
        data = _json_object(payload)
        if data is None:
            entry.malformed += 1
            return treadmill_id, None
        if kind == "state":
            entry.state = data
            entry.state_seen_s = now_s
            return treadmill_id, None
        event = ViewEvent(
            when=_clock_text(data.get("ts")),
            kind=str(data.get("kind", "?")),
            message=str(data.get("message", "")),
        )
        entry.events.append(event)
        return treadmill_id, event


def _json_object(payload: bytes) -> dict[str, object] | None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clock_text(ts: object) -> str:
    """``2025-03-01T12:30:05.123Z`` -> ``12:30:05``; anything else as it is (shortened)."""
    if isinstance(ts, str) and "T" in ts:
        return ts.split("T", 1)[1][:8]
    return str(ts)[:8] if ts is not None else "?"


# ---------------------------------------------------------------------------- MQTT


@dataclass(frozen=True)
class _Connection:
    host: str
    port: int
    username: str | None
    password: str | None
    tls_ca: Path | None


async def _subscribe_loop(
    connection: _Connection,
    fleet: Fleet,
    on_change: asyncio.Queue[tuple[str, ViewEvent | None]],
    status: list[str],
) -> None:
    """Connect, subscribe, feed the fleet; reconnect with jittered backoff. Never publishes."""
    import aiomqtt  # noqa: PLC0415 - keeps `--help` fast

    delay_s = RECONNECT_MIN_S
    base = fleet.prefix if fleet.only_id is None else f"{fleet.prefix}/{fleet.only_id}"
    wildcard = "+" if fleet.only_id is None else None
    topics = [
        f"{base}/{wildcard}/{kind}" if wildcard else f"{base}/{kind}"
        for kind in ("availability", "state", "event")
    ]
    tls = aiomqtt.TLSParameters(ca_certs=str(connection.tls_ca)) if connection.tls_ca else None
    while True:
        client = aiomqtt.Client(
            connection.host,
            connection.port,
            username=connection.username,
            password=connection.password,
            identifier=f"treadmill-monitor-{random.getrandbits(32):08x}",
            tls_params=tls,
            keepalive=30,
        )
        try:
            async with client:
                await client.subscribe([(topic, 0) for topic in topics])
                status[0] = f"connected to {connection.host}:{connection.port}"
                delay_s = RECONNECT_MIN_S
                async for message in client.messages:
                    payload = message.payload
                    raw = payload if isinstance(payload, bytes | bytearray) else str(payload)
                    data = bytes(raw) if not isinstance(raw, str) else raw.encode()
                    change = fleet.handle(message.topic.value, data, time.monotonic())
                    if change is not None:
                        on_change.put_nowait(change)
        except aiomqtt.MqttError as exc:
            status[0] = (
                f"no connection to {connection.host}:{connection.port} ({exc}); "
                f"retrying in {delay_s:.1f} s"
            )
            logger.warning("%s", status[0])
            on_change.put_nowait(("", None))
        await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
        delay_s = min(RECONNECT_MAX_S, delay_s * 2)


async def _plain(
    fleet: Fleet,
    changes: asyncio.Queue[tuple[str, ViewEvent | None]],
    out: TextIO,
    status: list[str],
) -> None:
    """One line per change (rate-limited per treadmill) and one per event."""
    last_text: dict[str, str] = {}
    last_time: dict[str, float] = {}
    pending: set[str] = set()
    shown_status = ""
    while True:
        try:
            treadmill_id, event = await asyncio.wait_for(
                changes.get(), timeout=PLAIN_MIN_INTERVAL_S
            )
        except TimeoutError:
            treadmill_id, event = "", None
        now = time.monotonic()
        if status[0] != shown_status:
            shown_status = status[0]
            out.write(f"# {shown_status}\n")
        if event is not None:
            out.write(f"{treadmill_id:<16} event {event.kind}: {event.message}\n")
        if treadmill_id:
            pending.add(treadmill_id)
        for name in sorted(pending):
            if now - last_time.get(name, -1e9) < PLAIN_MIN_INTERVAL_S:
                continue
            pending.discard(name)
            text = fleet.entries[name].line(now)
            if text != last_text.get(name):
                out.write(text + "\n")
                last_text[name] = text
                last_time[name] = now
        out.flush()


async def _screen(fleet: Fleet, out: TextIO, status: list[str]) -> None:
    """Redraw the whole view in place."""
    while True:
        now = time.monotonic()
        width = shutil.get_terminal_size((100, 40)).columns
        notes = (f"  {status[0]}", "  read-only; Ctrl-C to quit")
        if fleet.only_id is not None:
            entry = fleet.entries.get(fleet.only_id)
            if entry is None:
                lines = [f"treadmill {fleet.only_id}: nothing received yet", *notes]
            else:
                lines = render_screen(entry.view(now, notes=notes), width=width)
        else:
            lines = [f"treadmills on {fleet.prefix}/# ({len(fleet.entries)} seen)", ""]
            for name in sorted(fleet.entries):  # wrapped, never cut: the fault stays visible
                lines.extend(wrap_line(fleet.entries[name].line(now), width, " " * 17))
            if not fleet.entries:
                lines.append("  (none yet)")
            lines.extend(["", *notes])
        out.write(screen_text(lines))
        out.flush()
        await asyncio.sleep(REFRESH_S)


async def _monitor(connection: _Connection, fleet: Fleet, interactive: bool, out: TextIO) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    changes: asyncio.Queue[tuple[str, ViewEvent | None]] = asyncio.Queue()
    status = [f"connecting to {connection.host}:{connection.port}..."]
    if interactive:
        out.write(ALT_SCREEN_ON + HIDE_CURSOR)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    _subscribe_loop(connection, fleet, changes, status), name="mqtt-subscribe"
                ),
                group.create_task(
                    _screen(fleet, out, status)
                    if interactive
                    else _plain(fleet, changes, out, status),
                    name="monitor-output",
                ),
            ]
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if interactive:
            out.write(SHOW_CURSOR + ALT_SCREEN_OFF)
            out.flush()
    return EXIT_OK


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadmill monitor",
        description="Watch treadmills live over MQTT (read-only: it never publishes).",
    )
    parser.add_argument("--host", default="localhost", help="broker host (default localhost)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    parser.add_argument("--id", dest="treadmill_id", help="show this treadmill in full")
    parser.add_argument("--prefix", default="treadmill", help="topic prefix (default treadmill)")
    parser.add_argument("--username", help="MQTT user (read access to <prefix>/# is enough)")
    parser.add_argument("--password-file", type=Path, help="file holding the password")
    parser.add_argument(
        "--credentials-file",
        type=Path,
        help="file with one line 'username:password' (the service's format)",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    return parser


def _credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(username, password) from the options; raises ValueError naming the problem."""
    if args.credentials_file is not None:
        if args.username or args.password_file:
            raise ValueError("use either --credentials-file or --username/--password-file")
        from controller.settings.credentials import read_mqtt_credentials  # noqa: PLC0415

        credentials = read_mqtt_credentials(args.credentials_file)  # ValueError names the file
        return credentials.username, credentials.password
    if args.password_file is not None:
        if not args.username:
            raise ValueError("--password-file needs --username")
        try:
            lines = args.password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{args.password_file}: cannot read the password file: {exc}"
            ) from None
        password = lines[0].strip() if lines else ""
        if not password:
            raise ValueError(f"{args.password_file}: the first line (the password) is empty")
        return args.username, password
    return args.username, None


def monitor_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``treadmill monitor``; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        err.write(f"--port {args.port}: use 1..65535\n")
        return EXIT_USAGE
    for name, value in (("--prefix", args.prefix), ("--id", args.treadmill_id)):
        if value is not None and (not value or any(c in value for c in "/+#")):
            err.write(f"{name} {value!r}: one topic level, without / + #\n")
            return EXIT_USAGE
    try:
        username, password = _credentials(args)
    except ValueError as exc:
        err.write(f"monitor: {exc}\n")
        return EXIT_USAGE
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.ERROR)
    interactive = not args.plain and out.isatty()
    connection = _Connection(args.host, args.port, username, password, args.tls_ca)
    fleet = Fleet(args.prefix, args.treadmill_id)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_monitor(connection, fleet, interactive, out))
    return EXIT_OK

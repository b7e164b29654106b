"""The service's side tasks and their supervision: a task that fails stops the belt before its
error takes the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator

from controller.adapters.gpio.inputs import PanelInputs
from controller.adapters.systemd import Notifier
from controller.rules.model import Event
from firmware_bridge.port.bridge import FirmwareBridge

logger = logging.getLogger(__name__)

GPIO_CHATTER_EDGES_PER_S = 40


async def guard(name: str, awaitable: Awaitable[None], on_failure: Callable[[str], None]) -> None:
    """Run a task; if it fails, ``on_failure(reason)`` (a controlled STOP) before the error
    takes the service down."""
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("task %s failed", name)
        on_failure(f"task {name} failed")
        raise


async def watch_gpio(panel: PanelInputs, emit: Callable[[Event], None]) -> None:
    """Report GPIO chatter: an edge rate no person can produce means a wiring fault."""
    last_edges = panel.edges
    warned = False
    while True:
        await asyncio.sleep(1.0)
        rate = panel.edges - last_edges
        last_edges = panel.edges
        if rate >= GPIO_CHATTER_EDGES_PER_S and not warned:
            emit(
                Event(
                    "gpio_chatter",
                    f"{rate} GPIO edges in one second on the grip/e-stop/key/button "
                    "inputs: check the wiring and connectors",
                    {"edges_per_s": rate},
                )
            )
            warned = True
        elif rate < GPIO_CHATTER_EDGES_PER_S // 4:
            warned = False


async def report_status(notifier: Notifier, status_line: Callable[[], str], first: str) -> None:
    """systemd ``STATUS=``: the service's status line, sent when it changes (checked each s)."""
    shown = first
    while True:
        await asyncio.sleep(1.0)
        line = status_line()
        if line != shown:
            shown = line
            notifier.status(line)


async def wait_for_firmware(
    bridge: FirmwareBridge, port: str, notifier: Notifier, shutdown: Callable[[], bool]
) -> bool:
    """Wait for the firmware's handshake, saying every 5 s what is missing; True if a
    shutdown was requested first (nothing moved)."""
    waited_s = 0.0
    while not bridge.ready.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bridge.ready.wait(), timeout=5.0)
        if not bridge.ready.is_set():
            waited_s += 5.0
            error = bridge.stats.last_error or "no answer"
            message = (
                f"waiting for the firmware on {port} for {waited_s:.0f} s "
                f"({error}); the belt cannot start. Check the cable and serial.port."
            )
            logger.error("%s", message)
            notifier.status(message)
        if shutdown():
            return True
    return False


def shutdown_verdict(
    *, firmware_fresh: bool, belt_at_rest: bool, waited_ms: int, timeout_ms: int, lease_ms: int
) -> str | None:
    """Whether a requested shutdown can end: ``"done"`` (belt at rest, or the link down so
    only the firmware's lease can stop it), ``"timeout"`` (not at rest after ``timeout_ms``:
    ESTOP) or ``None`` (keep stopping)."""
    if not firmware_fresh:
        logger.warning(
            "shutting down with the firmware link down: the firmware lease (%d ms) stops the belt",
            lease_ms,
        )
        return "done"
    if belt_at_rest:
        return "done"
    if waited_ms > timeout_ms:
        logger.error("belt not at rest %d ms after the shutdown request: sending ESTOP", timeout_ms)
        return "timeout"
    return None


@contextlib.contextmanager
def signal_handlers(
    install: bool, shutdown: Callable[[str], None], reload: Callable[[], None]
) -> Iterator[None]:
    """SIGTERM and SIGINT request a shutdown, SIGHUP a reload, while the service runs."""
    loop = asyncio.get_running_loop()
    if install:
        loop.add_signal_handler(signal.SIGTERM, shutdown, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, shutdown, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        yield
    finally:
        if install:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

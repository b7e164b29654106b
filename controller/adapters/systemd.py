"""systemd notification protocol (sd_notify) without extra packages.

The protocol is one datagram per message to the Unix socket named in ``$NOTIFY_SOCKET``
(a leading ``@`` means the Linux abstract namespace). Sending never blocks and never raises:
a notify failure must not disturb the control loop.

``WATCHDOG=1`` is sent by the control loop itself, only after a completed tick with fresh
firmware status (see controller.runtime.service), never from a timer of its own.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


class Notifier:
    """Sends ``KEY=value`` lines to systemd. A no-op when ``$NOTIFY_SOCKET`` is unset."""

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram made of ``lines``. Returns False if it could not be sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1 or self.failed % 1000 == 0:
                logger.warning("systemd notify to %s failed (%s)", self._address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The control loop's alarm clock: one callback at an absolute time on the event loop's clock,
to within the kernel's timer slack instead of asyncio's whole milliseconds.

asyncio sleeps in ``epoll_wait``, whose timeout the selector rounds up to a whole millisecond
(``selectors.EpollSelector.select``), so a ``loop.call_at`` tick wakes 0 to 1 ms late, uniformly.
On Linux the alarm is a ``timerfd`` armed at an absolute ``CLOCK_MONOTONIC`` time (the clock of
``loop.time()`` and of the core's milliseconds) and watched with ``loop.add_reader``: the
kernel wakes the loop when it expires. Elsewhere, or when the timerfd cannot be made, it falls
back to ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000
_TFD_NONBLOCK = 0o4000
_TFD_TIMER_ABSTIME = 1
_NS_PER_S = 1_000_000_000


class _Timespec(ctypes.Structure):
    # glibc's default ABI: time_t and long are both the C long (32-bit Raspberry Pi OS too).
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Alarm:
    """Calls one callback at an absolute loop-clock time; ``set`` replaces the pending one.

    ``precise`` says whether the timerfd is in use. ``close()`` releases it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, use_timerfd: bool = True) -> None:
        self._loop = loop
        self._callback: Callable[[], None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        self._settime: Callable[..., int] | None = None
        self._spec = _Itimerspec()
        if use_timerfd and _loop_clock_is_monotonic(loop):
            self._open_timerfd()

    @property
    def precise(self) -> bool:
        return self._settime is not None

    def set(self, when: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` once at loop time ``when`` (at once if it has passed)."""
        self._callback = callback
        settime = self._settime
        if settime is not None:
            when_ns = max(int(when * _NS_PER_S), 1)  # 0 would disarm the timer
            value = self._spec.it_value
            value.tv_sec, value.tv_nsec = divmod(when_ns, _NS_PER_S)
            if settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) == 0:
                return
            self._give_up_timerfd(f"timerfd_settime: {os.strerror(ctypes.get_errno())}")
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        """Forget the pending callback; a timer that still expires wakes the loop for nothing."""
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.cancel()
        self._close_timerfd()

    def _close_timerfd(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):  # already broken: nothing left to release
                os.close(self._fd)
            self._fd = -1
            self._settime = None

    def _give_up_timerfd(self, problem: str) -> None:
        """A timerfd that fails is dropped for ``loop.call_at``: the loop keeps its ticks,
        to the millisecond, instead of stalling or raising out of the control loop."""
        log.warning("%s: the loop's timers fall back to asyncio's, to the millisecond", problem)
        self._close_timerfd()

    def _open_timerfd(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create = libc.timerfd_create
            settime = libc.timerfd_settime
        except (OSError, AttributeError) as exc:
            log.info("no timerfd (%s): the loop's timers wake to the millisecond", exc)
            return
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        create.restype = ctypes.c_int
        settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
        settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            log.info(
                "timerfd_create: %s: the loop's timers wake to the millisecond", os.strerror(code)
            )
            return
        self._fd = fd
        self._settime = settime
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; reading it re-arms the readiness
        except BlockingIOError:
            return  # re-armed between the wake and the read: not expired after all
        except OSError as exc:
            # Wake the waiter now (an early tick decides the same) rather than never.
            self._give_up_timerfd(f"reading the timerfd: {exc}")
        self._fire()

    def _fire(self) -> None:
        self._handle = None
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def _loop_clock_is_monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    """True if ``loop.time()`` is CLOCK_MONOTONIC (asyncio's default); a test's virtual clock
    is not, and gets ``call_at``."""
    return abs(loop.time() - time.monotonic()) < 0.001

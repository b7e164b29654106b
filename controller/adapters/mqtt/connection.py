"""The MQTT broker connection: client construction, protocol fallback and error helpers.

Used by :class:`~controller.adapters.mqtt.publisher.MqttPublisher`, which owns the
connections: the main one (telemetry out, commands in) and the stop path (``cmd/stop``
only). Nothing here keeps state.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from controller.adapters.mqtt.settings import MqttSettings

__all__ = [
    "BROKER_TIMEOUT_S",
    "GOODBYE_TIMEOUT_S",
    "describe_error",
    "leaves",
    "main_client",
    "protocol_name",
    "raise_if_cancel_was_swallowed",
    "refuses_v5",
    "stop_path_client",
    "timed_out",
]

BROKER_TIMEOUT_S: Final[float] = 5.0
"""How long a CONNACK, SUBACK or PUBACK may take before the connection counts as broken."""

GOODBYE_TIMEOUT_S: Final[float] = 2.0
"""On shutdown: time allowed to flush events and publish ``offline`` before disconnecting."""

_UNSUPPORTED_PROTOCOL_CODES: Final[frozenset[int]] = frozenset({1, 132})
"""CONNACK codes meaning "unsupported protocol version": 1 in MQTT 3.1.1, 0x84 in MQTT 5."""

#: Small messages at a low rate: send each at once instead of waiting up to 40 ms for
#: Nagle's algorithm to fill a segment.
_NO_DELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def refuses_v5(exc: MqttConnectError) -> bool:
    """The broker refused the connection because it does not speak this MQTT version."""
    code = getattr(exc.rc, "value", exc.rc)
    return isinstance(code, int) and code in _UNSUPPORTED_PROTOCOL_CODES


def timed_out(exc: aiomqtt.MqttError) -> bool:
    """aiomqtt's "no CONNACK in time" (it raises a plain ``MqttError`` with this text)."""
    return "timed out" in str(exc).lower()


def protocol_name(protocol: aiomqtt.ProtocolVersion) -> str:
    return "5" if protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def raise_if_cancel_was_swallowed(baseline: int = 0) -> None:
    """Re-raise a cancellation that ``asyncio.wait_for`` lost.

    On Python 3.11, ``wait_for`` (used inside aiomqtt for every acknowledged call)
    returns the result instead of raising when the cancellation and the result arrive
    together; the task then runs on with ``cancelling()`` above its ``baseline`` and
    whoever cancelled it waits forever. Called after every awaited broker call outside
    the shutdown path.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > baseline:
        raise asyncio.CancelledError


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tls_params(settings: MqttSettings) -> aiomqtt.TLSParameters | None:
    tls = settings.tls
    if tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(tls.ca_file),
        certfile=str(tls.cert_file) if tls.cert_file is not None else None,
        keyfile=str(tls.key_file) if tls.key_file is not None else None,
    )


def main_client(
    settings: MqttSettings,
    protocol: aiomqtt.ProtocolVersion,
    *,
    queue_type: type[asyncio.Queue[aiomqtt.Message]],
    max_queued: int,
) -> aiomqtt.Client:
    """The main connection: the will ``offline`` on the availability topic, incoming
    messages in ``queue_type`` (bounded to ``max_queued``, see
    :func:`controller.adapters.mqtt.intake.incoming_queue_type`).

    A fresh client per attempt: aiomqtt 2.5 keeps the previous CONNACK future after an
    unexpected disconnect, so a reused client can report "connected" early.
    """
    s = settings
    return aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password,
        identifier=s.client_id,
        protocol=protocol,
        will=aiomqtt.Will(s.availability_topic, b"offline", qos=1, retain=True),
        keepalive=s.keepalive_s,
        timeout=BROKER_TIMEOUT_S,
        tls_params=_tls_params(s),
        queue_type=queue_type,
        max_queued_incoming_messages=max_queued,
        socket_options=_NO_DELAY,
    )


def stop_path_client(settings: MqttSettings, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
    """The second connection, for ``cmd/stop`` only (client id ``<client_id>-stop``)."""
    s = settings
    return aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password,
        identifier=f"{s.client_id}-stop",
        protocol=protocol,
        keepalive=s.keepalive_s,
        timeout=BROKER_TIMEOUT_S,
        tls_params=_tls_params(s),
        socket_options=_NO_DELAY,
    )

"""The MQTT credentials file: its one reader, for check-config, the service and the monitor."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from controller.errors import CredentialsError


@dataclass(frozen=True)
class MqttCredentials:
    """Broker user name and password from ``mqtt.credentials_file``.

    ``open_to_others``: the file can be read by its group or by other users (it should be
    ``chmod 600``); check-config warns, the service logs a warning.
    """

    username: str
    password: str = ""
    open_to_others: bool = False

    def __repr__(self) -> str:  # never print the password
        return f"MqttCredentials(username={self.username!r}, password='***')"


def read_mqtt_credentials(path: Path) -> MqttCredentials:
    """Read ``username:password`` (one line; the password may contain ':') from ``path``.

    The one reader of the credentials file: check-config, the service and ``treadmill
    monitor`` all use it, so a file that passes check-config also works at run time. Raises
    :class:`~controller.errors.CredentialsError` (a :class:`ValueError`) naming the file and
    what is wrong, never quoting the password.
    """
    hint = "it must hold exactly one line 'username:password'"
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        msg = f"{path}: cannot read the MQTT credentials file ({exc.strerror or exc}); {hint}"
        raise CredentialsError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: the MQTT credentials file is not UTF-8 text; {hint}"
        raise CredentialsError(msg) from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise CredentialsError(f"{path}: found {len(lines)} non-empty lines; {hint}")
    username, sep, password = lines[0].partition(":")
    if not sep:
        raise CredentialsError(f"{path}: line has no ':' between username and password; {hint}")
    if not username or username != username.strip():
        raise CredentialsError(f"{path}: the username is empty or has spaces around it; {hint}")
    if not password:
        raise CredentialsError(f"{path}: the password after ':' is empty; {hint}")
    return MqttCredentials(
        username=username,
        password=password,
        open_to_others=bool(mode & (stat.S_IRWXG | stat.S_IRWXO)),
    )

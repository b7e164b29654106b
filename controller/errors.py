"""Every error the controller and the firmware bridge raise on purpose, under one base class.

Each error also subclasses the builtin that fits it (a bad value is a :class:`ValueError`,
a part that cannot run is a :class:`RuntimeError`), so code that knows only the builtin still
catches it, and ``except TreadmillError`` catches every error of the project. Messages say
what was seen and what to do.

Example:
    >>> from controller.errors import ConfigError, ConfigIssue, TreadmillError
    >>> error = ConfigError([ConfigIssue("t.yaml", 3, 5, "control.rate_hz", "too high")])
    >>> isinstance(error, TreadmillError), isinstance(error, ValueError)
    (True, True)
    >>> error.lines()
    ['t.yaml:3:5: control.rate_hz: too high']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BeltSensorError",
    "BrokerUnavailableError",
    "ConfigError",
    "ConfigIssue",
    "CredentialsError",
    "GpioError",
    "KeyRelayError",
    "MessageError",
    "MockPanelError",
    "ResourceMissingError",
    "ScenarioError",
    "ScenarioRunError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreSchemaTooNewError",
    "StoreUnavailableError",
    "TreadmillError",
    "UnknownMessageError",
]


class TreadmillError(Exception):
    """Base class of every error the project raises on purpose."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class ConfigIssue:
    """One problem (or warning) in a configuration file.

    ``line`` and ``col`` are 1-based; ``line == 0`` means the problem concerns the whole
    file (it cannot be read, for example), and then ``key_path`` is empty.
    """

    path: str
    line: int
    col: int
    key_path: str
    message: str

    def text(self) -> str:
        """``PATH:LINE:COL: key.path: message``, the format editors and CI understand."""
        if self.line <= 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}:{self.col}: {self.key_path}: {self.message}"


class ConfigError(TreadmillError, ValueError):
    """A configuration was refused. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Iterable[ConfigIssue]) -> None:
        self.problems: list[ConfigIssue] = sorted(
            problems, key=lambda issue: (issue.path, issue.line, issue.col)
        )
        super().__init__("\n".join(self.lines()) or "invalid configuration")

    def lines(self) -> list[str]:
        """One ``PATH:LINE:COL: key.path: message`` line per problem."""
        return [issue.text() for issue in self.problems]


class CredentialsError(TreadmillError, ValueError):
    """The MQTT credentials file is missing, unreadable or not ``username:password``."""


class ScenarioError(ConfigError):
    """The scenario file (or its config) is invalid; ``lines()`` gives one line per problem."""


# ------------------------------------------------------------------ wire protocol


class MessageError(TreadmillError, ValueError):
    """A message field or payload is not valid. ``field`` and ``value`` say what was seen."""

    def __init__(self, text: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(text)
        self.field = field
        self.value = value


class UnknownMessageError(MessageError):
    """A message id that this protocol version does not define."""


# ------------------------------------------------------------------ devices and storage


class GpioError(TreadmillError, RuntimeError):
    """A GPIO input could not be opened. The message names the input, the pin and what to do."""


class BeltSensorError(TreadmillError, RuntimeError):
    """The belt sensor's pin could not be opened. The message names the pin and what to do."""


class KeyRelayError(TreadmillError, RuntimeError):
    """The relay output could not be opened. The message names the pin and what to do."""


class ResourceMissingError(TreadmillError, FileNotFoundError):
    """A bundled file is in neither the package nor the source tree (a broken install)."""


class StoreError(TreadmillError, RuntimeError):
    """The session log cannot be used. The message says what was seen and what to do."""


class StoreCorruptError(StoreError):
    """The file is not a readable SQLite database. It is left exactly as it was."""


class StoreLockedError(StoreError):
    """Another process holds a lock on the database longer than the busy timeout."""


class StoreUnavailableError(StoreError):
    """The file cannot be opened or written (missing directory, permissions, disk full, I/O)."""


class StoreSchemaTooNewError(StoreError):
    """The file was written by a newer controller. It is left exactly as it was."""


# ------------------------------------------------------------------ tools


class MockPanelError(TreadmillError, ValueError):
    """A mock-panel command that cannot be carried out; the message says what is accepted."""


class ScenarioRunError(TreadmillError, RuntimeError):
    """The scenario could not be carried out (the service did not start, a step failed...)."""


class BrokerUnavailableError(TreadmillError, RuntimeError):
    """No demo broker could be started; the message says what to install."""

"""Whatever text a config file holds, loading it succeeds or raises ConfigError, nothing else.

Every ConfigError problem carries the source name, a line (>= 1 for anything inside the
text), a key path and a non-empty message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.settings.config import ConfigError, load_config_text
from controller.settings.schema import AppConfig

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "config" / "demo.yaml").read_text()
DEMO_LINES = DEMO.splitlines(keepends=True)
DEMO_DATA: dict[str, Any] = yaml.safe_load(DEMO)
SOURCE = "fuzz.yaml"

SCHEMA_WORDS = sorted(
    {
        "treadmill", "id", "serial", "port", "firmware", "max_speed_kmh", "lease_ms",
        "stale_ms", "control", "rate_hz", "overspeed", "follow", "gpio", "inputs", "pin",
        "active", "pull", "estop", "grip_left", "stages", "grip", "hands_required", "on_loss",
        "grace_ms", "max_kmh", "mqtt", "tls", "training", "unlock", "logging", "state_dir",
    }
)  # fmt: skip

PROFILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(text: str) -> None:
    """Load ``text``: it may pass or raise ConfigError with well-formed problems."""
    error: ConfigError | None = None
    try:
        config = load_config_text(text, SOURCE)
    except ConfigError as exc:
        error = exc
    if error is None:
        assert isinstance(config, AppConfig)
        config.safety()
        return
    assert error.problems, "a ConfigError must name at least one problem"
    for issue, line in zip(error.problems, error.lines(), strict=True):
        assert issue.path == SOURCE
        assert issue.message
        assert line.startswith(f"{SOURCE}:")
        assert issue.line >= 1
        assert issue.col >= 1
        assert issue.key_path


@PROFILE
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    check(text)


@PROFILE
@given(
    st.lists(
        st.one_of(
            st.sampled_from([":", " ", "\n", "-", "[", "]", "{", "}", ",", "&a", "*a", "!!", "#"]),
            st.sampled_from(SCHEMA_WORDS),
            st.text(max_size=5),
        ),
        max_size=80,
    )
)
def test_yaml_shaped_text(pieces: list[str]) -> None:
    check("".join(pieces))


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "insert", "char", "indent"]),
    st.integers(min_value=0, max_value=len(DEMO_LINES) - 1),
    st.integers(min_value=0, max_value=len(DEMO_LINES) - 1),
    st.text(max_size=12),
)


@PROFILE
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_demo_file(mutations: list[tuple[str, int, int, str]]) -> None:
    lines = list(DEMO_LINES)
    for kind, raw_first, raw_second, text in mutations:
        first = raw_first % len(lines)
        second = raw_second % len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[first]
        elif kind == "duplicate":
            lines.insert(first, lines[first])
        elif kind == "swap":
            lines[first], lines[second] = lines[second], lines[first]
        elif kind == "insert":
            lines.insert(first, text + "\n")
        elif kind == "char" and lines[first]:
            position = second % len(lines[first])
            lines[first] = lines[first][:position] + text + lines[first][position + 1 :]
        elif kind == "indent":
            lines[first] = "  " + lines[first]
    check("".join(lines))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(SCHEMA_WORDS) | st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(paths(value, (*prefix, index)))
    return found


DEMO_PATHS = paths(DEMO_DATA)


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        return {k: (replaced(v, rest, value) if k == head else v) for k, v in data.items()}
    if isinstance(data, list):
        return [replaced(v, rest, value) if i == head else v for i, v in enumerate(data)]
    return data  # an earlier edit replaced this branch: the path is gone


@PROFILE
@given(st.lists(st.tuples(st.sampled_from(DEMO_PATHS), values), min_size=1, max_size=3))
def test_demo_data_with_random_values(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = DEMO_DATA
    for path, value in edits:
        data = replaced(data, path, value)
    check(yaml.safe_dump(data, allow_unicode=True))


@PROFILE
@given(values)
# Keys named like pydantic's union tags once emptied the key path and crashed the formatter.
@example({"none": None})
@example({"int": 1, "treadmill": {"none": None}})
@example({"str": {"bool": []}})
def test_random_documents(data: Any) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))

"""The one formatter of pydantic errors: keys named like pydantic's union tags stay in the path."""

from __future__ import annotations

import pytest

from controller.errors import ConfigError
from controller.settings.config import load_config_text
from controller.settings.schema import AppConfig
from controller.settings.schema_errors import file_key_path, schema_issue
from controller.settings.yaml_loader import parse_yaml
from controller.tools.scenario import ScenarioError
from controller.tools.scenario_spec import load_scenario_text


@pytest.mark.parametrize("key", ["none", "int", "str", "float", "bool"])
def test_an_unknown_key_named_like_a_type_is_reported_at_its_line(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f"{key}: null\n", "t.yaml")
    unknown = [line for line in info.value.lines() if "unknown key" in line]
    assert unknown == [unknown[0]]
    assert unknown[0].startswith(f"t.yaml:1:1: {key}: unknown key {key!r}")


@pytest.mark.parametrize("key", ["none", "int", "str", "float", "bool"])
def test_a_scenario_key_named_like_a_union_tag_is_reported_at_its_line(key: str) -> None:
    """Scenario files strip pydantic's union tags from the location, but never a written key."""
    for text, where in ((f"{key}: 1\n", "1:1"), (f"duration_s: 5\nsteps:\n  - {key}: 1\n", "3:5")):
        with pytest.raises(ScenarioError) as info:
            load_scenario_text(text, "s.yaml")
        unknown = [line for line in info.value.lines() if f"unknown key {key!r}" in line]
        assert len(unknown) == 1, info.value.lines()
        assert unknown[0].startswith(f"s.yaml:{where}: ")


def test_union_tags_not_in_the_file_are_dropped() -> None:
    data = {"steps": [{"at_s": 1}]}
    loc = ("steps", 0, "function-after[_check(), StepSpec]", "int", "at_s")
    assert file_key_path(data, loc, union_tags=True) == ("steps", 0, "at_s")
    assert file_key_path(data, ("steps", 0, "int"), union_tags=False) == ("steps", 0, "int")


@pytest.mark.parametrize(
    "kind",
    ["missing", "extra_forbidden", "greater_than", "value_error", "int_type", "dict_type"],
)
def test_an_error_on_the_document_itself_is_a_message_not_a_crash(kind: str) -> None:
    """An error whose location is empty (the document itself) still reads as a problem."""
    document = parse_yaml("treadmill: {}\n", "t.yaml")
    error = {"type": kind, "loc": (), "msg": "Value error, bad", "input": 1, "ctx": {"gt": 0}}
    issue = schema_issue(document, error, AppConfig)
    assert issue.message
    assert (issue.line, issue.col) == (1, 1)
    assert issue.key_path == "(top level)"

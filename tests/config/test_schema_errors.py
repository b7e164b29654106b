"""The one formatter of pydantic errors: keys named like pydantic's union tags stay in the path."""

from __future__ import annotations

import pytest

from controller.config import load_config_text
from controller.errors import ConfigError


@pytest.mark.parametrize("key", ["none", "int", "str", "float", "bool"])
def test_an_unknown_key_named_like_a_type_is_reported_at_its_line(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f"{key}: null\n", "t.yaml")
    unknown = [line for line in info.value.lines() if "unknown key" in line]
    assert unknown == [unknown[0]]
    assert unknown[0].startswith(f"t.yaml:1:1: {key}: unknown key {key!r}")

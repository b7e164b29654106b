"""The examples in the codec modules' docstrings run and print what they say."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from firmware_bridge.wire import codec, crc, faults, link, messages


@pytest.mark.parametrize("module", [crc, messages, faults, codec, link], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0

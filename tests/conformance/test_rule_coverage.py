"""Every FW rule of docs/firmware-safety.md has a conformance test named after it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conformance import test_fw_rules

DOC = Path(__file__).resolve().parents[2] / "docs" / "firmware-safety.md"


def test_every_fw_rule_has_a_conformance_test() -> None:
    rules = sorted(set(re.findall(r"^### (FW-\d+) ", DOC.read_text(), flags=re.MULTILINE)))
    assert len(rules) >= 15
    tested = {
        "FW-" + match.group(1)
        for name in dir(test_fw_rules)
        if (match := re.match(r"test_FW_(\d+)_", name))
    }
    missing = [rule for rule in rules if rule not in tested]
    assert not missing, f"FW rules without a conformance test: {missing}"

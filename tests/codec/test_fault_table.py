"""FW-2's stop categories have one definition, the wire data dictionary
(firmware_bridge/wire/faults.py), and every implementation takes them from it.

The simulated firmware imports it; the C core reads the generated ``FAULT_CATEGORY_0_MASK``
(firmware/core/msg_table.h), whose own unit test (``make -C firmware test``) checks the mask
against the contract and the shutdown behaviour against the mask; the controller derives its
emergency set from it (tests/core, SR-FW-1); docs/protocol.md's fault table is generated
from it (tests/codec/test_protocol_doc.py) and docs/firmware-safety.md lists the same
categories (below).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from firmware_bridge.wire.faults import CATEGORY_0_FAULTS, FAULT_SPECS, FAULTS, StopCategory
from firmware_bridge.wire.messages import FwFault

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "firmware" / "core"


def _generator() -> ModuleType:
    path = ROOT / "firmware" / "tools" / "gen_msg_table.py"
    spec = importlib.util.spec_from_file_location("gen_msg_table", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_FW_2_every_fault_code_has_one_row_with_a_category() -> None:
    assert [spec.code for spec in FAULTS] == list(FwFault)
    assert FAULT_SPECS[FwFault.NONE].category is None
    assert all(spec.category is not None for spec in FAULTS if spec.code is not FwFault.NONE)
    assert {
        code for code, spec in FAULT_SPECS.items() if spec.category is StopCategory.CUT_POWER
    } == CATEGORY_0_FAULTS


def test_FW_2_the_safety_contract_lists_the_same_categories() -> None:
    text = (ROOT / "docs" / "firmware-safety.md").read_text(encoding="utf-8")
    section = text[text.index("### FW-2 One shutdown path") :]
    section = section[: section.index("\n### ")]

    def listed(label: str) -> set[str]:
        match = re.search(rf"\*\*{label}[^*]*\*\*: (.*?):", section, flags=re.DOTALL)
        assert match is not None, label
        return {name.strip() for name in match.group(1).replace("\n", " ").split(",")}

    category_1 = {spec.code.name for spec in FAULTS if spec.category is StopCategory.RAMP_THEN_CUT}
    assert listed("Category 0") == {code.name for code in CATEGORY_0_FAULTS}
    assert listed("Category 1") == category_1


def test_FW_2_the_c_header_carries_the_table() -> None:
    header = (CORE / "msg_table.h").read_text(encoding="utf-8")
    assert header == _generator().render(), (
        "firmware/core/msg_table.h is stale: run `python firmware/tools/gen_msg_table.py --write`"
    )
    match = re.search(r"#define FAULT_CATEGORY_0_MASK 0x([0-9A-F]+)u", header)
    assert match is not None
    mask = int(match.group(1), 16)
    assert {code for code in FwFault if mask >> code & 1} == CATEGORY_0_FAULTS


def test_FW_2_the_c_shutdown_path_takes_its_categories_from_the_header() -> None:
    """fw.c decides the category with the generated mask and keeps no list of its own."""
    source = (CORE / "fw.c").read_text(encoding="utf-8")
    match = re.search(r"static bool category_0\(uint8_t fault\) \{(.*?)\n\}", source, re.DOTALL)
    assert match is not None
    body = match.group(1)
    assert "FAULT_CATEGORY_0_MASK" in body
    assert re.search(r"FAULT_[A-Z_]+", body.replace("FAULT_CATEGORY_0_MASK", "")) is None
    assert source.count("category_0(") == 2  # its definition and the one call in shutdown()


def test_FW_2_the_c_fault_codes_are_the_wire_codes() -> None:
    header = (CORE / "proto.h").read_text(encoding="utf-8")
    codes = {name: int(value) for name, value in re.findall(r"FAULT_([A-Z_]+) = (\d+)", header)}
    assert codes == {code.name: code.value for code in FwFault}

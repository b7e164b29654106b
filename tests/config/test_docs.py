"""docs/configuration.md follows the code: its key table is the one the schema generates."""

from __future__ import annotations

from pathlib import Path

from controller.settings.reference import key_reference, key_reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_key_table_in_the_docs_matches_the_schema() -> None:
    text = DOC.read_text()
    begin = text.index("<!-- keys:begin -->\n") + len("<!-- keys:begin -->\n")
    end = text.index("<!-- keys:end -->")
    assert text[begin:end] == key_reference_markdown(), (
        "docs/configuration.md is out of date: paste "
        "controller.settings.reference.key_reference_markdown()"
        " between the keys markers"
    )


def test_every_ranged_key_states_its_range_and_every_key_its_meaning() -> None:
    rows = key_reference()
    assert len(rows) > 80
    for row in rows:
        assert row.description, row.key
        if row.key.endswith(("_ms", "_kmh", "_kmh_s", "_hz", "_s")) and row.kind != "section":
            assert row.allowed, f"{row.key} has no documented range"


def test_error_format_is_documented() -> None:
    text = DOC.read_text()
    assert "PATH:LINE:COL: key.path: message" in text
    assert "78" in text

"""The README's configuration table is generated from Settings and kept current."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillcoach.settings import Settings
from skillcoach_devstack.settings_doc import BEGIN, END, render_table, replace_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_what_settings_say() -> None:
    text = README.read_text()
    assert replace_table(text) == text, "README.md is stale: run `make docs`"


def test_every_setting_has_a_row_with_its_default_and_bounds() -> None:
    table = render_table()
    for name, field in Settings.model_fields.items():
        assert f"`SKILLCOACH_{name.upper()}`" in table
        assert field.description, f"{name} has no description"
    assert "| `SKILLCOACH_POOL_SIZE` | `16` | 1 ≤ x ≤ 1,000 |" in table
    assert "| `SKILLCOACH_LOG_LEVEL` | `info` | `debug`, `info`, `warning`, `error` |" in table
    assert "| `SKILLCOACH_POOL_FILE` | unset |" in table


def test_a_changed_default_makes_the_readme_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    text = replace_table(f"intro\n{BEGIN}\n{END}\n")
    monkeypatch.setattr(Settings.model_fields["pool_size"], "default", 17)
    assert replace_table(text) != text


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_table("no table here")

"""Transaction pooling forbids session state: every SQL string the package sends is checked
for statements that would leak state to the next client of the same server connection."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "skillcoach"
FORBIDDEN = [
    (re.compile(r"^\s*SET\s+(?!LOCAL\b|TRANSACTION\b)", re.I | re.M), "SET without LOCAL"),
    (re.compile(r"pg_advisory_lock\s*\(", re.I), "session advisory lock"),
    (re.compile(r"^\s*(LISTEN|NOTIFY|UNLISTEN)\b", re.I | re.M), "LISTEN/NOTIFY"),
    (re.compile(r"^\s*(PREPARE|DEALLOCATE)\b", re.I | re.M), "server-side prepared statement"),
    (
        re.compile(r"^\s*CREATE\s+TEMP(ORARY)?\s+TABLE\b(?!.*ON COMMIT DROP)", re.I | re.M),
        "temporary table outliving the transaction",
    ),
]


def sql_strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            out.append((node.lineno, text))
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_of_the_service_is_checked() -> None:
    # A moved package must not shrink the check to nothing without anyone noticing.
    assert len(SOURCES) > 40
    assert PACKAGE / "data" / "attempt_writes.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_session_state_in_sql(path: Path) -> None:
    problems = [
        f"{path.name}:{line}: {why}: {text.strip()[:80]!r}"
        for line, text in sql_strings(path)
        for pattern, why in FORBIDDEN
        if pattern.search(text)
    ]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_session_set() -> None:
    assert FORBIDDEN[0][0].search("SET statement_timeout = 5")
    assert not FORBIDDEN[0][0].search("SET LOCAL statement_timeout = 5")
    assert FORBIDDEN[1][0].search("SELECT pg_advisory_lock(1)")
    assert not FORBIDDEN[1][0].search("SELECT pg_advisory_xact_lock(1)")

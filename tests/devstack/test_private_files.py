"""Files of the local stack that hold or echo the demo API key are private to their owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from skillcoach_devstack import envfile
from skillcoach_devstack.commands import _cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_env_file_with_the_demo_key_is_0600(tmp_path: Path) -> None:
    path = tmp_path / ".stack" / "env"
    envfile.write_env(path, {"SKILLCOACH_API_KEY": "sk_demo"})
    assert mode(path) == 0o600
    assert envfile.read_env(path)["SKILLCOACH_API_KEY"] == "sk_demo"


def test_write_private_creates_0600_and_tightens_an_older_world_readable_file(
    tmp_path: Path,
) -> None:
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "logs" / "apikey.log"
        envfile.write_private(fresh, "sk_secret\n")
        assert mode(fresh) == 0o600
        older = tmp_path / "older.log"
        older.write_text("from before")
        older.chmod(0o644)
        envfile.write_private(older, "sk_secret\n")
        assert mode(older) == 0o600
        assert older.read_text() == "sk_secret\n"
    finally:
        os.umask(old_umask)


def test_cli_logs_are_private(tmp_path: Path) -> None:
    # `skillcoach apikey create` prints the key and _cli logs its output: any CLI log is 0600.
    log = tmp_path / "logs" / "help.log"
    out = _cli(["--help"], env=dict(os.environ), log=log, cwd=tmp_path, timeout=60)
    assert "serve" in out
    assert mode(log) == 0o600
    assert "serve" in log.read_text()

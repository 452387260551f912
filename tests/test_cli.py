from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint

import pytest

from skillcoach import cli
from skillcoach.cli import PLUGIN_GROUP, main


def test_seed_train_promote_and_key_through_the_cli(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", empty_pg_url)
    assert (
        main(
            [
                "seed",
                "--learners",
                "60",
                "--skills",
                "5",
                "--exercises-per-skill",
                "4",
                "--attempts-per-learner",
                "30",
                "--quiet",
            ]
        )
        == 0
    )
    # A second seed without --replace refuses in one line instead of mixing data.
    assert main(["seed", "--learners", "60", "--quiet"]) == 1
    assert "skillcoach seed:" in capsys.readouterr().err
    # --if-empty (the chart's demo-data job) leaves existing data alone and succeeds.
    assert main(["seed", "--learners", "60", "--quiet", "--if-empty"]) == 0
    assert "not seeded:" in capsys.readouterr().out
    assert main(["train"]) == 0
    assert main(["promote", "1"]) == 0
    assert main(["promote", "99"]) == 1
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "* v1" in out
    assert main(["apikey", "create", "--scope", "read,write"]) == 0
    assert capsys.readouterr().out.strip().startswith("sk_")
    assert main(["apikey", "create", "--scope", "root"]) == 2


def test_bad_settings_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKILLCOACH_POOL_SIZE", "many")
    with pytest.raises(SystemExit) as exc:
        main(["migrate"])
    assert exc.value.code == 2
    assert "SKILLCOACH_POOL_SIZE" in capsys.readouterr().err


def test_plugins_add_subcommands_and_a_broken_one_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def good(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        sub.add_parser("hello").set_defaults(func=lambda args: 7)

    def broken(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        raise RuntimeError("missing dependency")

    entries = [
        EntryPoint("hello", "x:good", PLUGIN_GROUP),
        EntryPoint("broken", "x:broken", PLUGIN_GROUP),
    ]
    plugins = {"hello": good, "broken": broken}
    monkeypatch.setattr(EntryPoint, "load", lambda self: plugins[self.name])
    monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in entries if e.group == group])
    assert main(["hello"]) == 7
    assert "plugin 'broken' not loaded: missing dependency" in capsys.readouterr().err


def test_the_dev_install_has_the_stack_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    # Registered by the skillcoach-devstack distribution (devstack/pyproject.toml).
    with pytest.raises(SystemExit) as exc:
        main(["stack", "--help"])
    assert exc.value.code == 0
    assert "up [--replicas N]" in capsys.readouterr().out

from __future__ import annotations

import pytest

from skillcoach.cli import main


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

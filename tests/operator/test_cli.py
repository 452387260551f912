"""`python -m skillcoach_operator`: --version, the SKILLCOACH_OPERATOR_* settings it refuses
(naming the variable), and the handlers it registers in a registry of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skillcoach_operator import __version__
from skillcoach_operator.__main__ import main
from skillcoach_operator.builders import merge_patch
from skillcoach_operator.config import ConfigError, load_config
from skillcoach_operator.operator import build_registry


def test_version_and_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"skillcoach-operator {__version__}\n"
    assert main(["run"]) == 2
    assert "only --version" in capsys.readouterr().err


def test_the_module_refuses_to_start_without_a_namespace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skillcoach_operator"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "SKILLCOACH_OPERATOR_NAMESPACE is required" in result.stderr


def test_settings_are_read_and_checked() -> None:
    config = load_config(
        {
            "SKILLCOACH_OPERATOR_NAMESPACE": "shop",
            "SKILLCOACH_OPERATOR_RESYNC_SECONDS": "7.5",
            "SKILLCOACH_OPERATOR_LOG_LEVEL": "DEBUG",
            "HOSTNAME": "op-1",
        }
    )
    assert (config.namespace, config.resync_seconds, config.log_level) == ("shop", 7.5, "debug")
    assert (config.log_format, config.instance) == ("json", "op-1")
    assert config.liveness == "http://0.0.0.0:8080/healthz"
    for env, problem in (
        ({"SKILLCOACH_OPERATOR_NAMESPACE": "Shop_1"}, "NAMESPACE='Shop_1' is not a namespace"),
        ({"SKILLCOACH_OPERATOR_RESYNC_SECONDS": "0"}, "RESYNC_SECONDS='0' must be between"),
        ({"SKILLCOACH_OPERATOR_LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' must be one of"),
        ({"SKILLCOACH_OPERATOR_LIVENESS": "https://x/h"}, "must be an http:// URL"),
    ):
        with pytest.raises(ConfigError, match=problem):
            load_config({"SKILLCOACH_OPERATOR_NAMESPACE": "shop", **env})


def test_each_registry_holds_the_handlers_of_one_operator() -> None:
    config = load_config({"SKILLCOACH_OPERATOR_NAMESPACE": "shop"})
    first, second = build_registry(config), build_registry(config)
    assert first is not second
    for registry in (first, second):
        ids = {h.id for h in registry._changing.get_all_handlers()}
        ids |= {h.id for h in registry._spawning.get_all_handlers()}
        ids |= {h.id for h in registry._watching.get_all_handlers()}
        ids |= {h.id for h in registry._indexing.get_all_handlers()}
        assert ids == {"policy", "resync", "deployment", "policies_by_deployment"}


def test_a_status_patch_removes_what_the_new_status_drops() -> None:
    old = {"pending": {"since": "x"}, "pool": {"perPod": 9, "total": 99}, "boundBy": "A"}
    new = {"pool": {"perPod": 16, "total": 99}, "boundBy": "A"}
    assert merge_patch(old, new) == {"pending": None, "pool": {"perPod": 16}}
    assert merge_patch(new, new) == {}

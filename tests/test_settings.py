from __future__ import annotations

import pytest

from skillcoach.settings import SettingsError, load_settings


def test_defaults_are_a_steady_pool_with_a_short_checkout() -> None:
    s = load_settings()
    assert (s.pool_size, s.max_overflow, s.pool_timeout, s.pool_recycle, s.pool_pre_ping) == (
        16,
        0,
        2.0,
        3600,
        True,
    )


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLCOACH_PORT", "9001")
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", "postgresql://u:p@db:6432/x")
    s = load_settings()
    assert s.port == 9001
    assert s.sqlalchemy_url == "postgresql+psycopg2://u:p@db:6432/x"
    assert "p@db" not in repr(s)  # secrets hidden


def test_bad_values_fail_fast_naming_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLCOACH_PORT", "http")
    monkeypatch.setenv("SKILLCOACH_POOL_SIZE", "0")
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", "mysql://x")
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    for var in ("SKILLCOACH_PORT", "SKILLCOACH_POOL_SIZE", "SKILLCOACH_DATABASE_URL"):
        assert var in text


def test_auth_cannot_be_disabled_in_prod() -> None:
    with pytest.raises(SettingsError, match="auth_enabled"):
        load_settings(environment="prod", auth_enabled=False)


def test_a_password_from_its_own_variable_joins_the_database_url() -> None:
    s = load_settings(
        database_url="postgresql://app@pgbouncer:6432/skillcoach",
        database_password="p@ss:w/rd",
    )
    assert s.sqlalchemy_url == "postgresql+psycopg2://app:p%40ss%3Aw%2Frd@pgbouncer:6432/skillcoach"
    assert "p@ss" not in repr(s)
    assert load_settings(database_url="postgresql://app:x@h/db").sqlalchemy_url.endswith(
        "app:x@h/db"
    )


def test_metrics_have_their_own_port_by_default_and_logs_are_json() -> None:
    s = load_settings()
    assert (s.metrics_port, s.log_format, s.access_log) == (9000, "json", False)
    assert load_settings(metrics_port=0).metrics_port == 0  # development: on the API port
    with pytest.raises(SettingsError, match="metrics_port must differ"):
        load_settings(port=9100, metrics_port=9100)
    with pytest.raises(SettingsError, match="SKILLCOACH_LOG_FORMAT"):
        load_settings(log_format="xml")

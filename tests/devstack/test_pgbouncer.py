"""PgBouncer: the rendered config (pure) and a real PgBouncer in transaction mode."""

from __future__ import annotations

import configparser
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from skillcoach.pgbouncer.admin import admin_query
from skillcoach_devstack.pgbouncer import (
    ADMIN_USER,
    PgBouncer,
    PgBouncerConfig,
    default_template_path,
    render_config,
    render_userlist,
    runtime_dir_for,
)
from skillcoach_devstack.postgres import libpq_url

TEMPLATE = default_template_path().read_text()


def _parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _config(**overrides: object) -> PgBouncerConfig:
    values: dict[str, object] = {
        "listen_port": 7777,
        "runtime_dir": Path("/tmp/skillcoach-pgbouncer-7777"),
        "databases": ["skillcoach"],
        "server_host": "127.0.0.1",
        "server_port": 5433,
    }
    values.update(overrides)
    return PgBouncerConfig(**values)  # type: ignore[arg-type]


def test_template_is_found_in_the_checkout() -> None:
    assert default_template_path().is_file()


def test_rendered_config_has_transaction_pooling_and_the_values() -> None:
    cfg = _config(
        default_pool_size=13,
        reserve_pool_size=4,
        reserve_pool_timeout=0.5,
        max_client_conn=321,
        max_db_connections=42,
        query_wait_timeout=7,
    )
    ini = _parse(render_config(TEMPLATE, cfg))
    pg = ini["pgbouncer"]
    assert pg["pool_mode"] == "transaction"
    assert pg["listen_addr"] == "127.0.0.1"
    assert pg["listen_port"] == "7777"
    assert pg["default_pool_size"] == "13"
    assert pg["reserve_pool_size"] == "4"
    assert pg["reserve_pool_timeout"] == "0.5"
    assert pg["max_client_conn"] == "321"
    assert pg["max_db_connections"] == "42"
    assert pg["query_wait_timeout"] == "7"
    assert pg["server_reset_query"] == ""
    assert pg["server_reset_query_always"] == "0"
    assert pg["ignore_startup_parameters"] == "extra_float_digits,options"
    assert pg["auth_type"] == "scram-sha-256"
    assert pg["admin_users"] == ADMIN_USER
    assert pg["unix_socket_dir"] == ""
    for key in ("logfile", "pidfile", "auth_file"):
        assert pg[key].startswith("/tmp/skillcoach-pgbouncer-7777/")
    assert ini["databases"]["skillcoach"] == "host=127.0.0.1 port=5433 dbname=skillcoach"
    assert ini["databases"]["*"] == "host=127.0.0.1 port=5433"


def test_runtime_files_can_be_placed_elsewhere() -> None:
    # How the Helm chart renders the same template: stderr, no pidfile, a mounted userlist.
    cfg = _config(logfile="", pidfile="", auth_file="/etc/pgbouncer/auth/userlist.txt")
    pg = _parse(render_config(TEMPLATE, cfg))["pgbouncer"]
    assert (pg["logfile"], pg["pidfile"]) == ("", "")
    assert pg["auth_file"] == "/etc/pgbouncer/auth/userlist.txt"
    bouncer = PgBouncer(config=cfg, users={}, template_path=Path("/n"))
    assert bouncer.userlist_path == Path("/etc/pgbouncer/auth/userlist.txt")
    default = PgBouncer(config=_config(), users={}, template_path=Path("/n"))
    assert default.pidfile == Path("/tmp/skillcoach-pgbouncer-7777/pgbouncer.pid")
    assert default.logfile == Path("/tmp/skillcoach-pgbouncer-7777/pgbouncer.log")


def test_every_placeholder_is_filled() -> None:
    assert "${" not in render_config(TEMPLATE, _config())
    assert "$" not in render_config(TEMPLATE, _config())


def test_wildcard_database_can_be_left_out() -> None:
    ini = _parse(render_config(TEMPLATE, _config(wildcard=False, databases=["a", "b"])))
    assert dict(ini["databases"]) == {
        "a": "host=127.0.0.1 port=5433 dbname=a",
        "b": "host=127.0.0.1 port=5433 dbname=b",
    }


def test_a_missing_value_fails_at_render_time() -> None:
    with pytest.raises(KeyError, match="nonsense"):
        render_config(TEMPLATE + "\nx = ${nonsense}\n", _config())


def test_userlist_quotes_and_escapes() -> None:
    assert render_userlist({"app": "pw", 'we"ird': 'a"b'}) == '"app" "pw"\n"we""ird" "a""b"\n'


def test_runtime_dir_is_under_tmp_per_port() -> None:
    assert runtime_dir_for(6432) == Path("/tmp/skillcoach-pgbouncer-6432")


def test_urls_quote_the_password() -> None:
    bouncer = PgBouncer(
        config=_config(), users={"app": "p@ss/word", ADMIN_USER: "x"}, template_path=Path("/n")
    )
    url = make_url(bouncer.url("app", "skillcoach"))
    assert (url.username, url.password, url.port, url.database) == (
        "app",
        "p@ss/word",
        7777,
        "skillcoach",
    )
    assert bouncer.admin_url == f"postgresql://{ADMIN_USER}:x@127.0.0.1:7777/pgbouncer"


@pytest.mark.integration
def test_queries_go_through_pgbouncer(pgbouncer_url: str, pg_url: str) -> None:
    engine = create_engine(pgbouncer_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            db = conn.execute(text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert db == make_url(pg_url).database
    assert make_url(pgbouncer_url).port != make_url(pg_url).port


@pytest.mark.integration
def test_show_pools_lists_the_database_in_transaction_mode(
    pgbouncer_url: str, pgbouncer_admin_url: str, pg_url: str
) -> None:
    conn = psycopg2.connect(libpq_url(pgbouncer_url), connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()
    pools = admin_query(pgbouncer_admin_url, "SHOW POOLS")
    database = make_url(pg_url).database
    ours = [p for p in pools if p["database"] == database]
    assert ours, pools
    assert {p["pool_mode"] for p in ours} == {"transaction"}
    config = {r["key"]: r["value"] for r in admin_query(pgbouncer_admin_url, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"


@pytest.mark.integration
def test_a_wrong_password_is_refused(pgbouncer_url: str) -> None:
    url = make_url(pgbouncer_url).set(password="wrong")
    dsn = libpq_url(url.render_as_string(hide_password=False))
    with pytest.raises(psycopg2.OperationalError, match="authentication failed"):
        psycopg2.connect(dsn, connect_timeout=3)


@pytest.mark.integration
def test_a_restarted_pgbouncer_serves_again(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str
) -> None:
    bouncer: PgBouncer = make_pgbouncer()
    user = make_url(pg_url).username or "postgres"
    url = libpq_url(bouncer.url(user, make_url(pg_url).database or "postgres"))
    assert bouncer.stop()
    assert not bouncer.is_running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2)
    bouncer.start(timeout=15)
    conn = psycopg2.connect(url, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()

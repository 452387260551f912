"""The pool and PgBouncer board: each replica's connection pool, what waits for it, PgBouncer's
queue, and the budget that sizes them all.

PgBouncer's numbers come from `skillcoach pgbouncer-exporter` locally (skillcoach_pgbouncer_*)
and from the prometheus-community exporter on Kubernetes (pgbouncer_pools_*, pgbouncer_stats_*):
each PgBouncer query is `A or B` over the two, aggregated by database so both sides carry the
same labels.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from skillcoach_devstack.dashboards.common import NS, RATE, Query, new_board

__all__ = ["build"]


def _pgbouncer(agg: str, local: str, community: str, *, rate: bool = False) -> str:
    """One PgBouncer series from whichever exporter is there."""

    def side(name: str) -> str:
        selector = f"{name}{{{NS}}}"
        inner = f"rate({selector}[{RATE}])" if rate else selector
        return f"{agg} by (database) ({inner})"

    return f"{side(local)} or {side(community)}"


def build() -> Dashboard:
    board = new_board(
        "skillcoach-pool",
        "skillcoach pool and PgBouncer",
        "Every replica's connection pool, the requests waiting for it, PgBouncer's queue and"
        " the client budget the pools are sized from. docs/observability.md says what to do"
        " with each panel.",
    )
    board.row("Pool budget")
    board.stat(
        "Pools / client budget",
        "The sum of every replica's pool maximum over PgBouncer's client budget for the API"
        " (from the pool files). Over 80% alerts: a surge or a restart may not fit.",
        [
            Query(
                f"sum(skillcoach_db_pool_capacity{{{NS}}})"
                f" / max(skillcoach_db_pool_client_budget{{{NS}}} > 0)"
            )
        ],
        unit="percentunit",
        red_above=0.8,
    )
    board.stat(
        "Sum of pool maxima",
        "Connections all replicas may hold at once (pool_size + max_overflow, summed).",
        [Query(f"sum(skillcoach_db_pool_capacity{{{NS}}})")],
    )
    board.stat(
        "Client budget",
        "PgBouncer's client connections kept for the API (max_client_conn less the reserve),"
        " as written in the pool files.",
        [Query(f"max(skillcoach_db_pool_client_budget{{{NS}}})")],
    )
    board.stat(
        "Pool file generation",
        "The newest pool file generation applied; the lowest replica's below it has not"
        " applied the latest resize yet.",
        [
            Query(f"max(skillcoach_db_pool_generation{{{NS}}})", legend="newest"),
            Query(f"min(skillcoach_db_pool_generation{{{NS}}})", legend="oldest"),
        ],
    )

    board.row("Replica pools")
    board.timeseries(
        "Pool utilization per replica",
        "Checked-out connections over the pool's capacity. Near 1 the next request waits.",
        [
            Query(
                f"max by (pod) (skillcoach_db_pool_checked_out{{{NS}}})"
                f" / max by (pod) (skillcoach_db_pool_capacity{{{NS}}})",
                legend="{{pod}}",
            )
        ],
        unit="percentunit",
        maximum=1,
        red_above=0.9,
    )
    board.timeseries(
        "Waiters per replica",
        "Requests waiting for a pool connection right now. Above 0 for 2 minutes alerts.",
        [Query(f"max by (pod) (skillcoach_db_pool_waiters{{{NS}}})", legend="{{pod}}")],
    )
    board.timeseries(
        "Checkout wait p99",
        "The 99th percentile of the time from asking for a connection to holding one.",
        [
            Query(
                "histogram_quantile(0.99, sum by (le, pod) (rate("
                f"skillcoach_db_checkout_wait_seconds_bucket{{{NS}}}[{RATE}])))",
                legend="{{pod}}",
            )
        ],
        unit="s",
    )
    board.timeseries(
        "Checkout timeouts",
        "Requests refused with 503 because no connection came free before the deadline.",
        [
            Query(
                f"sum by (pod) (rate(skillcoach_db_checkout_timeouts_total{{{NS}}}[{RATE}]))",
                legend="{{pod}}",
            )
        ],
        unit="ops",
    )
    board.timeseries(
        "Connections held too long",
        "Connections each replica has held longer than LONG_CHECKOUT_SECONDS right now.",
        [Query(f"max by (pod) (skillcoach_db_pool_long_held{{{NS}}})", legend="{{pod}}")],
    )
    board.timeseries(
        "Database errors",
        "Failures to reach the database, statement timeouts, and reads retried after a"
        " transient error, per second over every replica.",
        [
            Query(
                f"sum(rate(skillcoach_db_connection_errors_total{{{NS}}}[{RATE}]))",
                legend="connection errors",
            ),
            Query(
                f"sum(rate(skillcoach_db_query_timeouts_total{{{NS}}}[{RATE}]))",
                legend="query timeouts",
            ),
            Query(f"sum(rate(skillcoach_db_retries_total{{{NS}}}[{RATE}]))", legend="retries"),
        ],
        unit="ops",
    )
    board.timeseries(
        "Learners per evidence statement",
        "How many learners each uncached evidence read asked for in one statement, per"
        " replica: 1 while requests come one at a time, more when concurrent requests shared"
        " a statement (each shared one saves a round trip and a pass through PgBouncer).",
        [
            Query(
                f"sum by (pod) (rate(skillcoach_db_shared_read_learners_sum{{{NS}}}[{RATE}]))"
                " / sum by (pod) (rate("
                f"skillcoach_db_shared_read_learners_count{{{NS}}}[{RATE}]))",
                legend="{{pod}}",
            )
        ],
    )
    board.timeseries(
        "Evidence reads",
        "Learners whose evidence was read from PostgreSQL per second, and the statements that"
        " read them, over every replica. The gap between the two is the statements saved.",
        [
            Query(
                f"sum(rate(skillcoach_db_shared_read_learners_sum{{{NS}}}[{RATE}]))",
                legend="learners",
            ),
            Query(
                f"sum(rate(skillcoach_db_shared_read_learners_count{{{NS}}}[{RATE}]))",
                legend="statements",
            ),
        ],
        unit="ops",
    )

    board.row("PgBouncer")
    board.timeseries(
        "Clients waiting at PgBouncer",
        "Client connections that sent a query and wait for a PostgreSQL connection (SHOW"
        " POOLS cl_waiting). Above 0 for 2 minutes alerts.",
        [
            Query(
                _pgbouncer(
                    "sum",
                    "skillcoach_pgbouncer_client_waiting_connections",
                    "pgbouncer_pools_client_waiting_connections",
                ),
                legend="{{database}}",
            )
        ],
    )
    board.timeseries(
        "Longest PgBouncer wait",
        "How long the oldest waiting client has waited (SHOW POOLS maxwait). Over 1 s for a"
        " minute alerts.",
        [
            Query(
                _pgbouncer(
                    "max",
                    "skillcoach_pgbouncer_max_wait_seconds",
                    "pgbouncer_pools_client_maxwait_seconds",
                ),
                legend="{{database}}",
            )
        ],
        unit="s",
    )
    board.timeseries(
        "PgBouncer server connections",
        "PostgreSQL connections in use by a client and idle, by database.",
        [
            Query(
                _pgbouncer(
                    "sum",
                    "skillcoach_pgbouncer_server_active_connections",
                    "pgbouncer_pools_server_active_connections",
                ),
                legend="{{database}} active",
            ),
            Query(
                _pgbouncer(
                    "sum",
                    "skillcoach_pgbouncer_server_idle_connections",
                    "pgbouncer_pools_server_idle_connections",
                ),
                legend="{{database}} idle",
            ),
        ],
    )
    board.timeseries(
        "PgBouncer transactions",
        "Transactions per second PgBouncer pooled, by database.",
        [
            Query(
                _pgbouncer(
                    "sum",
                    "skillcoach_pgbouncer_transactions_total",
                    "pgbouncer_stats_sql_transactions_pooled_total",
                    rate=True,
                ),
                legend="{{database}}",
            )
        ],
        unit="ops",
    )
    return board.builder

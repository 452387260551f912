"""The overview: is the API answering, how fast, with how many errors and shed requests, on how
many ready replicas, with which model."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from skillcoach_devstack.dashboards.common import NS, RATE, Query, api_routes, new_board

__all__ = ["build"]

API = api_routes()
API_AND_SHED = api_routes(shed=True)


def _latency(quantile: float, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return (
        f"histogram_quantile({quantile}, sum by ({group}) "
        f"(rate(skillcoach_http_request_duration_seconds_bucket{{{NS}, {API}}}[{RATE}])))"
    )


def build() -> Dashboard:
    board = new_board(
        "skillcoach-overview",
        "skillcoach overview",
        "Traffic, latency, errors and shedding of the API, its replicas and the model they"
        " serve. docs/observability.md says what to do with each panel.",
    )
    board.row("Traffic")
    board.stat(
        "Requests per second",
        "API requests per second over every replica, shed ones included.",
        [Query(f"sum(rate(skillcoach_http_requests_total{{{NS}, {API_AND_SHED}}}[{RATE}]))")],
        unit="reqps",
    )
    board.stat(
        "Errors (5xx)",
        "Share of API requests answered with a 5xx (shed requests included). The objective"
        " allows 0.1%.",
        [
            Query(
                f'sum(rate(skillcoach_http_requests_total{{{NS}, {API_AND_SHED}, status=~"5.."}}'
                f"[{RATE}])) / sum(rate(skillcoach_http_requests_total{{{NS}, {API_AND_SHED}}}"
                f"[{RATE}]))"
            )
        ],
        unit="percentunit",
        red_above=0.001,
    )
    board.stat(
        "Within 0.5 s",
        "Share of API requests answered within 0.5 s. The objective is 99%.",
        [
            Query(
                f"sum(rate(skillcoach_http_request_duration_seconds_bucket{{{NS}, {API},"
                f' le="0.5"}}[{RATE}])) / sum(rate(skillcoach_http_request_duration_seconds_count'
                f"{{{NS}, {API}}}[{RATE}]))"
            )
        ],
        unit="percentunit",
    )
    board.stat(
        "Ready replicas",
        "Replicas answering /readyz with 200, of those reporting.",
        [
            Query(f"sum(skillcoach_ready{{{NS}}})", legend="ready"),
            Query(f"count(skillcoach_ready{{{NS}}})", legend="reporting"),
        ],
    )
    board.timeseries(
        "Requests by route",
        "Requests per second by route template (route=shed: refused by admission control).",
        [
            Query(
                f"sum by (route) (rate(skillcoach_http_requests_total{{{NS}}}[{RATE}]))",
                legend="{{route}}",
            )
        ],
        unit="reqps",
    )
    board.timeseries(
        "Responses by status",
        "Responses per second by HTTP status, every route.",
        [
            Query(
                f"sum by (status) (rate(skillcoach_http_requests_total{{{NS}}}[{RATE}]))",
                legend="{{status}}",
            )
        ],
        unit="reqps",
    )

    board.row("Latency")
    board.timeseries(
        "API latency p50 / p95 / p99",
        "Quantiles of the API routes' request duration over every replica (cache fast-path"
        " hits included).",
        [
            Query(_latency(0.5), legend="p50"),
            Query(_latency(0.95), legend="p95"),
            Query(_latency(0.99), legend="p99"),
        ],
        unit="s",
        red_above=0.5,
    )
    board.timeseries(
        "p99 by route",
        "The 99th percentile of each API route.",
        [Query(_latency(0.99, "route"), legend="{{route}}")],
        unit="s",
        red_above=0.5,
    )

    board.row("Errors and shedding")
    board.timeseries(
        "5xx by route and status",
        "Server errors per second; 503 on route=shed is admission control, 503 elsewhere a"
        " deadline, the database or no model.",
        [
            Query(
                f"sum by (route, status) (rate(skillcoach_http_requests_total{{{NS},"
                f' status=~"5.."}}[{RATE}]))',
                legend="{{status}} {{route}}",
            )
        ],
        unit="reqps",
    )
    board.timeseries(
        "Shed requests per replica",
        "Requests each replica answered 503 before routing: queued too long at its request"
        " gate, or refused at once at its in-flight limit.",
        [
            Query(
                "sum by (pod) (rate(skillcoach_http_requests_total"
                f'{{{NS}, route="shed"}}[{RATE}]))',
                legend="{{pod}}",
            )
        ],
        unit="reqps",
    )
    board.timeseries(
        "Gates overloaded per replica",
        "1 while a gate serves newest first and sheds requests that queued longer than twice"
        " DB_GATE_INTERVAL_MS: the request gate in front of the application, and the DB slot"
        " gate in front of the pool.",
        [
            Query(
                f"max by (pod) (skillcoach_http_gate_overloaded{{{NS}}})",
                legend="{{pod}} request gate",
            ),
            Query(
                f"max by (pod) (skillcoach_db_gate_overloaded{{{NS}}})",
                legend="{{pod}} DB gate",
            ),
        ],
    )
    board.timeseries(
        "In flight vs limit",
        "Requests in flight on each replica (running, or waiting at its request gate), and the"
        " limit (pool capacity + queue allowance) past which it sheds at once.",
        [
            Query(
                f"max by (pod) (skillcoach_http_requests_in_flight{{{NS}}})",
                legend="{{pod}} in flight",
            ),
            Query(
                f"max by (pod) (skillcoach_http_in_flight_limit{{{NS}}})", legend="{{pod}} limit"
            ),
        ],
    )
    board.timeseries(
        "Readiness per replica",
        "1 while the replica answers /readyz with 200 (database reachable, model loaded).",
        [Query(f"max by (pod) (skillcoach_ready{{{NS}}})", legend="{{pod}}")],
        maximum=1,
    )

    board.row("Model")
    board.timeseries(
        "Model version per replica",
        "The model version each replica serves; after a promotion every line should move"
        " within MODEL_REFRESH_SECONDS.",
        [Query(f"max by (pod) (skillcoach_model_version{{{NS}}})", legend="{{pod}}")],
        minimum=None,
    )
    board.timeseries(
        "Replicas per model version",
        "How many replicas serve each version: two lines for long means a stuck replica.",
        [Query(f"count by (version) (skillcoach_model_info{{{NS}}})", legend="v{{version}}")],
    )
    board.timeseries(
        "Inference p99",
        "The 99th percentile of one model call, by answer kind.",
        [
            Query(
                "histogram_quantile(0.99, sum by (le, kind) (rate("
                f"skillcoach_model_inference_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                legend="{{kind}}",
            )
        ],
        unit="s",
    )
    board.timeseries(
        "Since the last model refresh",
        "Seconds since each replica last checked the registry for a promoted model.",
        [
            Query(
                f"time() - max by (pod) (skillcoach_model_refresh_timestamp_seconds{{{NS}}})",
                legend="{{pod}}",
            )
        ],
        unit="s",
        width=6,
    )
    board.timeseries(
        "Model refresh failures",
        "Failed registry checks per second (the database unreachable, a model that does not load).",
        [
            Query(
                f"sum by (pod) (rate(skillcoach_model_refresh_failures_total{{{NS}}}[{RATE}]))",
                legend="{{pod}}",
            )
        ],
        unit="ops",
        width=6,
    )
    board.timeseries(
        "Recommendations on target",
        "Share of recommended exercises predicted within the tolerance of their target, and of"
        " those whose exercise had too few training answers to trust. A falling on-target share:"
        " the weak skills' exercises are too hard or too easy for these learners (add"
        " exercises), or the model is stale (retrain). New skill: the share from skills the"
        " learner had not practised, offered when their own hold too few near the target.",
        [
            Query(
                f"sum by (fit) (rate(skillcoach_recommended_exercises_total{{{NS}}}[{RATE}]))"
                " / ignoring (fit) group_left"
                f" sum(rate(skillcoach_recommended_exercises_total{{{NS}}}[{RATE}]))",
                legend="{{fit}}",
            ),
            Query(
                f"sum(rate(skillcoach_recommended_new_skill_exercises_total{{{NS}}}[{RATE}]))"
                f" / sum(rate(skillcoach_recommended_exercises_total{{{NS}}}[{RATE}]))",
                legend="new skill",
            ),
        ],
        unit="percentunit",
        maximum=1,
    )
    return board.builder

"""The stack's OTLP receiver (rotel's agent from PyPI): it listens on loopback, prints the spans
it receives to its log, is reused when it runs, and stops."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.otlp import OtlpReceiver, rotel_binary
from skillcoach_devstack.processes import free_port, port_open, wait_until

SPAN_NAME = "GET /v1/learners/{learner_id}/weaknesses"


def _span() -> dict[str, object]:
    """One span in OTLP/JSON (the receiver accepts it like the SDK's protobuf)."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "skillcoach-api"}}
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "skillcoach"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": SPAN_NAME,
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000005000000",
                            }
                        ],
                    }
                ],
            }
        ]
    }


def test_the_receiver_ships_with_the_python_package() -> None:
    try:
        binary = rotel_binary()
    except StackError as exc:
        pytest.fail(f"{exc}: run `make test`")
    assert binary.is_file() and binary.stat().st_mode & 0o111


@pytest.mark.integration
def test_spans_sent_to_the_receiver_land_in_its_log(tmp_path: Path) -> None:
    receiver = OtlpReceiver(grpc_port=free_port(), http_port=free_port(), state_dir=tmp_path)
    try:
        assert receiver.ensure().startswith("started on ")
        assert receiver.ensure().startswith("reused on ")
        response = httpx.post(f"{receiver.endpoint}/v1/traces", json=_span(), timeout=10)
        assert response.status_code == 200

        def logged() -> bool:
            return SPAN_NAME in receiver.logfile.read_text(errors="replace")

        assert wait_until(logged, 15, interval=0.2), receiver.logfile.read_text()
        assert "5b8efff798038103d269b633813fc60c" in receiver.logfile.read_text()
    finally:
        stopped = receiver.stop()
    assert stopped
    assert receiver.pid() is None
    assert not port_open("127.0.0.1", receiver.http_port)

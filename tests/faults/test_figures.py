"""The fault suite's pure parts: the figures of a request record, the stale-read rule and the
report table (no stack needed)."""

from __future__ import annotations

from loadtests.faults_report import markdown

from tests.faults.load import Ack, Event, figures, stale, steady_since


def test_figures_count_errors_in_the_window_and_recovery_after_healing() -> None:
    events = [
        Event("read", 0.0, 0.1, 200),  # before the fault: not counted
        Event("read", 10.0, 10.2, 503),
        Event("write", 11.0, 11.5, None, "ReadTimeout"),
        Event("read", 16.0, 17.0, 502),  # the last failure, 2 s after healing at 15
        Event("read", 17.5, 17.6, 200),
    ]
    got = figures(events, injected=10.0, healed=15.0, end=20.0)
    assert got["requests"] == 4
    assert got["errors"] == {"502": 1, "503": 1, "ReadTimeout": 1}
    assert got["failed_by_kind"] == {"read": 2, "write": 1}
    assert got["recovery_s"] == 2.0
    assert got["error_window_s"] == 7.0
    # A one-off event (nothing to heal) is measured from the injection.
    assert figures(events, injected=10.0, healed=None, end=20.0)["recovery_s"] == 7.0
    # Nothing failed after the fault: recovered at once.
    ok = [Event("read", 10.0, 10.1, 200)]
    assert figures(ok, injected=10.0, healed=12.0, end=20.0)["recovery_s"] == 0.0
    assert steady_since(events, 20.0) == 3.0
    assert steady_since(ok, 20.0) == float("inf")


def test_a_read_is_stale_when_it_counts_fewer_attempts_than_acknowledged() -> None:
    ack = Ack(learner=7, accepted=3, data_version=4, status=201)
    body = {"skills": [{"attempts": 5}, {"attempts": 4}]}
    assert not stale(body, ack, acknowledged_total=9)
    assert stale(body, ack, acknowledged_total=10)
    # A data_version in the answer, when there is one, decides instead.
    assert stale({"data_version": 3, "skills": []}, ack, acknowledged_total=0)
    assert not stale({"data_version": 4, "skills": []}, ack, acknowledged_total=99)


def test_the_report_renders_one_row_per_fault() -> None:
    record = {
        "requests": 100,
        "errors": {"503": 7},
        "failed_by_kind": {"read": 5, "write": 2},
        "error_window_s": 6.2,
        "recovery_s": 1.25,
        "recovered": True,
        "acknowledged": 40,
        "found": 40,
        "replayed_acks": 1,
        "stale_reads": 0,
    }
    table = markdown({"faults": {"pgbouncer killed": record}})
    lines = table.strip().splitlines()
    assert len(lines) == 3
    assert lines[2] == "| pgbouncer killed | 100 | 503: 7 | 5 / 2 | 6.2 | 1.2 | 40 / 40 | 1 | 0 |"

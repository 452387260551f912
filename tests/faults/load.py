"""A small, steady read+write load through the load balancer, and the figures of one fault.

Readers GET weaknesses and recommendations of seeded learners. Each writer owns a few fresh
learners (ids nobody else writes, so every attempt they hold in PostgreSQL is the load's) and
POSTs small attempt batches, each with its own Idempotency-Key; a failed POST is retried with
the SAME key and body (bounded), so a batch whose response was lost is acknowledged by the
replay instead of being written twice. After every acknowledged batch the writer reads that
learner back through the load balancer: the first successful read must count at least the
attempts acknowledged so far (the answers carry no data_version; if they do one day, it is
compared with the 201's instead).

Every request is recorded (kind, start, end, status or transport error); `figures` turns the
record into what the fault report shows. Decisions are pure functions; I/O stays in the
threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["Ack", "Event", "Load", "LoadSpec", "failed", "figures", "last_failure_end"]

# Statuses a client may see while a dependency is down: the load balancer's (502/503/504) or
# the service shedding (503 with Retry-After, 429). Never a 500.
RETRYABLE = frozenset({429, 502, 503, 504, 500})
READ_TIMEOUT = 15.0
# A batch is retried (same key) for at most this long, then left unresolved.
WRITE_DEADLINE = 45.0
# The read-back after an acknowledged write gives up after this long (counted as unchecked).
READBACK_DEADLINE = 30.0
# docs/redis.md, "Read-your-writes": when a write's version raise fails, another replica may
# serve the learner's old answer until its next reload of the bypass list, at most 1 s after
# the answer (plus the reload's own work). A stale read-back inside this bound is read again
# after it; one still stale then is a broken guarantee. The margin is for a loaded machine.
BYPASS_REFRESH_BOUND = 1.0 + 2.0
BATCH = 3


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "read", "write", "readback"
    t0: float
    t1: float
    status: int | None  # None: no HTTP response (the error names why)
    error: str | None = None

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "error")


@dataclass(frozen=True, slots=True)
class Ack:
    learner: int
    accepted: int
    data_version: int
    status: int  # 201, or 200 for a replay of an already committed batch


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    key: str
    read_learners: Sequence[int]
    # One list of learner ids per writer thread; no two writers share a learner.
    write_learners: Sequence[Sequence[int]]
    exercises: Sequence[int]
    readers: int = 2


def failed(event: Event) -> bool:
    return event.status is None or event.status >= 400


def last_failure_end(events: Sequence[Event], since: float) -> float | None:
    """End of the last failed request that ended after `since`, or None."""
    ends = [e.t1 for e in events if failed(e) and e.t1 >= since]
    return max(ends) if ends else None


def steady_since(events: Sequence[Event], now: float) -> float:
    """Seconds since the last failed request (all of them if none failed)."""
    ends = [e.t1 for e in events if failed(e)]
    return now - max(ends) if ends else float("inf")


def stale(body: dict[str, Any], ack: Ack, acknowledged_total: int) -> bool:
    """Whether a successful read of ack's learner predates that acknowledged write."""
    version = body.get("data_version")
    if isinstance(version, int):
        return version < ack.data_version
    seen = sum(int(s.get("attempts", 0)) for s in body.get("skills", []))
    return seen < acknowledged_total


def figures(
    events: Sequence[Event],
    *,
    injected: float,
    healed: float | None,
    end: float,
) -> dict[str, Any]:
    """The fault's figures from the request record. healed: when the fault was undone (None:
    a one-off event such as a kill, measured from the injection). recovery_s: from then to the
    end of the last failed request (0 when nothing failed after it)."""
    during = [e for e in events if e.t1 >= injected and e.t0 <= end]
    errors = Counter(e.outcome for e in during if failed(e))
    start = injected if healed is None else healed
    last = last_failure_end(events, injected)
    return {
        "requests": len(during),
        "errors": dict(sorted(errors.items())),
        "failed": sum(errors.values()),
        "failed_by_kind": dict(sorted(Counter(e.kind for e in during if failed(e)).items())),
        "recovery_s": 0.0 if last is None else round(max(0.0, last - start), 2),
        "error_window_s": 0.0 if last is None else round(last - injected, 2),
    }


@dataclass
class Load:
    spec: LoadSpec
    events: list[Event] = field(default_factory=list)
    acks: dict[str, Ack] = field(default_factory=dict)  # Idempotency-Key -> acknowledgement
    sent: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> learner
    unresolved: list[str] = field(default_factory=list)  # keys never acknowledged
    unexpected: list[str] = field(default_factory=list)  # responses no fault may cause
    stale_reads: list[str] = field(default_factory=list)
    # Stale read-backs inside BYPASS_REFRESH_BOUND that a read after it found fresh.
    stale_within_bound: int = 0
    readbacks: int = 0  # reads checked against an acknowledged write
    unchecked: int = 0  # acknowledged writes whose read-back never succeeded
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.spec.readers):
            self._threads.append(threading.Thread(target=self._reader, args=(i,), daemon=True))
        for learners in self.spec.write_learners:
            self._threads.append(
                threading.Thread(target=self._writer, args=(list(learners),), daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = WRITE_DEADLINE + READBACK_DEADLINE + 10) -> None:
        """Stop issuing new requests; a writer still finishes (and resolves) its batch."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load threads still running after {timeout:g}s: {alive}")

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.spec.url,
            headers={"Authorization": f"Bearer {self.spec.key}"},
            timeout=READ_TIMEOUT,
        )

    def _request(
        self, client: httpx.Client, kind: str, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            response = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.events.append(Event(kind, t0, time.monotonic(), None, type(exc).__name__))
            return None
        self.events.append(Event(kind, t0, time.monotonic(), response.status_code))
        if response.status_code >= 400 and response.status_code not in RETRYABLE - {500}:
            self.unexpected.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def _reader(self, index: int) -> None:
        learners = list(self.spec.read_learners)
        i = index
        with self._client() as client:
            while not self._stop.is_set():
                learner = learners[i % len(learners)]
                what = "weaknesses" if i % 2 == 0 else "recommendations"
                self._request(client, "read", "GET", f"/v1/learners/{learner}/{what}")
                i += 1
                self._stop.wait(0.01)

    def _writer(self, learners: list[int]) -> None:
        totals = dict.fromkeys(learners, 0)  # attempts acknowledged per learner
        i = 0
        with self._client() as client:
            while not self._stop.is_set():
                learner = learners[i % len(learners)]
                i += 1
                ack = self._write(client, learner, i)
                if ack is None:
                    continue
                totals[learner] += ack.accepted
                self._read_back(client, ack, totals[learner])
                self._stop.wait(0.02)

    def _write(self, client: httpx.Client, learner: int, n: int) -> Ack | None:
        key = f"fault-{uuid.uuid4()}"
        now = datetime.now(UTC).isoformat()
        exercises = self.spec.exercises
        body = {
            "attempts": [
                {
                    "exercise_id": exercises[(n + j) % len(exercises)],
                    "correct": (n + j) % 3 != 0,
                    "answered_at": now,
                }
                for j in range(BATCH)
            ]
        }
        self.sent[key] = learner
        deadline = time.monotonic() + WRITE_DEADLINE
        pause = 0.1
        while True:
            response = self._request(
                client,
                "write",
                "POST",
                f"/v1/learners/{learner}/attempts",
                json=body,
                headers={"Idempotency-Key": key},
            )
            if response is not None and response.status_code in (200, 201):
                data = response.json()
                ack = Ack(
                    learner, int(data["accepted"]), int(data["data_version"]), response.status_code
                )
                self.acks[key] = ack
                return ack
            if response is not None and response.status_code not in RETRYABLE:
                self.unresolved.append(key)  # a 4xx: recorded in `unexpected`, not retried
                return None
            if time.monotonic() + pause > deadline:
                self.unresolved.append(key)
                return None
            time.sleep(pause)
            pause = min(1.0, pause * 2)

    def _read_back(self, client: httpx.Client, ack: Ack, total: int) -> None:
        acknowledged = time.monotonic()
        deadline = acknowledged + READBACK_DEADLINE
        early_stale = False
        while time.monotonic() < deadline:
            response = self._request(
                client,
                "readback",
                "GET",
                f"/v1/learners/{ack.learner}/weaknesses",
                params={"limit": 1000},
            )
            if response is not None and response.status_code == 200:
                self.readbacks += 1
                body = response.json()
                if stale(body, ack, total) and not early_stale:
                    wait = acknowledged + BYPASS_REFRESH_BOUND - time.monotonic()
                    if wait > 0:  # the documented exception, if it holds: read again after it
                        early_stale = True
                        time.sleep(wait)
                        continue
                if stale(body, ack, total):
                    seen = sum(int(s.get("attempts", 0)) for s in body.get("skills", []))
                    self.stale_reads.append(
                        f"learner {ack.learner}: acknowledged {total} attempts"
                        f" (data_version {ack.data_version}), read {seen}"
                        f" (data_version {body.get('data_version')})"
                    )
                elif early_stale:
                    self.stale_within_bound += 1
                return
            time.sleep(0.2)
        self.unchecked += 1

"""The local stack resizes pools the way the operator does on Kubernetes: under steady load,
`skillcoach stack scale 2 -> 4 -> 2` keeps the sum of every replica's pool maximum
(skillcoach_db_pool_capacity, scraped from each replica several times a second, the replicas
that are starting or stopping included) within PgBouncer's client budget at every sampled
moment, and no request fails."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg2
import pytest
from loadtests.harness import clean_env
from loadtests.local_stack import LocalStack, start_stack, stop_stack

from skillcoach_devstack import envfile
from skillcoach_devstack.pools import CLIENT_RESERVE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LEARNERS = 150
MAX_REPLICAS = 4
LOAD_WORKERS = 6
SCALE_TIMEOUT = 300.0
CAPACITY = re.compile(r"^skillcoach_db_pool_capacity (\S+)$", re.M)


def metrics_urls(root: Path, stack: LocalStack) -> list[str]:
    """Every replica's /metrics that may answer now: those .stack/env lists (it is rewritten at
    the end of each scale) and those a scale may be starting, on the ports the stack gives the
    replicas (the API port's successors, their metrics ports at the same offset)."""
    values = envfile.read_env(root / ".stack" / "env")
    replicas = values.get("SKILLCOACH_REPLICA_URLS", "").split()
    listed = values.get("SKILLCOACH_REPLICA_METRICS_URLS", "").split() or [
        f"{url}/metrics" for url in replicas
    ]
    offset = (urlsplit(listed[0]).port or 0) - (urlsplit(replicas[0]).port or 0)
    base = int(stack.env["SKILLCOACH_STACK_API_PORT"])
    candidates = [
        f"http://127.0.0.1:{base + i + offset}/metrics" for i in range(1, MAX_REPLICAS + 1)
    ]
    return sorted(set(listed) | set(candidates))


@dataclass
class Samples:
    budget: int
    totals: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replicas, sum)
    errors: list[str] = field(default_factory=list)
    poolless: int = 0  # answers of replicas without a pool at that moment


def sample(root: Path, stack: LocalStack, samples: Samples, stop: threading.Event) -> None:
    with httpx.Client(timeout=1.0) as client:
        while not stop.is_set():
            total = answering = 0
            for url in metrics_urls(root, stack):
                try:
                    response = client.get(url)
                except httpx.TransportError:
                    continue  # not running (yet, or any more)
                if response.status_code != 200:
                    samples.errors.append(f"{url}: {response.status_code} {response.text[:200]!r}")
                    continue
                found = CAPACITY.search(response.text)
                if found is None:
                    # Serving /metrics before its pool exists (starting) or after it is gone
                    # (stopping): no pool connections to count.
                    samples.poolless += 1
                    continue
                total += int(float(found.group(1)))
                answering += 1
            samples.totals.append((time.monotonic(), answering, total))
            stop.wait(0.1)


def load(stack: LocalStack, statuses: Counter[str], stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=10.0) as client:
        learner = 0
        while not stop.is_set():
            learner = learner % LEARNERS + 1
            try:
                status = str(client.get(f"/v1/learners/{learner}/weaknesses").status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] += 1


def scale(stack: LocalStack, replicas: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "skillcoach.cli", "stack", "scale", "--root", str(stack.root),
         "--replicas", str(replicas)],
        env=clean_env() | stack.env, capture_output=True, text=True, timeout=SCALE_TIMEOUT,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"stack scale {replicas}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def client_budget(stack: LocalStack) -> int:
    """PgBouncer's max_client_conn, as it runs, less the stack's reserve for jobs and tools."""
    conn = psycopg2.connect(stack.values["SKILLCOACH_PGBOUNCER_ADMIN_URL"])
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW CONFIG")
            config = {row[0]: row[1] for row in cur.fetchall()}
    finally:
        conn.close()
    return int(config["max_client_conn"]) - CLIENT_RESERVE


def test_scaling_the_stack_under_load_keeps_the_pools_within_the_client_budget(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path / "stack", replicas=2, learners=LEARNERS)
    try:
        samples = Samples(budget=client_budget(stack))
        per_worker: list[Counter[str]] = [Counter() for _ in range(LOAD_WORKERS)]
        stop = threading.Event()
        threads = [threading.Thread(target=sample, args=(stack.root, stack, samples, stop))]
        threads += [threading.Thread(target=load, args=(stack, c, stop)) for c in per_worker]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2)
            outputs = [scale(stack, 4)]
            time.sleep(2)
            outputs.append(scale(stack, 2))
            time.sleep(2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        stop_stack(stack)

    statuses = sum(per_worker, Counter())
    assert samples.errors == []
    peak = max(total for _, _, total in samples.totals)
    print(f"{len(samples.totals)} samples, peak {peak} of {samples.budget}; {dict(statuses)}")
    over = [(t, n, total) for t, n, total in samples.totals if total > samples.budget]
    assert over == [], f"pools over the client budget {samples.budget}: {over[:5]}"
    # Replicas with a pool were sampled at both sizes: the metric is there to be summed.
    seen = {n for _, n, _ in samples.totals}
    assert {2, 4} <= seen, f"replica counts sampled: {sorted(seen)}"
    assert samples.poolless < len(samples.totals) / 4, samples.poolless
    assert len(samples.totals) > 50
    assert statuses["200"] > 100, statuses
    assert set(statuses) == {"200"}, f"failed requests: {statuses}"
    # Both scales resized the pools through the pool files.
    assert all("pool" in out for out in outputs), outputs

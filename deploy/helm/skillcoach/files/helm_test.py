"""`helm test`: the release answers /readyz, refuses a request without a key, and answers an
authenticated one. Runs in the API image with the standard library only.

SKILLCOACH_TEST_URL is the API Service; SKILLCOACH_TEST_API_KEY a read key, or empty to create
one named helm-test through `skillcoach apikey create` (it needs the database settings then).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

ATTEMPTS = 20
PAUSE_SECONDS = 3.0


def get(url: str, key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(base: str) -> Any:
    """A new rollout may still be settling: retry a bounded number of times."""
    status, body = 0, None
    for _ in range(ATTEMPTS):
        try:
            status, body = get(f"{base}/readyz")
        except (urllib.error.URLError, OSError) as exc:
            status, body = 0, str(exc)
        if status == 200:
            return body
        time.sleep(PAUSE_SECONDS)
    raise SystemExit(f"FAIL /readyz answered {status}: {body}")


def api_key() -> str:
    given = os.environ.get("SKILLCOACH_TEST_API_KEY", "").strip()
    if given:
        return given
    created = subprocess.run(
        ["skillcoach", "apikey", "create", "--scope", "read", "--name", "helm-test"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if created.returncode != 0:
        raise SystemExit(f"FAIL could not create an API key: {created.stderr.strip()}")
    return created.stdout.strip()


def main() -> int:
    base = os.environ["SKILLCOACH_TEST_URL"].rstrip("/")
    ready = wait_ready(base)
    print(f"ok /readyz: {ready}")
    status, body = get(f"{base}/v1/model-status")
    if status != 401:
        raise SystemExit(f"FAIL /v1/model-status without a key answered {status}: {body}")
    print("ok /v1/model-status without a key: 401")
    status, body = get(f"{base}/v1/model-status", api_key())
    if status != 200 or body.get("status") != "serving":
        raise SystemExit(f"FAIL /v1/model-status answered {status}: {body}")
    print(f"ok /v1/model-status: model version {body['model_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The schemathesis CLI against a real `skillcoach serve`: every check, every phase (the
stateful one included), at least 1,000 generated requests, and exit status 0.

Its findings are bugs of the API layer: a 500, a response the document does not describe,
schema-valid input refused or schema-invalid input accepted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_api import Keys, run_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MIN_REQUESTS = 1000

pytestmark = pytest.mark.schemathesis


# Schema-valid input the API refuses with 422 by design, for rules no JSON Schema can
# state: an exercise_id that is not in the catalog, an answered_at later than the server's
# clock plus the allowed skew (both described in the document). Everything else stays as
# schemathesis's defaults.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


def generated(output: str) -> int:
    """The run's own count of generated test cases ("Test cases: N generated, ...")."""
    match = re.search(r"(\d+) generated", output)
    assert match, output
    return int(match.group(1))


@pytest.mark.timeout(400)
def test_schemathesis_finds_nothing(api_bouncer_url: str, keys: Keys, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with run_server(api_bouncer_url) as (base, _):
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(config),
                "run",
                f"{base}/openapi.json",
                "-H",
                f"Authorization: Bearer {keys.write}",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-examples",
                "100",
                "--seed",
                "20261202",
                "--workers",
                "2",
                "--request-timeout",
                "20",
                "--no-color",
                "--generation-database",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=360,
            # Its cache directory (.schemathesis/) lands in the working directory.
            cwd=tmp_path,
            check=False,
        )
    output = run.stdout[-12000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    assert generated(run.stdout) >= MIN_REQUESTS, output

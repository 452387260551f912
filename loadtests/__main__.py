"""`python -m loadtests {suite,locust,model,inference,concurrency,cache,scale,check,reads,
evaluate,accept,breakdown,connections}`: benchmarks."""

from __future__ import annotations

import sys

from loadtests.bench_accept import main as accept_main
from loadtests.bench_breakdown import main as breakdown_main
from loadtests.bench_cache import main as cache_main
from loadtests.bench_check import main as check_main
from loadtests.bench_concurrency import main as concurrency_main
from loadtests.bench_connections import main as connections_main
from loadtests.bench_inference import main as inference_main
from loadtests.bench_locust import main as locust_main
from loadtests.bench_model import main as model_main
from loadtests.bench_reads import main as reads_main
from loadtests.bench_scale import main as scale_main
from loadtests.bench_suite import main as suite_main
from loadtests.evaluate import main as evaluate_main

COMMANDS = {
    "model": model_main,
    "inference": inference_main,
    "concurrency": concurrency_main,
    "cache": cache_main,
    "scale": scale_main,
    "check": check_main,
    "locust": locust_main,
    "suite": suite_main,
    "reads": reads_main,
    "evaluate": evaluate_main,
    "accept": accept_main,
    "breakdown": breakdown_main,
    "connections": connections_main,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m loadtests {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The ``make chaos`` command line: runs the scenarios asked for, one JSON line each."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType

#: Scenario name -> its module, in the order ``make chaos`` runs them.
SCENARIOS: dict[str, str] = {
    "ingest-kill": "loadtest.chaos.ingest_kill",
    "broker-restart": "loadtest.chaos.broker_restart",
    "redis-restart": "loadtest.chaos.redis_restart",
    "redis-down": "loadtest.chaos.redis_down",
    "malformed-storm": "loadtest.chaos.malformed_storm",
    "grpc-fuzz": "loadtest.chaos.grpc_fuzz",
    "bundle-swap": "loadtest.chaos.bundle_swap",
    "sigterm-drain": "loadtest.chaos.sigterm_drain",
    "soak": "loadtest.chaos.soak",
}


def scenario(name: str) -> ModuleType:
    return importlib.import_module(SCENARIOS[name])


def summary(module: ModuleType) -> str:
    """The first line of a scenario's docstring, without the name it starts with."""
    first = (module.__doc__ or "").strip().splitlines()[0]
    return first.split(": ", 1)[-1]


def parser_of(names: list[str]) -> argparse.ArgumentParser:
    lines = [f"  {name:16} {summary(scenario(name))}" for name in names]
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.chaos",
        description="Failure scenarios against the real Redis and Kafka on loopback, one\n"
        "JSON line of figures each; exit status 1 if any failed.\n\n"
        "Scenarios (each module's docstring says what it checks):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names,
        help="run this one (repeatable; default: all, in the order above)",
    )
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle for items")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/10",
        help="an empty database of the run's own (emptied at the end)",
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument(
        "--items",
        type=int,
        default=50_000,
        help="the bundle's most popular items to pick from, uniformly: enough that no "
        "item's co-visits reach the cap, so that the counts compare exactly",
    )
    parser.add_argument("--timeout-s", type=float, default=300.0, help="longest wait of a step")
    parser.add_argument("--workdir", default=".local/chaos", help="the processes' logs")
    parser.add_argument("--seed", type=int, default=0)
    for name in names:
        add_arguments = getattr(scenario(name), "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser.add_argument_group(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    names = list(SCENARIOS)
    parser = parser_of(names)
    args = parser.parse_args(argv)
    if min(args.events, args.users) < 1 or args.timeout_s <= 0:
        parser.error("--events and --users must be >= 1, --timeout-s > 0")
    if not Path(args.bundle).exists():
        parser.error(f"no bundle at {args.bundle} (make bundle builds one)")
    for name in args.scenario or names:
        check = getattr(scenario(name), "check_arguments", None)
        if check is not None and (problem := check(args)):
            parser.error(problem)
    machine = f"{platform.node()} cpus={os.cpu_count()}"
    failed = False
    for name in args.scenario or names:
        module = scenario(name)
        try:
            figures = {"scenario": name, **module.run(args)}
            reasons = module.failures(figures)
        except (Exception, SystemExit) as exc:  # the next scenarios still run
            figures, reasons = {"scenario": name}, [f"did not finish: {exc}"]
        figures |= {
            "failed": reasons,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine,
        }
        print(json.dumps(figures), flush=True)
        failed |= bool(reasons)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

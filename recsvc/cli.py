"""The ``recsvc`` command: ``serve`` answers Recommend calls and ``ingest`` feeds the sessions
from Kafka. The offline commands (``pipeline``, ``eval``, ``train pss``) are registered from
outside this package through the ``recsvc.commands`` entry-point group, so a serving-only
install has just these two.

This module only parses flags and dispatches; each command imports what it runs lazily, so
``recsvc --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from recsvc import settings
from recsvc.exceptions import ConfigError, RecsvcError
from recsvc.redact import scrub_credentials

#: Entry points here add commands: ``register(subparsers)``, each command parser setting
#: ``run`` (a function of the parsed args) as a default.
COMMAND_GROUP = "recsvc.commands"
#: Commands that the source tree's ``offline`` package registers, named in the hint when a
#: serving-only install is asked for one.
OFFLINE_COMMANDS = ("pipeline", "eval", "train")

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def command_plugins() -> list[Register]:
    """The ``register`` functions of the installed ``recsvc.commands`` entry points."""
    plugins = []
    for point in sorted(entry_points(group=COMMAND_GROUP), key=lambda p: p.name):
        try:
            plugins.append(point.load())
        except ImportError as exc:
            print(f"recsvc: commands {point.name!r} not loaded: {exc}", file=sys.stderr)
    return plugins


def build_parser(plugins: Sequence[Register] | None = None) -> argparse.ArgumentParser:
    """The ``recsvc`` parser: ``plugins`` (default: the installed ones), ``serve``, ``ingest``."""
    return _build(plugins)[0]


def _build(
    plugins: Sequence[Register] | None,
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="recsvc", description="Personalized similar-product recommendations."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in command_plugins() if plugins is None else plugins:
        register(commands)

    serve = commands.add_parser(
        "serve",
        help="run the gRPC Recommender server",
        description="Serve Recommend over gRPC (with health checks and reflection) from the "
        "bundle, personalized by the Redis sessions; Prometheus metrics on --metrics-port. "
        "SIGHUP reloads the bundle; SIGTERM drains and stops.",
    )
    serve.set_defaults(run=_run_online)
    settings.add_arguments(serve)
    ingest = commands.add_parser(
        "ingest",
        help="consume the Kafka event stream into the Redis sessions",
        description="Append valid events from --events-topic to the users' Redis sessions "
        "and send invalid ones to --dlq-topic with the reason; offsets are committed after "
        "Redis holds the events.",
    )
    ingest.set_defaults(run=_run_online)
    settings.add_arguments(ingest)
    gateway = commands.add_parser(
        "gateway",
        help="serve HTTP/JSON in front of the gRPC server and the events topic",
        description="GET /v1/recommend calls the gRPC server at --gateway-grpc-target; "
        "POST /v1/events sends the event to --events-topic and answers once Kafka has it. "
        "Also /openapi.json, /healthz, /readyz and /metrics. Needs the gateway extra "
        "(pip install 'recsvc[gateway]'). SIGTERM stops it.",
    )
    gateway.set_defaults(run=_run_gateway)
    settings.add_arguments(gateway)
    return parser, commands


def _run_gateway(args: argparse.Namespace) -> None:
    """``gateway``: settings, logs, then uvicorn on the asyncio loop."""
    import asyncio

    from recsvc import logs

    config = settings.load(args)
    logs.configure("debug" if args.verbose else config.log_level, config.log_format)
    try:
        from recsvc.gateway import serve_gateway
    except ImportError as exc:
        raise ConfigError(
            f"recsvc gateway needs fastapi and uvicorn ({exc}): pip install 'recsvc[gateway]'"
        ) from None
    asyncio.run(serve_gateway(config))


def _run_online(args: argparse.Namespace) -> None:
    """``serve`` or ``ingest``: settings, logs, the session store, then the asyncio loop."""
    import asyncio

    from recsvc import logs
    from recsvc.sessions import open_store

    config = settings.load(args)
    logs.configure("debug" if args.verbose else config.log_level, config.log_format)
    if args.command == "serve" and config.workers > 1:
        from recsvc.server import run_worker
        from recsvc.workers import supervise

        sys.exit(
            supervise(
                config.workers,
                run_worker,
                (config,),
                config.metrics_port,
                config.metrics_host,
                # Each worker drains its calls first.
                stop_timeout_s=config.shutdown_grace_s + 10.0,
            )
        )
    store = open_store(
        config.redis_url, config.session_length, config.session_ttl_s, live=config.live_settings()
    )
    if args.command == "serve":
        from recsvc.server import serve

        asyncio.run(serve(config, store))
    else:
        from recsvc.ingest import ingest

        asyncio.run(ingest(config, store))


def main(argv: Sequence[str] | None = None, plugins: Sequence[Register] | None = None) -> int:
    """Run one command; returns the exit status (2 for a configuration error)."""
    parser, commands = _build(plugins)
    argv = sys.argv[1:] if argv is None else list(argv)
    known = list(commands.choices)
    asked = next((a for a in argv if not a.startswith("-")), None)  # the command, past -v
    if asked in OFFLINE_COMMANDS and asked not in known:
        print(
            f"recsvc {asked}: not in this install, which has only the serving commands "
            f"({', '.join(known)}). The offline commands come with the source tree: "
            "pip install -e '.[offline]' in a checkout of recsvc.",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {scrub_credentials(str(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        _forget_the_interrupted_string_exec()
        return 130
    return 0


def _forget_the_interrupted_string_exec() -> None:
    """Keep the exit status 130 under ``python -m recsvc.cli``. CPython marks a
    KeyboardInterrupt that ends a string ``exec``/``eval`` (dataclasses and namedtuples make
    their methods so) as unhandled even once caught, and ``-m`` then exits by SIGINT instead
    of the status returned. Each string ``exec`` clears the mark as it starts."""
    exec("pass", {})


if __name__ == "__main__":
    sys.exit(main())

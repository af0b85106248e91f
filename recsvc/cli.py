"""The ``recsvc`` command: ``pipeline`` builds a bundle, ``eval`` measures it, ``serve``
answers Recommend calls and ``ingest`` feeds the sessions from Kafka.

This module only parses flags and dispatches; the offline commands import their modules
(and TensorFlow) lazily, so ``recsvc --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recsvc import settings
from recsvc.exceptions import ConfigError, RecsvcError

EPILOG_PIPELINE = """\
examples:
  recsvc pipeline --format taobao --events ../shared/data/taobao/UserBehavior_head.csv \\
      --timezone +08:00 --out .local/bundles/taobao
  recsvc pipeline --format csv --delimiter tab --header --user-col SessionId \\
      --item-col ItemId --time-col Time --events ../shared/data/yoochoose/train.tsv \\
      --test-events ../shared/data/yoochoose/test.tsv --out .local/bundles/yoochoose
"""


def _column(text: str) -> int | str:
    """A column: a 0-based position, or a header name."""
    return int(text) if text.isdigit() else text


def _mapping(text: str) -> dict[str, str]:
    """``a=b,c=d`` -> {"a": "b", "c": "d"}."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {part!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k takes whole numbers like 5,10,20, got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def _delimiter(text: str) -> str:
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(text, text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"a delimiter is one character (or 'tab'), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc", description="Personalized similar-product recommendations."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pipe = commands.add_parser(
        "pipeline",
        help="build an artifact bundle from an event log",
        description="Load events, split off held-out days, build candidate sources and "
        "200-item pools, train the personalized models, and write a versioned bundle.",
        epilog=EPILOG_PIPELINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = pipe.add_argument_group("input")
    data.add_argument(
        "--events",
        required=True,
        type=Path,
        help="event log (training days, or everything when the test day is split off by date)",
    )
    data.add_argument("--test-events", type=Path, help="separate test-period log (same format)")
    data.add_argument(
        "--format",
        required=True,
        choices=["taobao", "csv"],
        help="taobao: UserBehavior user,item,category,behavior,ts without header; "
        "csv: any delimited file described by the column flags",
    )
    columns = pipe.add_argument_group("csv columns (position from 0, or header name)")
    columns.add_argument("--delimiter", type=_delimiter, default=",", help="default ','; 'tab'")
    columns.add_argument("--header", action="store_true", help="the first line names the columns")
    columns.add_argument("--user-col", type=_column, help="user (or session) id column")
    columns.add_argument("--item-col", type=_column, help="item id column")
    columns.add_argument("--time-col", type=_column, help="Unix-seconds timestamp column")
    columns.add_argument("--type-col", type=_column, help="event type column (default: none)")
    columns.add_argument("--category-col", type=_column, help="item category column")
    columns.add_argument(
        "--type-map",
        type=_mapping,
        default={},
        help="file type names to click|cart|fav|buy, e.g. pv=click,addtocart=cart",
    )
    columns.add_argument(
        "--default-type",
        default="click",
        help="type of every row without --type-col (default click)",
    )
    split = pipe.add_argument_group("split")
    split.add_argument(
        "--timezone",
        help="calendar of the day split: UTC, +08:00, Asia/Shanghai "
        "(default: +08:00 for taobao, UTC for csv)",
    )
    split.add_argument(
        "--test-day",
        help="YYYY-MM-DD held out for testing (default: the last "
        "day); the day before it is the validation day",
    )
    split.add_argument(
        "--holdout",
        choices=["test", "validation"],
        default="test",
        help="evaluate on the test day (fit on all before it) or on the "
        "validation day (fit on days before it; use this for tuning)",
    )
    extra = pipe.add_argument_group("image source (optional)")
    extra.add_argument("--item-vectors", type=Path, help="item image vectors (.npz or .csv)")
    extra.add_argument(
        "--item-images", type=Path, help="folder of <item_id>.jpg|png|bmp to embed with MobileNet"
    )
    extra.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("RECSVC_SHARED", "../shared")),
        help="shared folder with models/ (default $RECSVC_SHARED or ../shared)",
    )
    out = pipe.add_argument_group("output and model")
    out.add_argument(
        "--out",
        required=True,
        type=Path,
        help="bundle root: the bundle goes to OUT/<version>, OUT/current links it",
    )
    out.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    out.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. personalized.epochs=8, pool_size=200, "
        "source_weights.itemcf=2 (repeatable; `--param list` shows all)",
    )

    ev = commands.add_parser(
        "eval",
        help="top-K hit ratios of every method on a bundle's held-out days",
        description="For each held-out click, rank the current item's pool with each method; "
        "a hit when the next visited item is in the top K. Also over next items that were "
        "added to cart, where the data has carts.",
    )
    ev.add_argument("--bundle", required=True, type=Path, help="bundle version dir or root")
    ev.add_argument("--json", required=True, type=Path, help="write the results here")
    ev.add_argument("--plot", type=Path, help="write a bar chart PNG here")
    ev.add_argument("--k", type=_ks, default=(5, 10, 20), help="cut-offs (default 5,10,20)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC Recommender server",
        description="Serve Recommend over gRPC (with health checks and reflection) from the "
        "bundle, personalized by the Redis sessions; Prometheus metrics on --metrics-port. "
        "SIGHUP reloads the bundle; SIGTERM drains and stops.",
    )
    settings.add_arguments(serve)
    ingest = commands.add_parser(
        "ingest",
        help="consume the Kafka event stream into the Redis sessions",
        description="Append valid events from --events-topic to the users' Redis sessions "
        "and send invalid ones to --dlq-topic with the reason; offsets are committed after "
        "Redis holds the events.",
    )
    settings.add_arguments(ingest)
    return parser


def _run_online(args: argparse.Namespace) -> None:
    """``serve`` or ``ingest``: settings, logs, the session store, then the asyncio loop."""
    import asyncio

    from recsvc import logs
    from recsvc.sessions import open_store

    config = settings.load(args)
    logs.configure("debug" if args.verbose else config.log_level, config.log_format)
    store = open_store(config.redis_url, config.session_length, config.session_ttl_s)
    if args.command == "serve":
        from recsvc.server import serve

        asyncio.run(serve(config, store))
    else:
        from recsvc.ingest import ingest

        asyncio.run(ingest(config, store))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "pipeline":
            from offline.pipeline import run_from_args

            run_from_args(args)
        elif args.command == "eval":
            from offline.eval_command import run_eval

            run_eval(args)
        else:
            _run_online(args)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

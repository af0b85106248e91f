"""The offline commands of ``recsvc``: ``pipeline``, ``eval`` and ``train pss``.

``recsvc/cli.py`` finds :func:`register` through the ``recsvc.commands`` entry point (see
setup.py), so the serving install, which has no ``offline/``, has only ``serve`` and
``ingest``. This module only builds parsers: each command imports its module (and
TensorFlow) when it runs, so ``recsvc --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EPILOG_PIPELINE = """\
examples:
  recsvc pipeline --format taobao --events ../shared/data/taobao/UserBehavior_head.csv \\
      --timezone +08:00 --out .local/bundles/taobao
  recsvc pipeline --format csv --delimiter tab --header --user-col SessionId \\
      --item-col ItemId --time-col Time --events ../shared/data/yoochoose/train.tsv \\
      --test-events ../shared/data/yoochoose/test.tsv --out .local/bundles/yoochoose
"""


DESCRIPTION_TRAIN_PSS = """\
Rebuild the bundle's split from the event log (the loader flags as for pipeline; time
zone, test day and holdout come from the bundle's manifest, and the log must give the
bundle's items and event counts). Train the PSS SiameseNet on compound features of the
bundle's item2vec embeddings, its image vectors (or --item-images / --item-vectors) and
--item-titles (else a hashed category embedding); print the verification table. Then
write a new bundle version: the tower's embeddings (embeddings/pss), pools re-merged from
the bundle's sources plus the PSS neighbours (tagged pss), every source's pool scores;
all other arrays are copied unchanged (the personalized models are not retrained). The
bundle's 'current' link moves to the new version, so a running server hot-swaps it.
"""

EPILOG_TRAIN_PSS = """\
examples:
  recsvc train pss --bundle .local/bundles/taobao --format taobao \\
      --events ../shared/data/taobao/UserBehavior_head.csv --param pss.loss=hrms
  recsvc train pss --bundle .local/bundles/shop --format csv --header --user-col user \\
      --item-col item --time-col ts --events shop.csv --item-titles titles.tsv
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


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected NAME[,NAME...], got {text!r}")
    return names


def _delimiter(text: str) -> str:
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(text, text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"a delimiter is one character (or 'tab'), got {text!r}")
    return value


def add_event_arguments(parser: argparse.ArgumentParser) -> None:
    """The event-log flags (``--events``, ``--format``, csv columns) of pipeline and train."""
    data = parser.add_argument_group("input")
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
        choices=["taobao", "csv", "parquet"],
        help="taobao: UserBehavior user,item,category,behavior,ts without header; "
        "csv: any delimited file described by the column flags; parquet: a Parquet file, "
        "its columns named (or numbered) by the same flags",
    )
    columns = parser.add_argument_group("csv columns (position from 0, or header name)")
    columns.add_argument("--delimiter", type=_delimiter, default=",", help="default ','; 'tab'")
    columns.add_argument("--header", action="store_true", help="the first line names the columns")
    columns.add_argument("--user-col", type=_column, help="user (or session) id column")
    columns.add_argument("--item-col", type=_column, help="item id column")
    columns.add_argument(
        "--time-col", type=_column, help="time column, in the form --time-format says"
    )
    columns.add_argument(
        "--time-format",
        choices=["auto", "s", "ms", "iso"],
        default="auto",
        help="s: Unix seconds; ms: Unix milliseconds; iso: ISO-8601 (naive is UTC); auto "
        "(default): told from the first rows. Times before 2000 or in the future are an error",
    )
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
    attributes = parser.add_argument_group("item attributes (optional)")
    attributes.add_argument(
        "--item-attributes",
        type=Path,
        help="a delimited file with a header: each item's category, instead of a category "
        "column in the events",
    )
    attributes.add_argument(
        "--attributes-item-col", type=_column, default="item_id", help="default item_id"
    )
    attributes.add_argument(
        "--attributes-category-col", type=_column, default="category", help="default category"
    )
    attributes.add_argument(
        "--attributes-delimiter", type=_delimiter, default=",", help="default ','; 'tab'"
    )


def add_image_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """``--item-vectors``, ``--item-images`` and ``--shared`` (where MobileNet is)."""
    group = parser.add_argument_group(title)
    group.add_argument("--item-vectors", type=Path, help="item image vectors (.npz or .csv)")
    group.add_argument(
        "--item-images", type=Path, help="folder of <item_id>.jpg|png|bmp to embed with MobileNet"
    )
    group.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("RECSVC_SHARED", "../shared")),
        help="shared folder with models/ (default $RECSVC_SHARED or ../shared)",
    )


def add_title_arguments(parser: argparse.ArgumentParser, default_cache: str, note: str) -> None:
    """``--item-titles`` and ``--feature-cache`` (PSS title features, cached extraction)."""
    group = parser.add_argument_group("PSS titles and feature cache (optional)")
    group.add_argument(
        "--item-titles",
        type=Path,
        help="CSV or TSV of item_id,title (optional header); the titles are embedded with "
        f"all-MiniLM-L6-v2 into the PSS compound feature in place of the hashed category{note}; "
        "bad rows are skipped and counted",
    )
    group.add_argument(
        "--feature-cache",
        type=Path,
        help="SQLite cache of image (--item-images) and title embeddings, keyed by model, "
        f"item and input sha256, so a re-run embeds only what changed (default {default_cache})",
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pipeline``, ``eval`` and ``train`` to the ``recsvc`` command's subparsers."""
    pipe = commands.add_parser(
        "pipeline",
        help="build an artifact bundle from an event log",
        description="Load events, split off held-out days, build candidate sources and "
        "200-item pools, train the personalized models, and write a versioned bundle. "
        "Ctrl-C or SIGTERM stops it cleanly (exit status 130).",
        epilog=EPILOG_PIPELINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pipe.set_defaults(run=_run_pipeline)
    add_event_arguments(pipe)
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
    add_image_arguments(pipe, "image source (optional)")
    add_title_arguments(pipe, "OUT/feature-cache.sqlite", " (used only with pss.enabled=true)")
    engine = pipe.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local (default): every stage in this process; spark: loading the event files, "
        "item-CF's neighbours (co-occurrence and top-k), the pool merge and "
        "the training rows of item2vec and the personalized models run on Apache Spark, "
        "with the same results (pip install 'recsvc[spark]'; Java 17+). Training, annoy, "
        "the pool scores and the second stage run in this process either way",
    )
    engine.add_argument(
        "--spark-master",
        metavar="URL",
        help="Spark master for --engine spark, e.g. spark://host:7077 (default local[*], "
        "every core here, or the master spark-submit sets)",
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
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="keep each finished costly stage (second stage, item2vec, neighbours, "
        "personalized) in DIR; the same command (same inputs, settings, seed and engine) run "
        "again after a stop loads them instead of running them again. The run's folder in "
        "DIR is removed once the bundle is written",
    )
    out.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. personalized.epochs=8, pool_size=200, "
        "source_weights.itemcf=2, conversion=buy (the next-item events personalized_cart "
        "weighs and eval's conversion rows use: cart|buy|both, default cart) (repeatable; "
        "`--param list` shows all)",
    )

    ev = commands.add_parser(
        "eval",
        help="top-K hit ratios of every method on a bundle's held-out days",
        description="For each held-out click, rank the current item's candidates with each "
        "method (the pool, or for sknn and vsknn the whole catalogue; served: the server's "
        "own ranking); a hit when the next visited item is in the top K. Also over next "
        "items that were converted on, where the data has such cases: added to cart, bought "
        "or either, by the bundle's conversion parameter (default cart).",
    )
    ev.set_defaults(run=_run_eval)
    ev.add_argument("--bundle", required=True, type=Path, help="bundle version dir or root")
    ev.add_argument("--json", required=True, type=Path, help="write the results here")
    ev.add_argument("--plot", type=Path, help="write a bar chart PNG here")
    ev.add_argument("--k", type=_ks, default=(5, 10, 20), help="cut-offs (default 5,10,20)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ev.add_argument(
        "--methods",
        type=_names,
        help="comma-separated methods to evaluate (default: all the bundle allows: popular, "
        "fallback, each source, each personalized model, sknn, vsknn and served)",
    )
    ev.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="a session-kNN setting, e.g. vsknn.k=200, sknn.sample_size=1000, "
        "vsknn.idf_weight=2 (defaults: k=100, sample_size=500), or a candidate setting of "
        "served, e.g. candidates.knn_items=50, candidates.session_pools=1 (default: the "
        "bundle's), or with --replay a live setting, e.g. live.half_life_s=3600, "
        "live.read_top=30 (default: recsvc serve's); repeatable",
    )
    ev.add_argument(
        "--replay",
        action="store_true",
        help="also rank served_live: the server's ranking with the live co-visits that the "
        "held-out events before each case built, played in time order through the same "
        "code as ingest (default live settings of recsvc serve); adds the served_live - "
        "served differences, the cases whose next item is new, and how soon new items are "
        "recommended",
    )

    train = commands.add_parser(
        "train",
        help="train a model on an existing bundle and write a new bundle version",
        description="Train a model on an existing bundle's items and write a new version of "
        "the bundle with it.",
    )
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    pss = models.add_parser(
        "pss",
        help="PSS product embeddings (SiameseNet) into the bundle's pools",
        description=DESCRIPTION_TRAIN_PSS,
        epilog=EPILOG_TRAIN_PSS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pss.set_defaults(run=_run_train_pss)
    pss.add_argument(
        "--bundle",
        required=True,
        type=Path,
        help="bundle root (its 'current' version is read, the new version written next to "
        "it) or a version directory (the new version goes to its parent)",
    )
    add_event_arguments(pss)
    add_image_arguments(
        pss,
        "image part of the PSS feature (optional; default: the bundle's image vectors; "
        "the bundle's image source stays as it is)",
    )
    add_title_arguments(pss, "BUNDLE_ROOT/feature-cache.sqlite", "")
    model = pss.add_argument_group("model")
    model.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pss.*, source_weights.* or source_quotas.* setting, e.g. "
        "pss.loss=hrms (repeatable; the rest comes from the bundle's manifest)",
    )
    model.add_argument(
        "--seed", type=int, help="random seed (default: the seed the bundle was built with)"
    )


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) interrupts an offline command as Ctrl-C does,
    so that it cleans up on the way out: Spark's scratch folder, half-written files.
    Python's default would end it where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_pipeline(args: argparse.Namespace) -> None:
    from offline.pipeline import run_from_args

    with _sigterm_interrupts():
        run_from_args(args)


def _run_eval(args: argparse.Namespace) -> None:
    from offline.evaluation.command import run_eval

    with _sigterm_interrupts():
        run_eval(args)


def _run_train_pss(args: argparse.Namespace) -> None:
    from offline.pss.command import run_train_pss

    with _sigterm_interrupts():
        run_train_pss(args)

"""``recsvc pipeline``: event log in, versioned artifact bundle out.

Stages: load and split events → item-CF → item2vec (+ annoy neighbours) → image vectors
when the catalogue has them → pool merge and business-rule fill → pool scores of every
source → the two personalized models → bundle. Each stage's time and peak memory go into
the manifest (``timings``, ``peak_mib``). With ``pss.enabled`` the PSS stage (product
embeddings from item2vec, images, titles) runs before the pool merge; ``recsvc train pss``
(:mod:`offline.pss.command`) reuses that stage and the pool stage on an existing bundle.
``--engine spark`` runs the loading, item-CF's neighbours, the pool merge and the training
rows on Apache Spark (:mod:`offline.spark`), with the same results.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from offline.checkpoint import Checkpoint, load_stage, run_key, save_stage, staged
from offline.config import PipelineConfig, apply_overrides, describe
from offline.data.attributes import AttributeSpec, load_item_categories, with_categories
from offline.data.dataset import Dataset, build_dataset, describe_split, fit_period_log
from offline.data.events import TAOBAO_SPEC, ColumnSpec, EventLog, load_events
from offline.data.interactions import CART, CLICK, Catalogue, Interactions
from offline.data.sequences import CONVERSION_NAMES
from offline.data.sessions import fit_sessions
from offline.data.skips import SkipReport
from offline.features.image import MODEL_RELATIVE_PATH, resolve_shared_dir
from offline.pools import Pools, category_fill, merge_pools, newest_fill, order_pools
from offline.sources import IMAGE, ITEM2VEC, ITEMCF, PSS
from offline.sources.base import CandidateSource, Neighbours
from offline.sources.registry import SourceInputs, build_source
from offline.timings import Timings
from recsvc.bundle import load_bundle, sha256_file, write_bundle
from recsvc.contract import MODELS
from recsvc.exceptions import ConfigError, DataError
from recsvc.second_stage import MODEL_ARRAY, model_array

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from offline.features.cache import FeatureCache
    from offline.features.compound import Part
    from offline.features.image import ItemVectors
    from offline.pss.stage import PSSResult
    from training.item2vec import Item2VecResult
    from training.personalized import Examples

logger = logging.getLogger(__name__)
#: Default feature cache file, in the bundle root (next to the versions).
FEATURE_CACHE_NAME = "feature-cache.sqlite"


@dataclass
class PipelineInputs:
    """What the pipeline reads: the logs, how to read them, and the optional image data."""

    events: Path
    spec: ColumnSpec
    test_events: Path | None = None
    timezone: str = "UTC"
    test_day: str | None = None
    holdout: str = "test"
    item_vectors: Path | None = None
    item_images: Path | None = None
    shared: Path | None = None
    item_titles: Path | None = None
    feature_cache: Path | None = None
    item_attributes: AttributeSpec | None = None
    #: ``local``, or ``spark``: loading, item-CF's neighbours, the pool merge and the
    #: training rows on Apache Spark (:mod:`offline.spark`).
    engine: str = "local"
    #: The Spark master URL of ``--engine spark``; None: ``local[*]`` or spark-submit's.
    spark_master: str | None = None
    #: ``--checkpoint``: where the costly stages are kept for a rerun (:mod:`offline.checkpoint`).
    checkpoint: Path | None = None


#: The checkpoint folder of the second stage's own first-stage build, inside the run's.
SECOND_STAGE_BUILD = "second_stage-build"
#: PipelineInputs fields that do not change a bundle, left out of a checkpoint's run key.
NOT_RESULTS = frozenset({"checkpoint", "feature_cache", "spark_master"})


def column_spec(args: argparse.Namespace) -> ColumnSpec:
    if args.format == "taobao":
        return replace(TAOBAO_SPEC, time_format=args.time_format)
    missing = [
        flag
        for flag, value in (
            ("--user-col", args.user_col),
            ("--item-col", args.item_col),
            ("--time-col", args.time_col),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"--format {args.format} needs {', '.join(missing)}")
    return ColumnSpec(
        user=args.user_col,
        item=args.item_col,
        timestamp=args.time_col,
        event_type=args.type_col,
        category=args.category_col,
        delimiter=args.delimiter,
        header=args.header,
        type_map=args.type_map,
        default_type=args.default_type,
        time_format=args.time_format,
        parquet=args.format == "parquet",
    )


def attribute_spec(args: argparse.Namespace) -> AttributeSpec | None:
    """The ``--item-attributes`` flags, or None without that file.

    Raises
    ------
    ConfigError
        The events carry a category column too.
    """
    if args.item_attributes is None:
        return None
    if args.format == "taobao" or args.category_col is not None:
        raise ConfigError(
            "--item-attributes gives the categories, and so does the events' category "
            "column (--category-col, or --format taobao's): use one of them"
        )
    return AttributeSpec(
        args.item_attributes,
        args.attributes_item_col,
        args.attributes_category_col,
        args.attributes_delimiter,
    )


def load_logs(
    inputs: PipelineInputs, spark: SparkSession | None = None
) -> tuple[EventLog, EventLog | None, list[SkipReport]]:
    """The event log, the test log if any, with the attribute file's categories when it is
    given, and the reports of every file read (each also printed). With ``spark`` the event
    files are read by Spark (:mod:`offline.spark.events`), into the same logs."""
    if spark is not None:
        from offline.spark.events import load_events as spark_load

        def load(path: Path) -> EventLog:
            return spark_load(spark, path, inputs.spec)
    else:

        def load(path: Path) -> EventLog:
            return load_events(path, inputs.spec)

    log = load(inputs.events)
    test_log = load(inputs.test_events) if inputs.test_events else None
    reports = [x.report for x in filter(None, (log, test_log))]
    if inputs.item_attributes is not None:
        categories, report = load_item_categories(inputs.item_attributes)
        reports.append(report)
        log, unlisted = with_categories(log, categories)
        if test_log is not None:
            test_log, unlisted_test = with_categories(test_log, categories)
            unlisted += unlisted_test
        print(f"{report.summary()}; items of the events it does not list: {unlisted}")
    for loaded in filter(None, (log, test_log)):
        print(loaded.report.summary())
    return log, test_log, reports


def run_from_args(args: argparse.Namespace) -> Path | None:
    config = PipelineConfig()
    if args.param == ["list"]:
        print(describe(config))
        return None
    config = apply_overrides(config, args.param)
    config.pss.validate()
    inputs = PipelineInputs(
        events=args.events,
        spec=column_spec(args),
        test_events=args.test_events,
        timezone=args.timezone or ("+08:00" if args.format == "taobao" else "UTC"),
        test_day=args.test_day,
        holdout=args.holdout,
        item_vectors=args.item_vectors,
        item_images=args.item_images,
        shared=args.shared,
        item_titles=args.item_titles,
        feature_cache=args.feature_cache,
        item_attributes=attribute_spec(args),
        engine=args.engine,
        spark_master=args.spark_master,
        checkpoint=args.checkpoint,
    )
    if args.spark_master is not None and args.engine != "spark":
        raise ConfigError("--spark-master is for --engine spark")
    return run_pipeline(inputs, config, args.out, seed=args.seed, data_format=args.format)


def run_pipeline(
    inputs: PipelineInputs, config: PipelineConfig, out: Path, *, seed: int, data_format: str
) -> Path:
    """Build and write a bundle; returns its version directory."""
    with _engine(inputs) as spark:
        return _run_pipeline(inputs, config, out, seed=seed, data_format=data_format, spark=spark)


def _engine(inputs: PipelineInputs) -> AbstractContextManager[SparkSession | None]:
    """The Spark session of ``--engine spark`` for the whole run, or None."""
    if inputs.engine == "local":
        return nullcontext()
    if inputs.engine != "spark":
        raise ConfigError(f"--engine is local or spark, got {inputs.engine!r}")
    from offline.spark.session import spark_session

    return spark_session(inputs.spark_master)


def _engine_description(spark: SparkSession | None) -> dict[str, Any]:
    """The manifest's ``engine``: which stages ran where."""
    if spark is None:
        return {"name": "local"}
    return {
        "name": "spark",
        "master": spark.sparkContext.master,
        "spark_version": spark.version,
        "stages": [
            "load",
            "itemcf neighbours",
            "item2vec pairs",
            "pool merge",
            "personalized examples",
        ],
    }


def _run_pipeline(
    inputs: PipelineInputs,
    config: PipelineConfig,
    out: Path,
    *,
    seed: int,
    data_format: str,
    spark: SparkSession | None,
) -> Path:
    will_run = {ITEMCF, ITEM2VEC, *([PSS] if config.pss.enabled else [])}
    if inputs.item_vectors is not None or inputs.item_images is not None:
        will_run.add(IMAGE)
    if config.fallback_order not in ("merge", *will_run):
        raise ConfigError(
            f"fallback_order={config.fallback_order}, but that source will not run "
            f"(will run: {', '.join(sorted(will_run))})"
        )
    timings = Timings()
    metrics: dict[str, Any] = {}
    checkpoint = open_checkpoint(inputs, config, seed, data_format)
    with timings.stage("load"):
        log, test_log, reports = load_logs(inputs, spark)
        data = build_dataset(
            log,
            test_log,
            timezone=inputs.timezone,
            test_day=inputs.test_day,
            holdout=inputs.holdout,
        )  # type: ignore[arg-type]
    print(
        f"{describe_split(data.split)}; {data.catalogue.n_items} items, {len(data.user_ids)} users"
    )
    ranker_model = None
    # Not `staged`: the stage adds what its build loaded, and drops the build once saved.
    saved = load_stage(checkpoint, "second_stage", timings) if config.ranker.enabled else None
    if saved is not None:
        metrics["second_stage"] = saved.metrics["second_stage"]
        if MODEL_ARRAY in saved.arrays:
            ranker_model = saved.arrays[MODEL_ARRAY].tobytes().decode("utf-8")
    elif config.ranker.enabled:
        build = checkpoint.child(SECOND_STAGE_BUILD) if checkpoint is not None else None
        build_timings = Timings()
        with timings.stage("second_stage"):
            fit_log = fit_period_log(
                log,
                test_log,
                timezone=inputs.timezone,
                test_day=inputs.test_day,
                holdout=inputs.holdout,  # type: ignore[arg-type]
            )
            try:
                ranker_model, metrics["second_stage"] = train_second_stage(
                    fit_log, inputs, config, seed, out, spark, build, build_timings
                )
            except DataError as exc:
                # Too little data for a learned ranker: the first stage ranks alone, as the
                # server does with any bundle without ranker/model.
                print(f"second stage: not trained: {exc}; the personalized model ranks alone")
                metrics["second_stage"] = {"skipped": str(exc)}
        timings.absorb("second_stage", build_timings)
        model = {MODEL_ARRAY: model_array(ranker_model)} if ranker_model is not None else {}
        kept = {"second_stage": metrics["second_stage"]}
        if save_stage(checkpoint, "second_stage", timings, model, kept) and build is not None:
            build.remove()  # the stage is saved whole
    arrays, sources, skipped = build_arrays(
        data, inputs, config, seed, timings, metrics, out, spark, checkpoint
    )
    if ranker_model is not None:
        arrays[MODEL_ARRAY] = model_array(ranker_model)
    cat = data.catalogue
    with timings.stage("write"):
        manifest = {
            "source": {
                "format": data_format,
                "files": [_describe_file(report) for report in reports],
            },
            "parameters": {**config.as_dict(), "seed": seed},
            "engine": _engine_description(spark),
            "split": data.split,
            "sources_ran": list(sources),
            "sources_skipped": skipped,
            "metrics": metrics,
            "timings": timings.seconds,
            "peak_mib": timings.peak_mib,
        }
        if timings.resumed:
            manifest["resumed"] = timings.resumed
        path = write_bundle(out, arrays, manifest)
    if checkpoint is not None:
        checkpoint.remove()
    total = sum(timings.seconds.values())
    print(
        f"bundle {path}: {cat.n_items} items, pools of {config.pool_size} "
        f"(mean filled {metrics['pools']['mean_length']:.1f}), sources {list(sources)}, "
        f"skipped {list(skipped)}; annoy recall@{config.pool_size} "
        f"{ {k: v['recall'] for k, v in metrics['annoy'].items()} }; {total:.0f}s"
        + (f" ({timings.loaded_s:.0f}s of it by an earlier run)" if timings.loaded_s else "")
    )
    return path


def build_arrays(
    data: Dataset,
    inputs: PipelineInputs,
    config: PipelineConfig,
    seed: int,
    timings: Timings,
    metrics: dict[str, Any],
    out: Path,
    spark: SparkSession | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, CandidateSource], dict[str, str]]:
    """Every array of a bundle from a split dataset: sources, pools, sessions, models; with
    ``spark``, item-CF's neighbours, the pool merge and the training rows are Spark's; with
    ``checkpoint``, item2vec, the neighbours and the personalized models are saved there, or
    loaded.

    Returns
    -------
    (arrays, the sources that ran, the skipped sources with the reason)
    """
    fit = data.fit
    popularity = fit.of_type(CLICK).item_counts()

    # Each source is built by its registered factory once the stage giving its data ran.
    sources: dict[str, CandidateSource] = {}
    source_inputs = SourceInputs(fit, data.catalogue.item_category, spark=spark)
    with timings.stage("itemcf"):
        sources[ITEMCF] = build_source(ITEMCF, source_inputs, config, seed)
    examples = SparkExamples(spark, fit, out) if spark is not None else None
    item2vec = _item2vec_stage(fit, config, seed, timings, metrics, examples, checkpoint)
    source_inputs.embeddings[ITEM2VEC] = (item2vec.embeddings, item2vec.known)
    sources[ITEM2VEC] = build_source(ITEM2VEC, source_inputs, config, seed)
    cache = _feature_cache(inputs, out)
    with timings.stage("image"):
        image = _image_vectors(inputs, data, cache)
    if image is not None:
        print(image.report.summary())
        metrics["image_vectors"] = int(image.known.sum())
        if image.computed is not None:
            metrics["image_vectors_computed"] = image.computed
            cached = image.report.loaded - image.computed
            print(f"image features: {image.computed} embedded, {cached} cached")
        source_inputs.embeddings[IMAGE] = (image.vectors, image.known)
        sources[IMAGE] = build_source(IMAGE, source_inputs, config, seed)
    skipped = {IMAGE: "no --item-vectors or --item-images given"} if image is None else {}
    pss = None
    if config.pss.enabled:
        with timings.stage("pss"):
            from offline.features.compound import Part

            parts = [Part("behaviour", item2vec.embeddings, item2vec.known)]
            if image is not None:
                parts.append(Part("image", image.vectors, image.known))
            if inputs.item_titles is not None:
                from offline.features.titles import titles_from_file

                title, metrics["titles"] = titles_from_file(
                    inputs.item_titles, data.catalogue.item_ids, cache
                )
                parts.append(title)
            pss = run_pss_stage(data, parts, config, seed)
        metrics["pss"] = pss.report
        source_inputs.embeddings[PSS] = (pss.embeddings, pss.known)
        sources[PSS] = build_source(PSS, source_inputs, config, seed)
    else:
        skipped[PSS] = "off (--param pss.enabled=true adds it)"
        if inputs.item_titles is not None:
            print("--item-titles: not used (titles feed the PSS stage; pss.enabled is false)")
    if cache is not None:
        cache.close()

    pools, arrays = pool_stage(
        sources, data.catalogue, popularity, config, seed, timings, metrics, spark, checkpoint
    )
    with timings.stage("sessions"):
        sessions = fit_sessions(fit, config.session_gap_s)
        arrays.update(sessions.to_arrays())
        metrics["sessions"] = sessions.n_sessions

    def personalized() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        before = set(metrics)
        models = _train_personalized(
            data, pools, item2vec.embeddings, config, seed, metrics, examples
        )
        return models, {key: value for key, value in metrics.items() if key not in before}

    models, added = staged(checkpoint, "personalized", timings, personalized)
    arrays.update(models)
    metrics.update(added)
    if examples is not None:
        examples.close()

    cat = data.catalogue
    arrays.update(
        {
            "item_ids": cat.item_ids,
            "item_category": cat.item_category,
            "category_names": cat.category_names,
            "item_first_seen": cat.first_seen,
            "item_popularity": popularity.astype(np.int64),
            "item_fit_events": fit.item_counts().astype(np.int64),
            "item_recent_clicks": _recent_clicks(fit, hours=24.0),
            "pools": pools.items,
            "pool_sources": pools.sources,
            "embeddings/item2vec": item2vec.embeddings,
            "embeddings/item2vec_known": item2vec.known,
            **_eval_arrays(data, config.eval_history),
        }
    )
    if image is not None:
        arrays["embeddings/image"], arrays["embeddings/image_known"] = image.vectors, image.known
    if pss is not None:
        arrays["embeddings/pss"], arrays["embeddings/pss_known"] = pss.embeddings, pss.known
    return arrays, sources, skipped


def _item2vec_stage(
    fit: Interactions,
    config: PipelineConfig,
    seed: int,
    timings: Timings,
    metrics: dict[str, Any],
    examples: SparkExamples | None,
    checkpoint: Checkpoint | None,
) -> Item2VecResult:
    """item2vec trained on the fit period's clicks, or loaded from ``checkpoint``."""
    from training.item2vec import Item2VecResult, train_item2vec

    def item2vec() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        pairs = examples.pairs(config.item2vec.window) if examples is not None else None
        found = train_item2vec(fit.of_type(CLICK), config.item2vec, seed=seed, pairs=pairs)
        vectors = {
            "embeddings": found.embeddings,
            "context_embeddings": found.context_embeddings,
            "known": found.known,
        }
        return vectors, {"item2vec_losses": found.losses}

    vectors, kept = staged(checkpoint, "item2vec", timings, item2vec)
    result = Item2VecResult(
        vectors["embeddings"], vectors["context_embeddings"], vectors["known"],
        kept["item2vec_losses"], config.item2vec,
    )  # fmt: skip
    metrics["item2vec_losses"] = result.losses
    return result


def open_checkpoint(
    inputs: PipelineInputs, config: PipelineConfig, seed: int, data_format: str
) -> Checkpoint | None:
    """The run's checkpoint folder under ``--checkpoint``, keyed by what decides its results."""
    if inputs.checkpoint is None:
        return None
    keyed = {f.name: getattr(inputs, f.name) for f in fields(inputs) if f.name not in NOT_RESULTS}
    # Of the shared folder, a run reads only the image model, and only to embed images:
    # keying the whole folder made a re-provisioned copy of it restart a run from scratch.
    keyed["shared"] = (
        resolve_shared_dir(inputs.shared) / MODEL_RELATIVE_PATH
        if inputs.item_images is not None and inputs.item_vectors is None
        else None
    )
    identity = {
        "inputs": keyed,
        "format": data_format,
        "parameters": config.as_dict(),
        "seed": seed,
    }
    checkpoint = Checkpoint(inputs.checkpoint, run_key(identity))
    try:  # now, not after the first stage has run for hours
        checkpoint.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--checkpoint {inputs.checkpoint}: cannot make {checkpoint.folder}: {exc.strerror}"
        ) from None
    done = checkpoint.saved_stages(nested=True)
    print(
        f"checkpoint: {checkpoint.folder}"
        + (f" (saved stages: {', '.join(done)})" if done else " (nothing saved yet)")
    )
    return checkpoint


class SparkExamples:
    """The training rows of item2vec and the personalized models, made by Spark
    (:mod:`offline.spark.sequences`) from the fit period's events and memory-mapped from
    Parquet shards in a scratch folder of the bundle root (on a cluster, ``--out`` must be
    on a filesystem the executors share). The rows are the local code's, in its order.
    :meth:`close` removes the folder; after a failure, the interpreter does at exit."""

    def __init__(self, spark: SparkSession, fit: Interactions, out: Path) -> None:
        from offline.spark.sequences import events_frame

        Path(out).mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.TemporaryDirectory(prefix=".spark-examples-", dir=out)
        self._folder = Path(self._scratch.name)
        self._events = events_frame(spark, fit).persist()

    def pairs(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """item2vec's (centres, contexts)."""
        from offline.spark.sequences import mapped_columns, skipgram_pairs, write_shards

        folder = self._folder / "pairs"
        order = ["offset", "direction", "user", "visit"]
        write_shards(skipgram_pairs(self._events, window), order, ["centre", "context"], folder)
        columns = mapped_columns(
            folder, {"centre": np.dtype(np.int32), "context": np.dtype(np.int32)}
        )
        return columns["centre"], columns["context"]

    def next_items(self, window: int, conversion: str) -> Examples:
        """The personalized models' examples."""
        from offline.spark.sequences import examples_from_shards, next_item_examples, write_shards
        from training.personalized import Examples

        folder = self._folder / "examples"
        columns = [f"w{j}" for j in range(window)] + ["target", "is_cart"]
        rows = next_item_examples(self._events, window, conversion)
        write_shards(rows, ["user", "visit"], columns, folder)
        # The last rows made from the events: their cache leaves the JVM's heap, which
        # the driver's idle-heap options then return to the system while the models train.
        self._events.unpersist()
        return Examples(*examples_from_shards(folder, window))

    def close(self) -> None:
        self._events.unpersist()
        self._scratch.cleanup()


def train_second_stage(
    fit_log: EventLog,
    inputs: PipelineInputs,
    config: PipelineConfig,
    seed: int,
    out: Path,
    spark: SparkSession | None = None,
    checkpoint: Checkpoint | None = None,
    timings: Timings | None = None,
) -> tuple[str, dict[str, Any]]:
    """The second stage's model, trained on the fit period's last ``ranker.span_hours``.

    A first-stage bundle is built on the time before them (every source and model, as for
    the real bundle) in a temporary directory, and its held-out cases become the training
    queries (:mod:`offline.ranker.training`). Nothing of the held-out period is read. That
    build's stages go into ``timings`` and, with ``checkpoint``, are saved there or loaded.
    """
    from offline.ranker.training import train_ranker, training_rows
    from recsvc.live import LiveSettings

    late = fit_log.ts > float(fit_log.ts.max()) - 3600.0 * config.ranker.span_hours
    if late.all() or not late.any():
        raise DataError(
            f"ranker.span_hours={config.ranker.span_hours} leaves nothing to fit the first "
            "stage on before it, or nothing after"
        )
    inner = build_dataset(
        fit_log.select(~late), fit_log.select(late), timezone=inputs.timezone, holdout="test"
    )
    print(f"second stage, first stage {describe_split(inner.split)}")
    first = replace(config, ranker=replace(config.ranker, enabled=False))
    inner_metrics: dict[str, Any] = {}
    arrays, _, _ = build_arrays(
        inner,
        inputs,
        first,
        seed,
        Timings() if timings is None else timings,
        inner_metrics,
        out,
        spark,
        checkpoint,
    )
    with tempfile.TemporaryDirectory(prefix="recsvc-second-stage-") as tmp:
        manifest = {"parameters": {**first.as_dict(), "seed": seed}, "split": inner.split}
        bundle = load_bundle(write_bundle(Path(tmp), arrays, manifest))
        live = LiveSettings() if config.ranker.live else None
        rows = training_rows(
            bundle,
            config.candidates,
            config.ranker.negatives,
            seed,
            live,
            max_cases=config.ranker.max_cases,
        )
    model, metrics = train_ranker(rows, config.ranker, seed)
    # What the server's live reads must match for the live columns to mean what they did.
    metrics["live"] = live.as_dict() if live is not None else None
    print(
        f"second stage: {metrics['queries']} of {metrics['cases_used']} cases"
        + (
            f" (a sample of the {metrics['cases']})"
            if metrics["cases_used"] < metrics["cases"]
            else ""
        )
        + f" have their next item among the candidates; {metrics['rows']} rows; best iteration "
        f"{metrics['best_iteration']}; NDCG@10 on its validation queries "
        f"{metrics['valid_ndcg10']} (the first stage's orders: "
        + ", ".join(f"{k} {v}" for k, v in metrics["baseline_ndcg10"].items())
        + ")"
    )
    return model, metrics


def _recent_clicks(fit: Interactions, hours: float) -> np.ndarray:
    """Clicks per item in the fit period's last ``hours`` (int64, one per item)."""
    clicks = fit.of_type(CLICK)
    if not len(clicks.ts):
        return np.zeros(fit.n_items, dtype=np.int64)
    late = clicks.select(clicks.ts > float(clicks.ts.max()) - 3600.0 * hours)
    return late.item_counts().astype(np.int64)


def run_pss_stage(data: Dataset, parts: list[Part], config: PipelineConfig, seed: int) -> PSSResult:
    """The PSS stage: embeddings from the raw parts (behaviour = item2vec, image, title; the
    category part is added when there are no titles), with the verification table printed.

    Used by ``recsvc pipeline`` and ``recsvc train pss``.
    """
    from offline.pss.stage import build_pss, format_table

    result = build_pss(data.fit, data.catalogue, parts, config.pss, seed)
    print(format_table(result.report["verification"]))
    return result


def pool_stage(
    sources: dict[str, CandidateSource],
    catalogue: Catalogue,
    popularity: np.ndarray,
    config: PipelineConfig,
    seed: int,
    timings: Timings,
    metrics: dict[str, Any],
    spark: SparkSession | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[Pools, dict[str, np.ndarray]]:
    """Neighbours of every source (saved in or loaded from ``checkpoint``), their annoy
    recall, the merged pools (on Spark with ``spark``), the pool scores.

    Used by ``recsvc pipeline`` and ``recsvc train pss``; sets ``metrics["annoy"]`` and
    ``metrics["pools"]``.

    Returns
    -------
    (Pools, {"pool_scores/<source>": float32 (n_items, pool_size)})
    """
    neighbours = _neighbours_stage(sources, config.pool_size, timings, checkpoint)
    with timings.stage("annoy_recall"):
        metrics["annoy"] = _annoy_recall(sources, neighbours, config, seed)
    with timings.stage("pools"):
        heads = {n: nb.head(config.source_quotas[n]) for n, nb in neighbours.items()}
        weights = {n: config.source_weights[n] for n in neighbours}
        if spark is not None:
            from offline.spark.pools import merge_pools as merge_on_spark

            pools = merge_on_spark(spark, heads, weights, catalogue, popularity, config.pool_size)
        else:
            rules = {
                "category": category_fill(catalogue, popularity, config.pool_size),
                "new": newest_fill(catalogue, config.pool_size),
            }
            pools = merge_pools(heads, weights, rules, size=config.pool_size)
        metrics["pools"] = _pool_stats(pools)
    arrays: dict[str, np.ndarray] = {}
    with timings.stage("pool_scores"):
        queries = np.arange(catalogue.n_items)
        for name, source in sources.items():
            arrays[f"pool_scores/{name}"] = source.pair_scores(queries, pools.items)
    if config.fallback_order != "merge":
        scores = {name.removeprefix("pool_scores/"): a for name, a in arrays.items()}
        if config.fallback_order not in scores:
            raise ConfigError(
                f"fallback_order={config.fallback_order}, but that source did not run "
                f"(ran: {', '.join(scores)})"
            )
        pools, scores = order_pools(pools, scores, config.fallback_order)
        arrays = {f"pool_scores/{name}": a for name, a in scores.items()}
    return pools, arrays


def _neighbours_stage(
    sources: dict[str, CandidateSource],
    k: int,
    timings: Timings,
    checkpoint: Checkpoint | None,
) -> dict[str, Neighbours]:
    """The top ``k`` neighbours of every item from each source, or the checkpoint's."""

    def search() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        found = {}
        for name, source in sources.items():
            neighbours = source.neighbours(k)
            found[f"{name}/items"], found[f"{name}/scores"] = neighbours.items, neighbours.scores
        return found, {}

    def unfit(saved: Mapping[str, np.ndarray]) -> str | None:
        if all(f"{n}/items" in saved and f"{n}/scores" in saved for n in sources):
            return None
        return f"lack a source of {list(sources)}"

    found, _ = staged(checkpoint, "neighbours", timings, search, unfit)
    return {n: Neighbours(found[f"{n}/items"], found[f"{n}/scores"]) for n in sources}


def _annoy_recall(
    sources: dict[str, CandidateSource],
    neighbours: dict[str, Neighbours],
    config: PipelineConfig,
    seed: int,
) -> dict[str, Any]:
    """recall@pool_size of each annoy-backed source against exact cosine search."""
    from offline.ann.search import exact_neighbours, recall_at_k
    from offline.sources.embedding import EmbeddingSource

    out = {}
    rng = np.random.default_rng(seed)
    for name, source in sources.items():
        if not isinstance(source, EmbeddingSource):
            continue
        candidates = np.flatnonzero(source.known)
        sample = np.sort(
            rng.choice(candidates, min(config.recall_sample, len(candidates)), replace=False)
        )
        exact = exact_neighbours(source.embeddings, source.known, config.pool_size, items=sample)
        recall = recall_at_k(neighbours[name], exact, sample)
        out[name] = {
            "recall": round(float(recall), 4),
            "k": config.pool_size,
            "sample": len(sample),
            "n_trees": config.annoy_trees,
            "search_k": config.annoy_search_k,
        }
    return out


def _pool_stats(pools: Pools) -> dict[str, Any]:
    lengths = (pools.items >= 0).sum(axis=1)
    return {
        "mean_length": float(lengths.mean()),
        "full": float((lengths == pools.items.shape[1]).mean()),
        "entries_by_source": pools.source_counts(),
    }


#: Why ``personalized_cart`` is not trained, for each ``conversion`` setting.
NO_CONVERSION = {
    "cart": "no next visit of the fit period includes an add-to-cart (purchases are not "
    "visits: --param conversion=buy or both weighs purchases of the next item)",
    "buy": "no next visit of the fit period is followed by a purchase of its item before "
    "the user's visit after it (--param conversion=cart or both weighs add-to-carts)",
    "both": "no next visit of the fit period includes an add-to-cart or is followed by a "
    "purchase of its item before the user's visit after it",
}


def _train_personalized(
    data: Dataset,
    pools: Pools,
    item2vec: np.ndarray,
    config: PipelineConfig,
    seed: int,
    metrics: dict[str, Any],
    spark_examples: SparkExamples | None = None,
) -> dict[str, np.ndarray]:
    from training.personalized import build_examples, train_personalized

    window, conversion = config.personalized.window, config.conversion
    if spark_examples is not None:
        examples = spark_examples.next_items(window, conversion)
    else:
        examples = build_examples(data.fit, window=window, conversion=conversion)
    # cart_targets: the conversion targets, whichever events `conversion` names.
    metrics["personalized_examples"] = {
        "examples": len(examples),
        "cart_targets": int(examples.is_cart.sum()),
        "conversion": config.conversion,
    }
    init = (
        item2vec
        if config.init_from_item2vec and item2vec.shape[1] == config.personalized.dim
        else None
    )
    arrays = {}
    # MODELS: the click model, then the one whose conversion targets weigh cart_omega.
    for name, omega in zip(MODELS, (1.0, config.cart_omega), strict=True):
        if name == "personalized_cart" and not examples.is_cart.any():
            # It would train the click model again, under another name.
            print(f"{name}: not trained: {NO_CONVERSION[config.conversion]}")
            label = CONVERSION_NAMES[config.conversion]
            metrics["models_skipped"] = {name: f"no {label} targets"}
            continue
        variant = replace(config.personalized, cart_weight=omega)
        weights = train_personalized(
            examples,
            data.catalogue.n_items,
            variant,
            seed=seed,
            pools=pools.items,
            init_embeddings=init,
        )
        metrics[f"{name}_losses"] = weights.losses
        prefix = f"models/{name}"
        arrays[f"{prefix}/input_embeddings"] = weights.input_embeddings
        arrays[f"{prefix}/output_embeddings"] = weights.output_embeddings
        arrays[f"{prefix}/position_weights"] = weights.position_weights
        arrays[f"{prefix}/known"] = weights.known
        arrays[f"{prefix}/scorable"] = weights.scorable
    return arrays


def _eval_arrays(data: Dataset, history: int) -> dict[str, np.ndarray]:
    """Held-out events of the held-out users, with their last ``history`` earlier visit
    events (clicks and add-to-carts), which give the first held-out windows their past.

    Every held-out event is kept, purchases and favourites too: with ``conversion=buy`` or
    ``both`` the held-out purchases mark ``recsvc eval``'s conversion cases."""
    events = data.events
    hold_users = np.zeros(events.n_users, dtype=bool)
    hold_users[events.users[data.is_holdout]] = True
    visit_event = (events.types == CLICK) | (events.types == CART)
    earlier = ~data.is_holdout & visit_event & hold_users[events.users]
    index = np.flatnonzero(earlier)
    keep_history = np.zeros(len(events), dtype=bool)
    keep_history[index[last_of_each_user(events.users[index], history)]] = True
    keep = keep_history | data.is_holdout
    return {
        "eval/users": events.users[keep],
        "eval/items": events.items[keep],
        "eval/types": events.types[keep],
        "eval/ts": events.ts[keep],
        "eval/is_holdout": data.is_holdout[keep],
    }


def last_of_each_user(users: np.ndarray, n: int) -> np.ndarray:
    """Mask of the last ``n`` entries of each user in an array sorted by user.

    Parameters
    ----------
    users : int array, shape (m,), sorted (each user's entries contiguous)

    Returns
    -------
    bool array, shape (m,)
    """
    position = np.arange(len(users))
    is_last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, bool)
    # Index of the user's last entry, for every entry: the nearest group end at or after it.
    group_end = np.flip(np.minimum.accumulate(np.flip(np.where(is_last, position, len(users)))))
    return group_end - position < n


def _feature_cache(inputs: PipelineInputs, out: Path) -> FeatureCache | None:
    """The feature cache of the image-folder and title extractors, when either runs."""
    if inputs.item_images is None and inputs.item_titles is None:
        return None
    from offline.features.cache import FeatureCache

    path = inputs.feature_cache or Path(out) / FEATURE_CACHE_NAME
    print(f"feature cache: {path}")
    return FeatureCache(path)


def _image_vectors(
    inputs: PipelineInputs, data: Dataset, cache: FeatureCache | None = None
) -> ItemVectors | None:
    if inputs.item_vectors is None and inputs.item_images is None:
        return None
    from offline.features import image as image_embedding

    index = {str(item): i for i, item in enumerate(data.catalogue.item_ids)}
    if inputs.item_vectors is not None:
        return image_embedding.load_item_vectors(inputs.item_vectors, index, data.catalogue.n_items)
    embedder = image_embedding.MobileNetEmbedder(shared=inputs.shared)
    return image_embedding.embed_image_folder(
        inputs.item_images, index, embedder, n_items=data.catalogue.n_items, cache=cache
    )


def _describe_file(report: SkipReport) -> dict[str, Any]:
    path = Path(report.source)
    return {"path": str(path.resolve()), "sha256": sha256_file(path), **report.as_dict()}

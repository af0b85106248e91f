"""``recsvc train pss``: add PSS product embeddings to an existing bundle, as a new version.

The bundle's split is rebuilt from the event log (the loader flags as for ``recsvc pipeline``;
time zone, test day and holdout from the bundle's manifest) and must give the bundle's
catalogue and event counts, else nothing is written. The PSS stage of the pipeline
(:func:`offline.pipeline.run_pss_stage`) then trains the SiameseNet on compound features of
the bundle's item2vec embeddings (behaviour), its image vectors (or ``--item-images`` /
``--item-vectors``) and ``--item-titles`` (else the hashed category), and the pool stage
(:func:`offline.pipeline.pool_stage`) re-merges the pools with the PSS neighbours tagged
``pss``, from the same sources the bundle was built with (item-CF is rebuilt from the log;
embedding sources come from the bundle). The new version holds ``embeddings/pss``, the new
pools, pool flags and every source's pool scores; every other array is copied unchanged (the
personalized models keep the weights trained with the old pools). It is written with the
bundle writer (checksummed manifest, atomic rename) and the root's ``current`` link moves to
it, so a running server hot-swaps (:mod:`recsvc.reloader`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from offline.config import PipelineConfig, apply_overrides
from offline.data.dataset import Dataset, build_dataset
from offline.data.skips import SkipReport
from offline.features.compound import Part
from offline.pipeline import (
    FEATURE_CACHE_NAME,
    PipelineInputs,
    _describe_file,
    _image_vectors,
    attribute_spec,
    column_spec,
    load_logs,
    pool_stage,
    run_pss_stage,
)
from offline.sources import IMAGE, ITEM2VEC, ITEMCF, PSS, SOURCE_NAMES
from offline.sources.base import CandidateSource
from offline.sources.registry import SourceInputs, build_source
from offline.timings import Timings
from recsvc.bundle import MANIFEST, Bundle, load_bundle, resolve, write_bundle
from recsvc.exceptions import BundleError, ConfigError, DataError

logger = logging.getLogger(__name__)
#: Settings ``--param`` may change here; the rest would not affect what this command builds.
TUNABLE = ("pss.", "source_weights.", "source_quotas.")
#: Arrays this command rewrites; everything else is copied from the old version.
REPLACED_PREFIXES = ("pool_scores/", "embeddings/pss")
REPLACED = ("pools", "pool_sources")


def config_from_manifest(parameters: dict[str, Any], overrides: list[str]) -> PipelineConfig:
    """The bundle's pipeline settings, then the ``--param`` overrides, with PSS on.

    Settings the manifest has but this code does not know (an older bundle) are skipped.

    Raises
    ------
    ConfigError
        An override outside ``TUNABLE``, or a bad key or value.
    """
    bad = [item for item in overrides if not item.strip().startswith(TUNABLE)]
    if bad:
        raise ConfigError(
            f"train pss --param takes only {', '.join(p + '*' for p in TUNABLE)} settings "
            f"(the others come from the bundle), got {bad}"
        )
    config = PipelineConfig()
    for key, value in _flatten(parameters):
        if key == "seed":
            continue
        try:
            config = apply_overrides(config, [f"{key}={_text(value)}"])
        except ConfigError as exc:
            logger.warning("bundle setting %s=%s not applied: %s", key, value, exc)
    config = apply_overrides(config, [*overrides, "pss.enabled=true"])
    config.pss.validate()
    return config


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, bool | int | float | str):
            out.append((f"{prefix}{key}", value))
    return out


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def bundle_root(path: Path) -> Path:
    """Where new versions go: the parent of a version directory, else ``path`` itself."""
    return path.parent if (path / MANIFEST).is_file() else path


def rebuild_dataset(args: argparse.Namespace, bundle: Bundle) -> tuple[Dataset, list[SkipReport]]:
    """The bundle's split and catalogue, rebuilt from the event log given on the command line.

    Raises
    ------
    DataError
        The log gives another catalogue or other event counts than the bundle's.
    """
    split = bundle.manifest.get("split")
    if not isinstance(split, dict) or "holdout" not in split:
        raise BundleError(f"{bundle.path}: the manifest has no split to rebuild")
    inputs = PipelineInputs(
        events=args.events,
        spec=column_spec(args),
        test_events=args.test_events,
        item_attributes=attribute_spec(args),
    )
    log, test_log, reports = load_logs(inputs)
    test_day = split.get("test") if args.test_events is None else None
    data = build_dataset(
        log,
        test_log,
        timezone=str(split.get("timezone", "UTC")),
        test_day=test_day,
        holdout=split["holdout"],
    )
    ids = np.asarray(bundle["item_ids"]).astype(str)
    same_items = len(ids) == data.catalogue.n_items and np.array_equal(
        ids, np.asarray(data.catalogue.item_ids).astype(str)
    )
    if not same_items or data.split.get("events") != split.get("events"):
        raise DataError(
            f"the events do not rebuild bundle {bundle.path.name}: {data.catalogue.n_items} "
            f"items and events {data.split.get('events')}, the bundle has {len(ids)} items "
            f"and events {split.get('events')} (pass the log and loader flags it was built from)"
        )
    return data, reports


def run_train_pss(args: argparse.Namespace) -> Path:
    """Run the command (see the module docstring); returns the new version directory."""
    root = bundle_root(Path(args.bundle))
    bundle = load_bundle(resolve(args.bundle))
    for name in ("embeddings/item2vec", "embeddings/item2vec_known"):
        if name not in bundle:
            raise BundleError(f"{bundle.path}: no {name} (the behaviour part of PSS)")
    parameters = bundle.manifest.get("parameters", {})
    config = config_from_manifest(parameters, args.param)
    seed = args.seed if args.seed is not None else int(parameters.get("seed", 7))
    print(f"bundle {bundle.path} ({bundle.n_items} items); seed {seed}")
    data, reports = rebuild_dataset(args, bundle)

    timings = Timings()
    metrics: dict[str, Any] = dict(bundle.manifest.get("metrics", {}))
    inputs = PipelineInputs(
        events=args.events,
        spec=column_spec(args),
        item_vectors=args.item_vectors,
        item_images=args.item_images,
        shared=args.shared,
        item_titles=args.item_titles,
        feature_cache=args.feature_cache,
    )
    cache = None
    if args.item_images is not None or args.item_titles is not None:
        from offline.features.cache import FeatureCache

        cache_path = args.feature_cache or root / FEATURE_CACHE_NAME
        print(f"feature cache: {cache_path}")
        cache = FeatureCache(cache_path)
    try:
        with timings.stage("pss"):
            parts = _parts(bundle, inputs, data, cache, metrics)
            pss = run_pss_stage(data, parts, config, seed)
    finally:
        if cache is not None:
            cache.close()
    metrics["pss"] = pss.report

    # The sources the bundle was built with (item-CF rebuilt from the log, the embedding
    # sources from the bundle's vectors), and PSS; in the pipeline's order.
    ran = list(bundle.manifest.get("sources_ran", [ITEMCF, ITEM2VEC]))
    inputs = SourceInputs(data.fit, data.catalogue.item_category)
    for name in (ITEM2VEC, IMAGE):
        if name in ran and f"embeddings/{name}" in bundle:
            inputs.embeddings[name] = (
                np.asarray(bundle[f"embeddings/{name}"]),
                np.asarray(bundle[f"embeddings/{name}_known"]),
            )
    inputs.embeddings[PSS] = (pss.embeddings, pss.known)
    sources: dict[str, CandidateSource] = {}
    for name in SOURCE_NAMES:
        if name == ITEMCF and name in ran:
            with timings.stage("itemcf"):
                sources[name] = build_source(name, inputs, config, seed)
        elif name in inputs.embeddings:
            sources[name] = build_source(name, inputs, config, seed)
    popularity = np.asarray(bundle["item_popularity"])
    pools, scores = pool_stage(sources, data.catalogue, popularity, config, seed, timings, metrics)

    arrays = {
        name: np.asarray(array)
        for name, array in bundle.arrays.items()
        if name not in REPLACED and not name.startswith(REPLACED_PREFIXES)
    }
    arrays.update(scores)
    arrays.update(
        {
            "pools": pools.items,
            "pool_sources": pools.sources,
            "embeddings/pss": pss.embeddings,
            "embeddings/pss_known": pss.known,
        }
    )
    kept = ("format", "version", "created_at", "files")
    manifest = {k: v for k, v in bundle.manifest.items() if k not in kept}
    skipped = {k: v for k, v in manifest.get("sources_skipped", {}).items() if k != PSS}
    manifest.update(
        {
            "parameters": {**config.as_dict(), "seed": seed},
            "sources_ran": list(sources),
            "sources_skipped": skipped,
            "metrics": metrics,
            "train_pss": {
                "from_version": bundle.version,
                "events": [_describe_file(report) for report in reports],
                "timings": timings.seconds,
                "peak_mib": getattr(timings, "peak_mib", {}),
                "note": "models/* and eval/* are the old version's (the personalized models "
                "were trained with its pools)",
            },
        }
    )
    with timings.stage("write"):
        path = write_bundle(root, arrays, manifest)
    entries = metrics["pools"]["entries_by_source"][PSS]
    print(
        f"bundle {path} (from {bundle.version}): embeddings/pss {pss.embeddings.shape}, "
        f"{entries} pool entries from pss, sources {list(sources)}; "
        f"{sum(timings.seconds.values()):.0f}s; {root}/current -> {path.name}"
    )
    return path


def _parts(
    bundle: Bundle,
    inputs: PipelineInputs,
    data: Dataset,
    cache: Any,
    metrics: dict[str, Any],
) -> list[Part]:
    """Behaviour (the bundle's item2vec), image and title parts of the compound feature."""
    parts = [
        Part(
            "behaviour",
            np.asarray(bundle["embeddings/item2vec"]),
            np.asarray(bundle["embeddings/item2vec_known"]),
        )
    ]
    image = _image_vectors(inputs, data, cache)
    if image is not None:
        print(image.report.summary())
        if image.computed is not None:
            cached = image.report.loaded - image.computed
            print(f"image features: {image.computed} embedded, {cached} cached")
        metrics["pss_image_vectors"] = image.report.as_dict() | {"computed": image.computed}
        parts.append(Part("image", image.vectors, image.known))
    elif "embeddings/image" in bundle:
        parts.append(
            Part(
                "image",
                np.asarray(bundle["embeddings/image"]),
                np.asarray(bundle["embeddings/image_known"]),
            )
        )
    if inputs.item_titles is not None:
        from offline.features.titles import titles_from_file

        title, metrics["titles"] = titles_from_file(
            inputs.item_titles, data.catalogue.item_ids, cache
        )
        parts.append(title)
    return parts

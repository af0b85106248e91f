"""Training the second-stage ranker (LightGBM LambdaRank) on cases the first stage never saw.

The pipeline builds a first-stage bundle on the fit period minus its last day and holds that
day out (:func:`offline.data.dataset.fit_period_log`). Each held-out case becomes a query:
its candidates exactly as the server gathers them, their features exactly as the server
builds them (:meth:`recsvc.ranking.Ranker.candidate_features`), label 1 for the next item.
Cases whose next item is not among the candidates teach nothing and are left out, as are
candidates without a fit-period event (see :meth:`recsvc.ranking.Ranker.rank`) unless they
come as live neighbours. With ``ranker.live`` (the default) the held-out day's events are
replayed in time order, as ``recsvc eval --replay`` does, so that each case has the live
co-visits of the events before it: the live candidates and the live columns are learned
from what the server would have read. The queries
of the last ``valid_share`` of the users (cases come in user order) decide when boosting
stops, on NDCG@10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.evaluation.evaluate import cases_from_bundle
from offline.evaluation.replay import live_reads
from offline.evaluation.served import case_session
from offline.ranker.settings import RankerSettings
from recsvc.bundle import Bundle
from recsvc.candidates import CandidateSettings
from recsvc.exceptions import DataError
from recsvc.features import COLUMNS, FEATURES
from recsvc.live import EMPTY_READ, LiveSettings
from recsvc.ranking import Ranker


@dataclass(frozen=True)
class TrainingRows:
    """One query per usable case: ``features`` rows grouped by ``groups`` (sizes, in case
    order), out of the ``used`` of the ``cases`` held-out cases (all, or a sample)."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    cases: int
    used: int


def training_rows(
    bundle: Bundle,
    candidates: CandidateSettings,
    negatives: int,
    seed: int,
    live: LiveSettings | None = None,
    max_cases: int | None = None,
) -> TrainingRows:
    """The queries of every held-out case of ``bundle`` whose target is one of its
    ``candidates``, each with the target and at most ``negatives`` other candidates drawn
    at random. With ``live``, the held-out events are replayed as ``recsvc eval --replay``
    does, and each case gets the live neighbours (and shares) of the state before it.
    With more than ``max_cases`` cases, a random sample of that many (in case order) is
    used; the replay still plays every event."""
    # ``bundle`` has no second stage yet: its candidates are the ones the model will rank.
    ranker = Ranker(bundle, candidates=candidates)
    cases = cases_from_bundle(bundle, with_times=live is not None)
    used = np.ones(len(cases), dtype=bool)
    if max_cases is not None and len(cases) > max_cases:
        # A generator of its own, so that a day within the budget draws its negatives as it
        # always did (on a sampled day, the skipped cases draw none).
        sample = np.random.default_rng([seed, len(cases)]).choice(len(cases), max_cases, False)
        used[:] = False
        used[sample] = True
    reads = live_reads(bundle, cases, live, wanted=used) if live is not None else None
    # Items without a fit-period event are in the catalogue only because the held-out day
    # clicks them: no bundle column may describe them (the server never scores them from
    # the bundle either); as live neighbours they have rows of their own.
    has_history = np.asarray(bundle["item_fit_events"]) > 0
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    rng = np.random.default_rng(seed)
    blocks, labels, groups = [], [], []
    for n, target in enumerate(cases.target.tolist()):
        if not used[n]:
            continue
        found = ranker.candidate_features(
            item_ids[int(cases.current[n])],
            case_session(cases, n, item_ids),
            reads[n] if reads is not None else EMPTY_READ,
        )
        if found is None:
            continue
        usable = has_history[found.items] | found.new
        items, features = found.items[usable], found.features[usable]
        hit = np.flatnonzero(items == target)
        if not len(hit):
            continue
        others = np.flatnonzero(items != target)
        if len(others) > negatives:
            others = rng.choice(others, size=negatives, replace=False)
        # Shuffled: LightGBM's NDCG breaks score ties by row order, which must not favour
        # the target.
        rows = rng.permutation(np.concatenate([hit, others]))
        blocks.append(features[rows])
        labels.append((items[rows] == target).astype(np.float32))
        groups.append(len(rows))
    if not groups:
        raise DataError(
            f"none of the {len(cases)} cases of the second stage's training hours has its "
            "next item among its candidates: no ranker to train (a longer ranker.span_hours?)"
        )
    return TrainingRows(
        np.concatenate(blocks),
        np.concatenate(labels),
        np.array(groups),
        len(cases),
        int(used.sum()),
    )


def train_ranker(rows: TrainingRows, settings: RankerSettings, seed: int) -> tuple[str, dict]:
    """(LightGBM text model, metrics) from ``rows``; the later queries stop the boosting."""
    import lightgbm

    queries = len(rows.groups)
    split = int(queries * (1 - settings.valid_share))
    if queries < settings.min_queries or split < 1 or split >= queries:
        raise DataError(
            f"{queries} training queries are too few to train a ranker "
            f"(ranker.min_queries={settings.min_queries})"
        )
    cut = int(rows.groups[:split].sum())
    features = rows.features
    left_out = settings.left_out_columns()
    if left_out:
        # All NaN: no tree can split on them, so the model never reads them.
        features = features.copy()
        features[:, left_out] = np.nan
    params: dict[str, Any] = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "seed": seed,
        "deterministic": True,
        # With deterministic, LightGBM's docs ask for a fixed histogram layout: left to
        # "auto", it picks by timing both, so a busy machine could train another model.
        "force_col_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    names = list(FEATURES)
    train = lightgbm.Dataset(
        features[:cut], rows.labels[:cut], group=rows.groups[:split], feature_name=names
    )
    valid = lightgbm.Dataset(
        features[cut:], rows.labels[cut:], group=rows.groups[split:], reference=train
    )
    booster = lightgbm.train(
        params,
        train,
        num_boost_round=settings.rounds,
        valid_sets=[valid],
        callbacks=[lightgbm.early_stopping(settings.early_stopping, verbose=False)],
    )
    gain = booster.feature_importance(importance_type="gain")
    valid_rows = slice(cut, None)
    valid_groups = rows.groups[split:]
    model_ndcg = ndcg_at_10(
        booster.predict(features[valid_rows], num_iteration=booster.best_iteration),
        rows.labels[valid_rows],
        valid_groups,
    )
    # The first stage's own orders on the same queries: a model that does not beat them
    # would make serving worse than a bundle without it.
    baselines = {
        name: ndcg_at_10(
            sign * rows.features[valid_rows, COLUMNS[column]], rows.labels[valid_rows], valid_groups
        )
        for name, column, sign in BASELINES
    }
    best = max(baselines, key=lambda name: baselines[name])
    if not model_ndcg > baselines[best]:
        raise DataError(
            f"the ranker's NDCG@10 on its validation queries, {model_ndcg:.4f}, does not beat "
            f"{best}'s own order ({baselines[best]:.4f})"
        )
    metrics = {
        "cases": rows.cases,
        "cases_used": rows.used,
        "queries": len(rows.groups),
        "rows": len(rows.labels),
        "best_iteration": booster.best_iteration,
        "valid_ndcg": {k: float(v) for k, v in booster.best_score["valid_0"].items()},
        "valid_ndcg10": round(model_ndcg, 4),
        "baseline_ndcg10": {name: round(value, 4) for name, value in baselines.items()},
        "left_out": [FEATURES[j] for j in left_out],
        "gain": {
            n: round(float(g), 1)
            for n, g in sorted(zip(names, gain, strict=True), key=lambda pair: -pair[1])
        },
    }
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return text, metrics


#: The first stage's orders the model must beat: (name, feature column, sign).
BASELINES = (
    ("personalized", "personalized", 1.0),
    ("pool order", "pool_position", -1.0),
    ("item-CF", "itemcf_current", 1.0),
    ("V-SKNN", "vsknn", 1.0),
)


def ndcg_at_10(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Mean NDCG@10 over queries of one relevant row each (``labels`` 1 there): the
    target's gain ``1 / log2(1 + rank)`` within the top 10, NaN scores last, a tie counted
    as half a row ahead."""
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    total, start = 0.0, 0
    for size in groups.tolist():
        block, hit = scores[start : start + size], labels[start : start + size] > 0
        start += size
        own = block[hit][0]
        rank = 1 + np.count_nonzero(block > own) + 0.5 * (np.count_nonzero(block == own) - 1)
        if rank <= 10:
            total += 1.0 / np.log2(1.0 + rank)
    return total / len(groups)

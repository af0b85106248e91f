"""Training the second-stage ranker (LightGBM LambdaRank) on cases the first stage never saw.

The pipeline builds a first-stage bundle on the fit period minus its last day and holds that
day out (:func:`offline.data.dataset.fit_period_log`). Each held-out case becomes a query:
its candidates exactly as the server gathers them, their features exactly as the server
builds them (:meth:`recsvc.ranking.Ranker.candidate_features`), label 1 for the next item.
Cases whose next item is not among the candidates teach nothing and are left out, as are
candidates without a fit-period event (see :meth:`recsvc.ranking.Ranker.rank`). The queries
of the last ``valid_share`` of the users (cases come in user order) decide when boosting
stops, on NDCG@10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.evaluation.evaluate import cases_from_bundle
from offline.evaluation.served import case_session
from offline.ranker.settings import RankerSettings
from recsvc.bundle import Bundle
from recsvc.exceptions import DataError
from recsvc.features import FEATURES
from recsvc.ranking import Ranker


@dataclass(frozen=True)
class TrainingRows:
    """One query per usable case: ``features`` rows grouped by ``groups`` (sizes, in case
    order), out of ``cases`` held-out cases."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    cases: int


def training_rows(bundle: Bundle, negatives: int, seed: int) -> TrainingRows:
    """The queries of every held-out case of ``bundle`` whose target is a candidate, each
    with the target and at most ``negatives`` other candidates drawn at random."""
    ranker = Ranker(bundle)
    cases = cases_from_bundle(bundle)
    # Items without a fit-period event are in the catalogue only because the held-out day
    # clicks them: they are never learned from (the server never scores them either).
    has_history = np.asarray(bundle["item_fit_events"]) > 0
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    rng = np.random.default_rng(seed)
    blocks, labels, groups = [], [], []
    for n, target in enumerate(cases.target.tolist()):
        found = ranker.candidate_features(
            item_ids[int(cases.current[n])], case_session(cases, n, item_ids)
        )
        if found is None:
            continue
        items, features = found
        usable = has_history[items]
        items, features = items[usable], features[usable]
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
        np.concatenate(blocks), np.concatenate(labels), np.array(groups), len(cases)
    )


def train_ranker(rows: TrainingRows, settings: RankerSettings, seed: int) -> tuple[str, dict]:
    """(LightGBM text model, metrics) from ``rows``; the later queries stop the boosting."""
    import lightgbm

    split = int(len(rows.groups) * (1 - settings.valid_share))
    if split < 1 or split >= len(rows.groups):
        raise DataError(f"{len(rows.groups)} training queries are too few to train a ranker")
    cut = int(rows.groups[:split].sum())
    params: dict[str, Any] = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "seed": seed,
        "deterministic": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    names = list(FEATURES)
    train = lightgbm.Dataset(
        rows.features[:cut], rows.labels[:cut], group=rows.groups[:split], feature_name=names
    )
    valid = lightgbm.Dataset(
        rows.features[cut:], rows.labels[cut:], group=rows.groups[split:], reference=train
    )
    booster = lightgbm.train(
        params,
        train,
        num_boost_round=settings.rounds,
        valid_sets=[valid],
        callbacks=[lightgbm.early_stopping(settings.early_stopping, verbose=False)],
    )
    gain = booster.feature_importance(importance_type="gain")
    metrics = {
        "cases": rows.cases,
        "queries": len(rows.groups),
        "rows": len(rows.labels),
        "best_iteration": booster.best_iteration,
        "valid_ndcg": {k: float(v) for k, v in booster.best_score["valid_0"].items()},
        "gain": {
            n: round(float(g), 1)
            for n, g in sorted(zip(names, gain, strict=True), key=lambda pair: -pair[1])
        },
    }
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return text, metrics

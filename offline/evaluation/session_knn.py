"""The session-kNN baselines in ``recsvc eval``: ``sknn`` and ``vsknn``.

Each ranks the whole catalogue (the current item removed) for the shopper's current session
with :mod:`recsvc.session_knn` over the bundle's training sessions (``sessions/*``). The
current session of a case is its window cut where two visits are more than the bundle's
``session_gap_s`` apart, the same rule the pipeline split the training sessions by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from offline.data.sequences import Cases, next_item_cases
from offline.evaluation.metrics import MISS
from recsvc.bundle import Bundle
from recsvc.exceptions import ConfigError
from recsvc.session_knn import SKNN, VSKNN, KNNParams, SessionIndex, target_rank

#: The methods and their defaults (the papers' k and sample size; see docs/RESULTS.md).
KNN_METHODS: dict[str, KNNParams] = {"sknn": SKNN, "vsknn": VSKNN}
#: Most visits of a current session (the papers use the whole session; YooChoose sessions
#: average about 4 visits).
KNN_WINDOW = 20
#: The pipeline's default, for bundles that do not record theirs.
DEFAULT_GAP_S = 1800.0


def knn_params(overrides: Sequence[str]) -> dict[str, KNNParams]:
    """``KNN_METHODS`` with ``METHOD.FIELD=VALUE`` overrides, e.g. ``vsknn.k=200``."""
    params = dict(KNN_METHODS)
    for text in overrides:
        key, sep, value = text.partition("=")
        method, dot, name = key.strip().partition(".")
        fields = {f.name: f for f in dataclasses.fields(KNNParams)}
        if not sep or not dot or method not in params or name not in fields:
            raise ConfigError(
                f"--param takes METHOD.FIELD=VALUE with METHOD in {sorted(params)} and FIELD "
                f"in {sorted(fields)}, got {text!r}"
            )
        current = getattr(params[method], name)
        try:
            converted = type(current)(value.strip())
        except ValueError:
            kind = type(current).__name__
            raise ConfigError(f"--param {key}: {value!r} is not a {kind}") from None
        params[method] = dataclasses.replace(params[method], **{name: converted})
    return params


def current_sessions(bundle: Bundle, cases: Cases) -> list[list[int]]:
    """Each case's current session, oldest visit first and the current item last."""
    arrays = [np.asarray(bundle[f"eval/{n}"]) for n in ("users", "items", "types", "is_holdout")]
    ts = np.asarray(bundle["eval/ts"]) if "eval/ts" in bundle else None
    long = next_item_cases(*arrays, window=KNN_WINDOW, ts=ts)
    if not (
        np.array_equal(long.users, cases.users)
        and np.array_equal(long.current, cases.current)
        and np.array_equal(long.target, cases.target)
    ):
        raise AssertionError("session-kNN cases differ from the evaluation's cases")
    keep = long.windows >= 0
    if long.window_gaps is not None:
        gap = float(bundle.manifest.get("parameters", {}).get("session_gap_s", DEFAULT_GAP_S))
        keep &= np.cumprod(long.window_gaps <= gap, axis=1).astype(bool)
    return [row[mask][::-1].tolist() for row, mask in zip(long.windows, keep, strict=True)]


def knn_ranks(
    index: SessionIndex, sessions: Sequence[Sequence[int]], targets: np.ndarray, params: KNNParams
) -> np.ndarray:
    """Rank of each target in its session's catalogue ranking; ``MISS`` when unscored."""
    ranks = np.full(len(targets), MISS, dtype=np.int64)
    for n, (session, target) in enumerate(zip(sessions, targets.tolist(), strict=True)):
        items, scores = index.scores(session, params)
        rank = target_rank(items, scores, target)
        if rank:
            ranks[n] = rank
    return ranks


def session_index(bundle: Bundle) -> SessionIndex | None:
    """The bundle's training sessions, or None for a bundle built before they were kept."""
    if "sessions/items" not in bundle:
        return None
    return SessionIndex.from_arrays(bundle, n_items=len(bundle["item_ids"]))


def all_knn_ranks(
    bundle: Bundle, cases: Cases, methods: Mapping[str, KNNParams]
) -> dict[str, np.ndarray]:
    """Ranks of every case under each session-kNN method (none without ``sessions/*``)."""
    index = session_index(bundle)
    if index is None or not methods:
        return {}
    sessions = current_sessions(bundle, cases)
    return {name: knn_ranks(index, sessions, cases.target, p) for name, p in methods.items()}

"""The ``served`` method of ``recsvc eval``: each case ranked by the server's own code.

A case becomes the request the server would get: the current item, and the shopper's
session as the session store would hold it (the case's earlier visits, oldest first, as
many as the model's window has slots). The ranking is :meth:`recsvc.ranking.Ranker.rank`,
the call the gRPC handler makes, so for the same session what this method scores is what
the server answers (``tests/e2e/test_serving_matches_offline.py`` checks that over gRPC and
the real Redis). A live session can differ from the case's: Redis keeps a user's last
``--session-length`` events of any type and drops them ``--session-ttl-s`` after the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offline.data.sequences import Cases
from offline.evaluation.metrics import MISS
from recsvc.bundle import Bundle
from recsvc.candidates import CandidateSettings
from recsvc.exceptions import ConfigError
from recsvc.ranking import Ranker, Ranking
from recsvc.sessions import SessionEvent


def case_session(cases: Cases, n: int, item_ids: list[str]) -> list[SessionEvent]:
    """Case ``n``'s earlier visits as session events, oldest first (before its own click)."""
    earlier = [int(i) for i in cases.windows[n, 1:][::-1] if i >= 0]
    return [SessionEvent(f"case{n}-{t}", item_ids[i], "click", float(t)) for t, i in
            enumerate(earlier)]  # fmt: skip


def candidate_settings(bundle: Bundle, overrides: Sequence[str]) -> CandidateSettings | None:
    """The bundle's candidate settings with ``candidates.FIELD=VALUE`` overrides applied, or
    None without overrides."""
    if not overrides:
        return None
    values = dict(bundle.manifest.get("parameters", {}).get("candidates", {}))
    for text in overrides:
        key, _, value = text.partition("=")
        name = key.strip().removeprefix("candidates.")
        if name not in ("session_pools", "knn_items", "cap"):
            raise ConfigError(
                "--param candidates.FIELD=VALUE takes session_pools, knn_items or cap, "
                f"got {text!r}"
            )
        try:
            values[name] = int(value)
        except ValueError:
            raise ConfigError(f"--param {key}: {value!r} is not a whole number") from None
    return CandidateSettings.from_dict(values)


def served_answer(ranker: Ranker, cases: Cases, n: int, item_ids: list[str]) -> Ranking:
    """The server's whole answer to case ``n``'s request."""
    current = item_ids[int(cases.current[n])]
    return ranker.rank(current, ranker.pool_size, case_session(cases, n, item_ids))


def served_ranks(
    bundle: Bundle,
    cases: Cases,
    model: str = "personalized",
    candidates: CandidateSettings | None = None,
) -> np.ndarray:
    """Rank of each target in the server's answer for its case; ``MISS`` when absent.

    ``candidates`` replaces the bundle's candidate settings (for tuning them).
    """
    ranker = Ranker(bundle, model, candidates)
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    for n, target in enumerate(cases.target.tolist()):
        answer = served_answer(ranker, cases, n, item_ids)
        position = {item: slot for slot, item in enumerate(answer.items)}.get(item_ids[target])
        if position is not None:
            ranks[n] = position + 1
    return ranks

"""The ``served`` method of ``recsvc eval``: each case ranked by the server's own code.

A case becomes the request the server would get: the current item, and the shopper's
session as the session store holds it (the earlier visits, oldest first). The ranking is
:meth:`recsvc.ranking.Ranker.rank`, the call the gRPC handler makes, so what this method
scores is what the server answers (``tests/e2e/test_serving_matches_offline.py`` checks that
over gRPC and the real Redis).
"""

from __future__ import annotations

import numpy as np

from offline.data.sequences import Cases
from offline.evaluation.metrics import MISS
from recsvc.bundle import Bundle
from recsvc.ranking import Ranker, Ranking
from recsvc.sessions import SessionEvent


def case_session(cases: Cases, n: int, item_ids: list[str]) -> list[SessionEvent]:
    """Case ``n``'s earlier visits as session events, oldest first (before its own click)."""
    earlier = [int(i) for i in cases.windows[n, 1:][::-1] if i >= 0]
    return [SessionEvent(f"case{n}-{t}", item_ids[i], "click", float(t)) for t, i in
            enumerate(earlier)]  # fmt: skip


def served_answer(ranker: Ranker, cases: Cases, n: int, item_ids: list[str]) -> Ranking:
    """The server's whole answer to case ``n``'s request."""
    current = item_ids[int(cases.current[n])]
    return ranker.rank(current, ranker.pool_size, case_session(cases, n, item_ids))


def served_ranks(bundle: Bundle, cases: Cases, model: str = "personalized") -> np.ndarray:
    """Rank of each target in the server's answer for its case; ``MISS`` when absent."""
    ranker = Ranker(bundle, model)
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    for n, target in enumerate(cases.target.tolist()):
        answer = served_answer(ranker, cases, n, item_ids)
        position = {item: slot for slot, item in enumerate(answer.items)}.get(item_ids[target])
        if position is not None:
            ranks[n] = position + 1
    return ranks

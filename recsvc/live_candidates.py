"""The candidates a request gets from the live co-visits (:mod:`recsvc.live`), for ranking.

A request reads the live neighbours of its viewed item and of the session's newest visits.
Their union joins the request's candidates with the source flag ``live``. A neighbour the
bundle knows is ranked like any candidate. One it does not know (an item new since the
bundle was built) has no embedding, so it is given a *live vector*: the mean of the output
embeddings of the known items it was read from (its *anchors*), weighted by its co-visit
counts with each. The personalized score is linear in the candidate's vector, so its
score is the same weighted mean of the anchors' scores, and no vector is ever built.

Each neighbour also gets its two *shares* for the second stage's live columns: its part of
the co-visits read for the viewed item, and its part of those read for the session's other
items. Shares are ratios of counts read together, so they need no clock and no time base.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recsvc import _live
from recsvc.live import LiveRead


@dataclass(frozen=True)
class LiveCandidates:
    """Live neighbours of one request, split by whether the bundle knows them.

    Attributes
    ----------
    known : int32 (n,), bundle indices, strongest co-visit first
    known_strength : float64 (n,), their summed co-visit counts
    new : ids of the neighbours the bundle does not know, strongest first
    anchors : int32 (m,), the known items read whose lists hold a new neighbour
    weights : float64 (len(new), m), co-visit count of each new neighbour with each anchor
    strength : float64 (len(new),), summed co-visit count of each new neighbour
    known_shares, new_shares : float32 (n, 2) and (len(new), 2), each neighbour's share of
        the co-visits read for the viewed item (column 0) and for the session's other items
        read (column 1)
    absent_shares : float32 (2,), the shares of a candidate that is no live neighbour: 0
        where that side's co-visits were read, NaN where there were none to read
    """

    known: np.ndarray
    known_strength: np.ndarray
    new: list[str]
    anchors: np.ndarray
    weights: np.ndarray
    strength: np.ndarray
    known_shares: np.ndarray
    new_shares: np.ndarray
    absent_shares: np.ndarray

    def __bool__(self) -> bool:
        return bool(len(self.known) or self.new)

    def with_known(self, keep: np.ndarray) -> LiveCandidates:
        """Only the known neighbours ``keep`` selects (a mask or indices)."""
        return dataclasses.replace(
            self,
            known=self.known[keep],
            known_strength=self.known_strength[keep],
            known_shares=self.known_shares[keep],
        )

    def with_new(self, keep: list[int]) -> LiveCandidates:
        """Only the new neighbours at ``keep`` (indices, in order)."""
        if len(keep) == len(self.new):
            return self
        return dataclasses.replace(
            self,
            new=[self.new[i] for i in keep],
            weights=self.weights[keep],
            strength=self.strength[keep],
            new_shares=self.new_shares[keep],
        )

    def new_scores(self, anchor_scores: np.ndarray) -> np.ndarray:
        """Scores of the new neighbours from their anchors' scores (the weighted mean over
        the anchors with a finite score; ``-inf`` when none has one)."""
        finite = np.isfinite(anchor_scores)
        weights = self.weights * finite
        total = weights.sum(axis=1)
        summed = weights @ np.where(finite, anchor_scores, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, summed / total, -np.inf)


_NO_SHARES = np.full(2, np.nan, dtype=np.float32)

EMPTY = LiveCandidates(
    np.empty(0, np.int32),
    np.empty(0),
    [],
    np.empty(0, np.int32),
    np.empty((0, 0)),
    np.empty(0),
    np.empty((0, 2), np.float32),
    np.empty((0, 2), np.float32),
    _NO_SHARES,
)


def gather(live: LiveRead, index: dict[str, int], viewed: str) -> LiveCandidates:
    """The live candidates of a request that viewed ``viewed`` (never one of them).

    Each neighbour's count is summed over the lists that hold it (its strength), and per
    side: the viewed item's list, and the other items' lists. Gathered in C
    (``recsvc/_live.c``) in the order of operations of a loop over the lists, so the sums
    are the same doubles whatever the build.
    """
    (known, known_strength, new, anchors, weights, strength, known_shares, new_shares, absent) = (
        _live.gather(live.by_item, index, viewed)
    )
    absent_shares = np.frombuffer(absent, dtype=np.float32)
    if not known and not new:
        return dataclasses.replace(EMPTY, absent_shares=absent_shares) if live else EMPTY
    n_anchors = len(anchors) // 4
    return LiveCandidates(
        np.frombuffer(known, dtype=np.int32),
        np.frombuffer(known_strength, dtype=np.float64),
        new,
        np.frombuffer(anchors, dtype=np.int32),
        np.frombuffer(weights, dtype=np.float64).reshape(len(new), n_anchors),
        np.frombuffer(strength, dtype=np.float64),
        np.frombuffer(known_shares, dtype=np.float32).reshape(-1, 2),
        np.frombuffer(new_shares, dtype=np.float32).reshape(-1, 2),
        absent_shares,
    )

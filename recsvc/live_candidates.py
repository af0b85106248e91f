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
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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


def gather(live: LiveRead, index: Mapping[str, int], viewed: str) -> LiveCandidates:
    """The live candidates of a request that viewed ``viewed`` (never one of them)."""
    strength: dict[str, float] = {}
    from_anchor: dict[str, dict[int, float]] = {}
    # Co-visit counts read for the viewed item (side 0) and the session's other items (1).
    side_counts: tuple[dict[str, float], dict[str, float]] = ({}, {})
    side_totals = [0.0, 0.0]
    for item, factor, names, scores in live.lists():
        anchor = index.get(item, -1)
        side = 0 if item == viewed else 1
        counts = side_counts[side]
        for neighbour, stored in zip(names, scores, strict=True):
            score = stored * factor
            strength[neighbour] = strength.get(neighbour, 0.0) + score
            counts[neighbour] = counts.get(neighbour, 0.0) + score
            side_totals[side] += score
            if anchor >= 0 and neighbour not in index:
                from_anchor.setdefault(neighbour, {})[anchor] = score
    strength.pop(viewed, None)
    from_anchor.pop(viewed, None)
    absent = np.array([0.0 if t > 0 else np.nan for t in side_totals], dtype=np.float32)
    if not strength:
        return dataclasses.replace(EMPTY, absent_shares=absent) if live else EMPTY

    def shares(names: list[str]) -> np.ndarray:
        out = np.tile(absent, (len(names), 1))
        for side in (0, 1):
            if side_totals[side] > 0:
                counts = side_counts[side]
                out[:, side] = [counts.get(n, 0.0) / side_totals[side] for n in names]
        return out

    ranked = sorted(strength, key=lambda n: -strength[n])  # stable: read order breaks ties
    known = [n for n in ranked if n in index]
    new = [n for n in ranked if n not in index]
    anchors = sorted({a for n in new for a in from_anchor.get(n, {})})
    column = {a: j for j, a in enumerate(anchors)}
    weights = np.zeros((len(new), len(anchors)))
    for i, neighbour in enumerate(new):
        for anchor, score in from_anchor.get(neighbour, {}).items():
            weights[i, column[anchor]] = score
    return LiveCandidates(
        np.array([index[n] for n in known], dtype=np.int32),
        np.array([strength[n] for n in known]),
        new,
        np.array(anchors, dtype=np.int32),
        weights,
        np.array([strength[n] for n in new]),
        shares(known),
        shares(new),
        absent,
    )

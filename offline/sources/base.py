"""The seam every candidate source implements: ranked neighbours per item, and pair scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """Ranked neighbours of every item.

    Attributes
    ----------
    items : int32 array, shape (n_items, k)
        Neighbour indices, best first, padded with -1. An item is never its own neighbour.
    scores : float32 array, shape (n_items, k)
        Similarity of each neighbour, non-increasing along a row; NaN where ``items`` is -1.
    """

    items: np.ndarray
    scores: np.ndarray

    def head(self, k: int) -> Neighbours:
        """The first ``k`` neighbours of every item."""
        return Neighbours(self.items[:, :k], self.scores[:, :k])


class CandidateSource(ABC):
    """One way of proposing similar items (item-CF, item2vec, image, PSS, ...)."""

    #: Name used in configs, pool source flags and evaluation tables.
    name: ClassVar[str]

    @abstractmethod
    def neighbours(self, k: int) -> Neighbours:
        """Top-``k`` neighbours of every catalogue item."""

    @abstractmethod
    def pair_scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Similarity of each query item to each of its candidates.

        Parameters
        ----------
        queries : int array, shape (n,)
        candidates : int array, shape (n, c), -1 padded

        Returns
        -------
        float32 array, shape (n, c)
            NaN where this source cannot score the pair (padding, or an item it never saw).
        """

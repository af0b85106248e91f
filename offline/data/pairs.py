"""Labelled item pairs: the contract between PSS pair mining and SiameseNet training.

:mod:`offline.pss.pairs` mines and cleans them from the event log; :mod:`training.pss`
trains on them. It lives in ``offline.data`` so that ``training`` needs nothing of
``offline`` but its data contracts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsvc.exceptions import DataError


@dataclass(frozen=True)
class Pairs:
    """Labelled item pairs of one task.

    Attributes
    ----------
    left, right : int32 arrays, shape (n,)
        Dense item indices; ``left`` is the anchor.
    label : int8 array, shape (n,)
        1 for a similar (positive) pair, 0 for a negative.
    task : str
    """

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray
    task: str

    def __post_init__(self) -> None:
        shapes = {np.shape(self.left), np.shape(self.right), np.shape(self.label)}
        if len(shapes) != 1 or np.ndim(self.left) != 1:
            raise DataError(f"{self.task}: left, right and label must be 1-D of equal length")
        if len(self.left) and min(self.left.min(), self.right.min()) < 0:
            raise DataError(f"{self.task}: item indices must be >= 0")
        if not np.isin(self.label, (0, 1)).all():
            raise DataError(f"{self.task}: labels must be 0 or 1")

    def __len__(self) -> int:
        return len(self.left)

    @property
    def n_positive(self) -> int:
        return int(np.count_nonzero(self.label))

    @property
    def n_negative(self) -> int:
        return len(self) - self.n_positive

    def select(self, mask: np.ndarray) -> Pairs:
        """The pairs where ``mask`` (bool, shape (n,)) is true, in order."""
        return Pairs(self.left[mask], self.right[mask], self.label[mask], self.task)

"""The PSS compound feature: image, title and behaviour embeddings, each reduced to a common
size, L2-normalised and concatenated (PSS §3.1).

Each part is a matrix over the whole catalogue with a mask of the items it covers (an item
without a photo has no image part). A part wider than ``size`` is reduced by PCA fitted on
its known rows; a narrower one is kept as it is. Rows are then L2-normalised, so each part
weighs the same in the cosine of two compound features, and unknown rows stay zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsvc.exceptions import DataError


@dataclass(frozen=True)
class Part:
    """One raw embedding of the catalogue.

    Attributes
    ----------
    name : str, e.g. "image", "title", "behaviour", "category"
    vectors : float array, shape (n_items, d)
    known : bool array, shape (n_items,)
    """

    name: str
    vectors: np.ndarray
    known: np.ndarray


@dataclass(frozen=True)
class CompoundFeatures:
    """The concatenated, per-part normalised features.

    Attributes
    ----------
    matrix : float32 array, shape (n_items, sum of part sizes)
    known : bool array, shape (n_items,), items with at least one part
    parts : list of (name, start column, stop column)
    """

    matrix: np.ndarray
    known: np.ndarray
    parts: list[tuple[str, int, int]]

    def part(self, name: str) -> np.ndarray:
        """float32 (n_items, d): the reduced, normalised columns of one part."""
        for part, start, stop in self.parts:
            if part == name:
                return self.matrix[:, start:stop]
        raise KeyError(name)


def part_mask(part: Part) -> np.ndarray:
    """Items the part describes: flagged known and not an all-zero row."""
    return np.asarray(part.known, dtype=bool) & np.any(part.vectors != 0, axis=1)


def reduce_dimensions(vectors: np.ndarray, known: np.ndarray, size: int) -> np.ndarray:
    """PCA of the known rows to ``size`` columns (unchanged if already that narrow).

    Returns
    -------
    float32 array, shape (n_items, min(d, size)); unknown rows zero.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    out_dim = min(vectors.shape[1], size)
    out = np.zeros((len(vectors), out_dim), dtype=np.float32)
    rows = vectors[known]
    if not len(rows):
        return out
    if vectors.shape[1] <= size:
        out[known] = rows
        return out
    centred = rows - rows.mean(axis=0)
    # The right singular vectors are the principal axes; sign fixed for determinism.
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:out_dim] * np.sign(axes[:out_dim, :1] + 1e-12)
    # Fewer known rows than columns: the components past their rank stay zero.
    out[np.flatnonzero(known)[:, None], np.arange(len(axes))] = centred @ axes.T
    return out


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def compound_features(parts: Sequence[Part], size: int = 128) -> CompoundFeatures:
    """Reduce, normalise and concatenate the parts.

    Raises
    ------
    DataError
        No parts, or parts that disagree on the number of items.
    """
    if not parts:
        raise DataError("compound features need at least one part")
    n_items = len(parts[0].vectors)
    blocks, layout, start = [], [], 0
    known = np.zeros(n_items, dtype=bool)
    for part in parts:
        if part.vectors.ndim != 2 or len(part.vectors) != n_items or len(part.known) != n_items:
            raise DataError(
                f"part {part.name!r} has shape {part.vectors.shape} and {len(part.known)} "
                f"known flags; expected {n_items} rows"
            )
        mask = part_mask(part)
        block = l2_normalise(reduce_dimensions(part.vectors, mask, size))
        blocks.append(block)
        layout.append((part.name, start, start + block.shape[1]))
        start += block.shape[1]
        known |= mask
    return CompoundFeatures(np.concatenate(blocks, axis=1), known, layout)

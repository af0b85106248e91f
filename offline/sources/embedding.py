"""A candidate source from any item embedding matrix: cosine neighbours via annoy.

One class serves every embedding-based source; only the name and the matrix differ:

* ``"item2vec"``: the input embeddings of the skip-gram model (``training/``).
* ``"image"``: the MobileNet image vectors (:mod:`offline.features.image`).
* ``"pss"`` (the seam for the PSS source): the SiameseNet tower's output for each item's
  compound feature. Once that model can embed the catalogue, the PSS source is
  ``EmbeddingSource("pss", tower_outputs, known)``, with nothing else to write here; an
  attribute post-filter, if wanted, belongs to the pool merge, which sees every source.
"""

from __future__ import annotations

import tempfile

import numpy as np
from annoy import AnnoyIndex

from offline.ann.search import build_index, query_neighbours, unit_rows, usable_rows
from offline.sources.base import CandidateSource, Neighbours
from recsvc.exceptions import ConfigError


class EmbeddingSource(CandidateSource):
    """Cosine similarity between item embeddings.

    Parameters
    ----------
    name : str
        Source name in configs, pool flags and evaluation tables ("item2vec", "image",
        "pss", ...).
    embeddings : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
        Items that have a real embedding (seen in training, or with an image). Rows that
        are unknown, non-finite or all zero are never neighbours and score NaN.
    n_trees, search_k, seed : int
        Annoy settings, see :mod:`offline.ann.search`.
    partitions : int
        1: one index. More: one index per contiguous slice of the catalogue, queried in
        parallel worker processes and merged per item with a heap
        (:mod:`offline.ann.partitioned`); ``search_k`` then applies per partition.
    progress : bool or None
        tqdm bars for the index build and queries (None: only on a terminal).

    Notes
    -----
    ``name`` is set per instance (the base declares it as a class attribute, which fits
    sources with one fixed name such as item-CF).
    """

    def __init__(
        self,
        name: str,
        embeddings: np.ndarray,
        known: np.ndarray | None = None,
        *,
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 0,
        partitions: int = 1,
        progress: bool | None = None,
    ) -> None:
        if not name:
            raise ConfigError("an embedding source needs a name")
        if partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self.name = name
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        #: bool (n_items,): the items this source can score
        self.known = usable_rows(self.embeddings, known)
        #: float32 (n_items, d): L2-normalized rows, zeros where not known
        self.unit = unit_rows(self.embeddings, self.known)
        self.n_trees = n_trees
        self.search_k = search_k
        self.seed = seed
        self.progress = progress
        self._index: AnnoyIndex | None = None

    @property
    def n_items(self) -> int:
        return len(self.embeddings)

    @property
    def index(self) -> AnnoyIndex:
        """The annoy index over the known items, built on first use."""
        if self._index is None:
            self._index = build_index(
                self.embeddings, self.known, n_trees=self.n_trees, seed=self.seed,
                progress=self.progress,
            )  # fmt: skip
        return self._index

    def neighbours(self, k: int) -> Neighbours:
        """Approximate top-``k`` cosine neighbours of every known item.

        Returns
        -------
        Neighbours with arrays of shape (n_items, k); unknown items' rows are padding.
        """
        if self.partitions > 1:
            return self._partitioned_neighbours(k)
        return query_neighbours(
            self.index, self.known, k, search_k=self.search_k, progress=self.progress
        )

    def _partitioned_neighbours(self, k: int) -> Neighbours:
        from offline.ann.partitioned import build_partitioned, query_partitioned

        with tempfile.TemporaryDirectory(prefix=f"recsvc-{self.name}-") as directory:
            index = build_partitioned(
                self.embeddings, self.known, n_partitions=self.partitions,
                n_trees=self.n_trees, seed=self.seed, directory=directory,
                progress=self.progress,
            )  # fmt: skip
            return query_partitioned(
                index, self.embeddings, k, search_k=self.search_k, progress=self.progress
            )

    def pair_scores(
        self, queries: np.ndarray, candidates: np.ndarray, *, block_floats: int = 1 << 22
    ) -> np.ndarray:
        """Exact cosine of each query to each candidate.

        Parameters
        ----------
        queries : int array, shape (n,)
        candidates : int array, shape (n, c), -1 padded
        block_floats : int
            Size bound of the (rows x c x d) block of gathered candidate vectors; 16 MB
            blocks by default, which measured fastest (the gather is memory-bound: about
            10 s for 55k x 200 pairs at d = 1024, well under 1 s at d = 64).

        Returns
        -------
        float32 array, shape (n, c)
            NaN for padding and for pairs with an item that is not known.
        """
        queries = np.asarray(queries, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        n, c = candidates.shape
        out = np.full((n, c), np.nan, dtype=np.float32)
        in_range = (candidates >= 0) & (candidates < self.n_items)
        safe_c = np.where(in_range, candidates, 0)
        valid = in_range & self.known[safe_c]
        q_ok = (queries >= 0) & (queries < self.n_items)
        q_ok[q_ok] = self.known[queries[q_ok]]
        valid &= q_ok[:, None]
        step = max(1, block_floats // max(c * self.unit.shape[1], 1))
        for lo in range(0, n, step):
            rows = slice(lo, lo + step)
            q_vec = self.unit[np.where(q_ok[rows], queries[rows], 0)]  # (b, d)
            c_vec = self.unit[safe_c[rows]]  # (b, c, d)
            cosine = np.einsum("bd,bcd->bc", q_vec, c_vec)
            out[rows] = np.where(valid[rows], np.clip(cosine, -1.0, 1.0), np.nan)
        return out

"""Types of recsvc._second_stage, the second stage's compiled per-request work (see
recsvc/_second_stage.c).

Arrays are taken through the buffer protocol: numpy arrays (memory-mapped ones too), C
contiguous, of the dtype each parameter names.
"""

from collections.abc import Mapping, Sequence
from typing import SupportsIndex, TypeAlias, final

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Buffer

_Int32Array: TypeAlias = Buffer | NDArray[np.int32]
_Int64Array: TypeAlias = Buffer | NDArray[np.int64]
_UInt8Array: TypeAlias = Buffer | NDArray[np.uint8]
_BoolArray: TypeAlias = Buffer | NDArray[np.bool | np.uint8]
_Float32Array: TypeAlias = Buffer | NDArray[np.float32]
_Float64Array: TypeAlias = Buffer | NDArray[np.float64]

@final
class SessionKNN:
    """The training sessions of recsvc.session_knn.SessionIndex, scored per request."""

    def __init__(
        self,
        items: _Int32Array,
        offsets: _Int64Array,
        by_item: _Int32Array,
        item_offsets: _Int64Array,
        idf: _Float32Array,
    ) -> None:
        """Raises ValueError on arrays that do not fit together or hold ids out of range."""

    def scores(
        self,
        session: Sequence[SupportsIndex],
        k: SupportsIndex,
        sample_size: SupportsIndex,
        cosine: bool,
        idf_weight: float,
        /,
    ) -> tuple[bytes, bytes]:
        """(int32 items, float64 scores) as bytes, in no particular order; session: item
        ids oldest first, the current item last (ids out of range are ignored)."""

def best_scored(items: _Int32Array, scores: _Float64Array, n: SupportsIndex, /) -> bytes:
    """int64 positions of the at most n best entries as bytes, best first: the higher
    score, then the smaller item id."""

def top_positions(scores: _Float64Array, n: SupportsIndex, /) -> bytes:
    """int64 positions of the at most n highest scores as bytes, best first: equal scores
    keep their order and NaN comes last (``np.argsort(-scores, kind="stable")[:n]``)."""

@final
class CandidateCore:
    """One bundle's pools, from which a request's candidates are merged."""

    def __init__(self, pools: _Int32Array, pool_sources: _UInt8Array) -> None:
        """pools int32 and pool_sources uint8, both (n_items, c)."""

    def build(
        self,
        current: SupportsIndex,
        rows: Sequence[SupportsIndex],
        knn_items: _Int32Array | None,
        knn_scores: _Float64Array | None,
        knn_n: SupportsIndex,
        live: _Int32Array | None,
        live_flag: SupportsIndex,
        knn_flag: SupportsIndex,
        cap: SupportsIndex,
        /,
    ) -> tuple[bytes, bytes]:
        """(int32 items, uint8 flags) as bytes: first occurrences, each with the OR of all
        its flags, without -1 and current, at most cap; proposed in this order: pool
        ``current`` with its sources, then ``live`` flagged live_flag, then the knn_n best of
        the knn scores (best_scored's order) flagged knn_flag, then the pools of ``rows``."""

@final
class FeatureCore:
    """One bundle's arrays for the second stage's features."""

    def __init__(
        self,
        pools: _Int32Array,
        category: _Int32Array,
        static: _Float32Array,
        columns: Mapping[str, int],
        source_column: SupportsIndex,
        source_bits: _UInt8Array,
        n_features: SupportsIndex,
        itemcf: _Float32Array | None = None,
        item2vec: _Float32Array | None = None,
        item2vec_known: _BoolArray | None = None,
        visit_weights: _Float64Array | None = None,
        input_embeddings: _Float32Array | None = None,
        output_embeddings: _Float32Array | None = None,
        position_weights: _Float32Array | None = None,
        scorable: _BoolArray | None = None,
        model_known: _BoolArray | None = None,
        live_bit: int = 0,
    ) -> None:
        """pools int32 (n_items, c); category int32 (n_items,); static float32 (n_items, 3):
        log popularity, log recent clicks, age in days; columns: feature name -> column;
        source_bits: one bit per source column from source_column on; itemcf float32 like
        pools; item2vec float32 (n_items, d) with item2vec_known; visit_weights float64: the
        weight of each visit slot (None: every visit weighs 1); the personalized model's
        arrays (recsvc.scoring.Scorer), all or none; live_bit: the live source's flag."""

    def build(
        self,
        current: SupportsIndex,
        visits: Sequence[SupportsIndex],
        items: _Int32Array,
        flags: _UInt8Array,
        knn_items: _Int32Array | None,
        knn_scores: _Float64Array | None,
        out: _Float32Array,
        window: Sequence[SupportsIndex] | None = None,
        live_items: _Int32Array | None = None,
        live_shares: _Float32Array | None = None,
        absent_shares: _Float32Array | None = None,
        /,
    ) -> None:
        """Write the columns of each candidate into out (float32 (len(items), n_features)),
        NaN where a column is not defined: the model's columns need the model and the
        window; the live columns are absent_shares (float32 (2,)) but for the candidates
        flagged live_bit that are among live_items (int32 (n,); live_shares float32 (n, 2))."""

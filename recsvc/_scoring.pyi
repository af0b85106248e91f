"""Types of recsvc._scoring, the compiled scoring core (see recsvc/_scoring.c).

Arrays are taken through the buffer protocol: numpy arrays (memory-mapped ones too), C
contiguous, of the dtype each parameter names.
"""

from collections.abc import Sequence
from typing import SupportsIndex, TypeAlias, final

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Buffer

# numpy's stubs give arrays ``__buffer__`` only from Python 3.12 on, so arrays are named too.
_Int32Array: TypeAlias = Buffer | NDArray[np.int32]
_UInt8Array: TypeAlias = Buffer | NDArray[np.uint8]
_BoolArray: TypeAlias = Buffer | NDArray[np.bool | np.uint8]
_Float32Array: TypeAlias = Buffer | NDArray[np.float32]
_Float64Array: TypeAlias = Buffer | NDArray[np.float64]

@final
class PoolRanker:
    """One bundle's pools, ranked per request."""

    def __init__(
        self,
        pools: _Int32Array,
        pool_sources: _UInt8Array,
        item_ids: list[str],
        input_embeddings: _Float32Array | None = None,
        output_embeddings: _Float32Array | None = None,
        position_weights: _Float32Array | None = None,
        scorable: _BoolArray | None = None,
    ) -> None:
        """pools: int32 (n_items, c), -1 padded; pool_sources: uint8 (n_items, c);
        item_ids: one id per row; the model's arrays: float32 (n_items, d) twice, float32
        (w_max,), and bool or uint8 (n_items,) or None. Without input_embeddings, only the
        offline order can be ranked."""

    def rank(
        self,
        row: SupportsIndex,
        window: Sequence[SupportsIndex] | None,
        keep: _BoolArray | None,
        k: SupportsIndex,
        /,
    ) -> tuple[list[str], list[float], list[int]]:
        """(item ids, scores, source flags) of the at most k best slots of pool ``row`` that
        hold an item and that keep (a bool array, or None) allows. window: item indices,
        current item first, -1 for empty slots; None keeps the offline order."""

def pool_scores(
    window: Sequence[SupportsIndex],
    pool: _Int32Array,
    input_embeddings: _Float32Array,
    output_embeddings: _Float32Array,
    position_weights: _Float32Array,
    scorable: _BoolArray | None,
    out: _Float32Array,
    /,
) -> None:
    """Write the personalized score of each pool slot into out (float32, one per slot; -inf
    for padding and unscorable items). window: item indices, current item first, -1 for
    empty slots."""

def forest_scores(
    features: _Float32Array,
    split_feature: _Int32Array,
    threshold: _Float64Array,
    decision_type: _Int32Array,
    left_child: _Int32Array,
    right_child: _Int32Array,
    leaf_value: _Float64Array,
    tree_node_offset: _Int32Array,
    tree_leaf_offset: _Int32Array,
    out: _Float64Array,
    /,
) -> None:
    """Add each row's raw score under a flattened LightGBM forest (see recsvc.forest) to out
    (float64 (n_rows,)), summing the trees in order. features: float32 (n_rows, n_features),
    NaN missing; per internal node, tree after tree: split_feature, decision_type,
    left_child, right_child int32 and threshold float64, child indices local to their tree
    (c >= 0 node c, c < 0 leaf ~c); leaf_value float64 per leaf; tree_node_offset and
    tree_leaf_offset int32 (n_trees + 1,), where each tree's nodes and leaves start. Raises
    ValueError on a forest it cannot walk safely (checked on every call) or on categorical
    splits, TypeError on a wrong dtype."""

@final
class PackedForest:
    """A flattened LightGBM forest (the arrays of forest_scores), checked and packed once;
    ``scores`` is safe from any thread and releases the GIL."""

    def __init__(
        self,
        split_feature: _Int32Array,
        threshold: _Float64Array,
        decision_type: _Int32Array,
        left_child: _Int32Array,
        right_child: _Int32Array,
        leaf_value: _Float64Array,
        tree_node_offset: _Int32Array,
        tree_leaf_offset: _Int32Array,
        n_features: SupportsIndex,
    ) -> None:
        """Raises ValueError on a forest it cannot walk safely on n_features columns, or on
        categorical splits; TypeError on a wrong dtype. Copies what it needs."""

    def scores(self, features: _Float32Array, out: _Float64Array, /) -> None:
        """Add each row's raw score to out (float64 (n_rows,)), summing the trees in order.
        features: float32 (n_rows, n_features), NaN missing."""

"""Weighted-pooling personalized scoring, shared by the server and offline evaluation.

:class:`Scorer` is one bundle model, loaded once. The server's ranker and ``recsvc eval``
both take it and score one case at a time with the same compiled function
(:mod:`recsvc._scoring`), so a served ranking equals the offline one to the last bit.
:func:`user_vector` is the same pooling in numpy: the readable definition, which tests hold
the compiled one to.

The user vector for a window of recent items ``v_0`` (the current item), ``v_1`` ... is
``u = (1/n) * sum_j w_j * v_j`` over the ``n`` valid slots, with learned position weights
``w``; a candidate ``c`` scores ``u . o_c`` with the separate output embedding ``o``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from recsvc.bundle import Bundle

try:
    from recsvc import _scoring
except ImportError as exc:  # a source tree nobody built
    raise ImportError(
        "recsvc._scoring, the compiled scoring core, is not built: install recsvc with "
        "`pip install -e .` (it needs a C compiler and Python's headers)"
    ) from exc

T = TypeVar("T")

#: ``PoolRanker(pools, pool_sources, item_ids, input_embeddings=None, ...).rank(row, window,
#: keep, k) -> (item ids, scores, source flags)``: the at most ``k`` best slots of one pool
#: of a bundle whose arrays it holds, by :func:`window_scores`, ties in pool order and NaN
#: last (numpy's stable argsort order); ``window=None`` keeps the offline order, scored
#: ``1 - slot / pool size``. The server's call.
PoolRanker = _scoring.PoolRanker


def user_vector(
    window: Sequence[int], input_embeddings: np.ndarray, position_weights: np.ndarray
) -> np.ndarray:
    """Pool one window into the user vector.

    Parameters
    ----------
    window : ints
        Item indices, slot 0 the current item, then older ones; -1 marks an empty slot
        (padding, or an item the model never saw).
    input_embeddings : float32 array, shape (n_items, d)
    position_weights : float32 array, shape (w_max,) with ``w_max >= len(window)``

    Returns
    -------
    float32 array, shape (d,); all zeros for a window with no valid slot.
    """
    slots = [slot for slot, item in enumerate(window) if item >= 0]
    if not slots:
        return np.zeros(input_embeddings.shape[1], dtype=np.float32)
    items = [window[slot] for slot in slots]
    pooled: np.ndarray = position_weights[slots] @ input_embeddings[items]
    return (pooled / np.float32(len(slots))).astype(np.float32, copy=False)


def window_scores(
    window: Sequence[int],
    pool: np.ndarray,
    input_embeddings: np.ndarray,
    output_embeddings: np.ndarray,
    position_weights: np.ndarray,
    scorable: np.ndarray | None = None,
) -> np.ndarray:
    """Scores of one pool's candidates for the user vector of one window.

    The same maths as :func:`user_vector` followed by ``output_embeddings[pool] @ user``,
    computed by the compiled core (:mod:`recsvc._scoring`) in one call: on a busy server
    each numpy call runs with cold caches, so calls, not flops, were the cost. Its sums have
    a fixed order, so the server and the offline evaluation get the same bits.

    Parameters
    ----------
    window : ints
        Item indices, slot 0 the current item, then older ones; -1 marks an empty slot.
    pool : int32 array, shape (c,), -1 padded
    input_embeddings, output_embeddings : float32 arrays, shape (n_items, d)
    position_weights : float32 array, shape (w_max,) with ``w_max >= len(window)``
    scorable : bool array, shape (n_items,), optional
        Items the model can score; others get ``-inf``.

    Returns
    -------
    float32 array, shape (c,); ``-inf`` for padding and unscorable items.
    """
    scores = np.empty(len(pool), dtype=np.float32)
    _scoring.pool_scores(
        window, pool, input_embeddings, output_embeddings, position_weights, scorable, scores
    )
    return scores


def case_scores(
    windows: np.ndarray,
    pools: np.ndarray,
    input_embeddings: np.ndarray,
    output_embeddings: np.ndarray,
    position_weights: np.ndarray,
    scorable: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`window_scores` of many cases, one by one, exactly as the server scores each.

    Parameters
    ----------
    windows : int array, shape (n, w), -1 for empty or unknown slots
    pools : int array, shape (n, c), -1 padded

    Returns
    -------
    float32 array, shape (n, c)
    """
    pools = np.ascontiguousarray(pools, dtype=np.int32)
    inputs, outputs, weights = (
        np.ascontiguousarray(a, dtype=np.float32)
        for a in (input_embeddings, output_embeddings, position_weights)
    )
    if scorable is not None:
        scorable = np.ascontiguousarray(scorable, dtype=bool)
    scores = np.empty(pools.shape, dtype=np.float32)
    for n, window in enumerate(np.asarray(windows).tolist()):
        scores[n] = window_scores(window, pools[n], inputs, outputs, weights, scorable)
    return scores


def session_window(current: T, history: Sequence[T], window: int) -> list[T]:
    """The items of one request's scoring window, as the offline cases build it.

    Parameters
    ----------
    current
        The item being viewed.
    history : sequence
        Items of the session's click and add-to-cart events, oldest first.
    window : int
        Slots of the window.

    Returns
    -------
    list of at most ``window`` items: ``current``, then the earlier *visits*, newest first.
    Runs of the same item are one visit, and a trailing visit of ``current`` is the current
    view itself, so it is not counted again.
    """
    visits: list[T] = []
    for item in history:
        if not visits or visits[-1] != item:
            visits.append(item)
    if visits and visits[-1] == current:
        visits.pop()
    return [current, *visits[::-1][: window - 1]]


@dataclass(frozen=True)
class Scorer:
    """One personalized model of a bundle: its arrays and which items it knows.

    Built once per bundle by :meth:`from_bundle` and read-only after, so the server's
    :class:`~recsvc.ranking.Ranker` and the offline evaluation share the same masking and
    the same compiled scoring.

    Attributes
    ----------
    input_embeddings, output_embeddings : float32 arrays, shape (n_items, d)
    position_weights : float32 array, shape (width,)
    known : bool array, shape (n_items,)
        Items with a trained input embedding: only these count in a window.
    scorable : bool array, shape (n_items,)
        Items with a trained output embedding: others score ``-inf``.
    """

    name: str
    input_embeddings: np.ndarray
    output_embeddings: np.ndarray
    position_weights: np.ndarray
    known: np.ndarray
    scorable: np.ndarray
    _known_bytes: bytes = field(init=False, repr=False, compare=False)

    @classmethod
    def from_bundle(cls, bundle: Bundle, name: str) -> Scorer | None:
        """The bundle's model ``name``, or None when the bundle has none of that name."""
        prefix = f"models/{name}"
        if f"{prefix}/position_weights" not in bundle:
            return None
        known = np.asarray(bundle[f"{prefix}/known"])
        scorable_name = f"{prefix}/scorable"
        scorable = np.asarray(bundle[scorable_name]) if scorable_name in bundle else known
        return cls(
            name,
            np.asarray(bundle[f"{prefix}/input_embeddings"]),
            np.asarray(bundle[f"{prefix}/output_embeddings"]),
            np.asarray(bundle[f"{prefix}/position_weights"]),
            known,
            scorable,
        )

    @property
    def width(self) -> int:
        """Slots of a scoring window."""
        return len(self.position_weights)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arrays :class:`PoolRanker` scores with, in its argument order."""
        return self.input_embeddings, self.output_embeddings, self.position_weights, self.scorable

    def __post_init__(self) -> None:
        # Per-request lookups from Python ints: indexing bytes is a tenth of the cost of
        # indexing a numpy array.
        object.__setattr__(self, "_known_bytes", self.known.tobytes())

    def window(self, items: Sequence[int]) -> list[int]:
        """A window's item indices with the items the model does not know emptied (-1)."""
        known = self._known_bytes
        return [item if item >= 0 and known[item] else -1 for item in items]

    def case_scores(self, windows: np.ndarray, pools: np.ndarray) -> np.ndarray:
        """Scores of many cases exactly as the server scores each: :meth:`window`, then
        :func:`case_scores`.

        Parameters
        ----------
        windows : int array, shape (n, w), -1 for empty slots
        pools : int array, shape (n, c), -1 padded

        Returns
        -------
        float32 array, shape (n, c)
        """
        windows = np.asarray(windows)
        masked = np.array([self.window(row) for row in windows.tolist()], dtype=np.int64)
        return case_scores(masked.reshape(windows.shape), pools, *self.arrays)

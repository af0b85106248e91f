"""Session-based nearest neighbours: SKNN and V-SKNN, from numpy arrays.

SKNN is Jannach & Ludewig 2017 ("When recurrent neural networks meet the neighborhood for
session-based recommendation", RecSys); V-SKNN is Ludewig & Jannach 2018 ("Evaluation of
session-based recommendation algorithms", UMUAI). Both score the items of past sessions that
resemble the shopper's current one.

The index
    Each training session is the SET of its dense item ids with an end time (its last
    event). Sessions are numbered most recent first: session 0 has the largest end time, and
    equal end times keep the order of the caller's session ids. So "more recent" and "smaller
    session number" are the same thing, and every tie below (recency, then id) is an order
    on session numbers. ``build_session_index`` drops sessions with fewer than ``min_items``
    distinct items (2 by default: a one-item session can only score an item the shopper
    already has, and it takes a sample slot). CSR arrays of :class:`SessionIndex`:
    ``items``/``offsets`` (each session's items, ascending), ``end_ts`` (non-increasing),
    ``by_item``/``item_offsets`` (each item's sessions, ascending number, i.e. most recent
    first), ``idf`` (``log(n_sessions / df)``, 0 for an item in no session).

Scoring one current session (item ids oldest first, the current item last; ids outside
``0..n_items-1`` are ignored, and the current item is the last id kept)
    1. Candidates: the sessions holding at least one current item; above ``sample_size``,
       the ``sample_size`` most recent of them.
    2. Similarity with S the set of current items and N a candidate's items. ``cosine``:
       ``|S ∩ N| / sqrt(|S| |N|)``. ``vector``: the distinct current items in order of their
       last occurrence get positions p = 1 (oldest) .. L (newest) and weights p / L;
       sim = the sum of the weights of S ∩ N (computed as ``sum(p) / L``).
    3. Neighbours: the ``k`` most similar candidates (ties: the more recent); sim 0 dropped.
    4. ``score(i) = (sum over neighbours holding i of sim) * (1 + idf_weight * idf[i])``.
    5. The current item is removed; only items with score > 0 are returned.

Scoring is compiled (``recsvc/_second_stage.c``): the candidates come from a merge of the
current items' session lists, so one request reads about ``len(S) * sample_size`` session
numbers and ``k * |N|`` items. Sims and scores are summed over the sessions in ascending
number, the order of the definitions above, so a score does not depend on the build.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import numpy as np

from recsvc import _second_stage
from recsvc.exceptions import BundleError, ConfigError, DataError, InvalidRequest

Similarity = Literal["cosine", "vector"]
SIMILARITIES: tuple[str, ...] = ("cosine", "vector")

#: Array names, after the prefix, and the dtype each is stored in.
ARRAY_DTYPES: dict[str, type[np.generic]] = {
    "items": np.int32,
    "offsets": np.int64,
    "end_ts": np.float64,
    "by_item": np.int32,
    "item_offsets": np.int64,
    "idf": np.float32,
}
_CHUNK = 1 << 22  # elements per step when validating big arrays, to bound temporaries


@dataclass(frozen=True)
class KNNParams:
    """How to score: neighbours kept, candidates sampled, similarity, idf weight."""

    k: int = 100
    sample_size: int = 500
    similarity: Similarity = "cosine"
    idf_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"KNNParams.k must be an int >= 1, got {self.k!r}")
        if (
            isinstance(self.sample_size, bool)
            or not isinstance(self.sample_size, int)
            or self.sample_size < 1
        ):
            raise ConfigError(
                f"KNNParams.sample_size must be an int >= 1, got {self.sample_size!r}"
            )
        if self.similarity not in SIMILARITIES:
            raise ConfigError(
                f"KNNParams.similarity must be one of {SIMILARITIES}, got {self.similarity!r}"
            )
        weight = self.idf_weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigError(f"KNNParams.idf_weight must be a finite float >= 0, got {weight!r}")


SKNN = KNNParams(k=100, sample_size=500, similarity="cosine", idf_weight=0.0)
VSKNN = KNNParams(k=100, sample_size=500, similarity="vector", idf_weight=1.0)


class ArraySource(Protocol):
    """Arrays by name: a dict, or a :class:`recsvc.bundle.Bundle`."""

    def __getitem__(self, name: str, /) -> np.ndarray: ...

    def __contains__(self, name: str, /) -> bool: ...


_EMPTY_ITEMS = np.zeros(0, dtype=np.int32)
_EMPTY_SCORES = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class SessionIndex:
    """Training sessions as CSR arrays, both ways (see the module docstring)."""

    items: np.ndarray
    offsets: np.ndarray
    end_ts: np.ndarray
    by_item: np.ndarray
    item_offsets: np.ndarray
    idf: np.ndarray

    @property
    def n_sessions(self) -> int:
        return len(self.end_ts)

    @property
    def n_items(self) -> int:
        return len(self.idf)

    # -- bundle arrays -------------------------------------------------------------------

    def to_arrays(self, prefix: str = "sessions/") -> dict[str, np.ndarray]:
        """The arrays by bundle name (``sessions/items``, ...)."""
        return {prefix + name: getattr(self, name) for name in ARRAY_DTYPES}

    @classmethod
    def from_arrays(
        cls, mapping: ArraySource, prefix: str = "sessions/", n_items: int | None = None
    ) -> SessionIndex:
        """Read and check the arrays ``to_arrays`` wrote; :class:`BundleError` if unusable.

        Arrays are used as given (memory-mapped ones stay mapped): the dtypes must match.
        ``n_items``, when given, is the catalogue the index must cover exactly (a bundle's).
        """
        arrays: dict[str, np.ndarray] = {}
        for name, dtype in ARRAY_DTYPES.items():
            full = prefix + name
            if full not in mapping:
                raise BundleError(f"session index: array {full!r} is missing")
            array = mapping[full]
            if not isinstance(array, np.ndarray) or array.ndim != 1:
                raise BundleError(f"session index: {full} must be a 1-d array")
            if array.dtype != dtype:
                raise BundleError(
                    f"session index: {full} has dtype {array.dtype}, expected {np.dtype(dtype)}"
                )
            arrays[name] = array
        index = cls(**arrays)
        if n_items is not None and index.n_items != n_items:
            raise BundleError(
                f"session index: {prefix}item_offsets covers {index.n_items} items, the "
                f"catalogue has {n_items}"
            )
        index._validate(prefix)
        return index

    def _validate(self, prefix: str) -> None:
        def fail(message: str) -> BundleError:
            return BundleError(f"session index ({prefix}*): {message}")

        n_sessions, n_items, total = self.n_sessions, self.n_items, len(self.items)
        if len(self.by_item) != total:
            raise fail(f"by_item has {len(self.by_item)} entries, items has {total}")
        for name, offsets, n, length in (
            ("offsets", self.offsets, n_sessions, total),
            ("item_offsets", self.item_offsets, n_items, total),
        ):
            if len(offsets) != n + 1:
                raise fail(f"{name} has {len(offsets)} entries, expected {n + 1}")
            if offsets[0] != 0 or offsets[-1] != length:
                raise fail(f"{name} must run from 0 to {length}")
            if not _all_chunks(offsets, lambda a: bool(np.all(a[1:] >= a[:-1]))):
                raise fail(f"{name} is not non-decreasing")
        if not _all_chunks(self.end_ts, lambda a: bool(np.all(np.isfinite(a)))):
            raise fail("end_ts has non-finite values")
        if not _all_chunks(self.end_ts, lambda a: bool(np.all(a[1:] <= a[:-1]))):
            raise fail("end_ts is not non-increasing (sessions must be most recent first)")
        for name, ids, bound in (
            ("items", self.items, n_items),
            ("by_item", self.by_item, n_sessions),
        ):
            if not _in_range(ids, bound):
                raise fail(f"{name} has ids outside 0..{bound - 1}")
        for name, ids, offsets in (
            ("items", self.items, self.offsets),
            ("by_item", self.by_item, self.item_offsets),
        ):
            if not _increasing_within(ids, offsets):
                raise fail(f"{name} is not strictly increasing within each row")
        if not np.array_equal(
            np.diff(self.item_offsets), np.bincount(self.items, minlength=n_items)
        ) or not np.array_equal(
            np.diff(self.offsets), np.bincount(self.by_item, minlength=n_sessions)
        ):
            raise fail("items and by_item do not hold the same (session, item) pairs")
        if not np.allclose(self.idf, _idf(np.diff(self.item_offsets), n_sessions), rtol=1e-5):
            raise fail("idf is not log(n_sessions / df)")

    # -- scoring -------------------------------------------------------------------------

    def scores(
        self, session: Sequence[int] | np.ndarray, params: KNNParams
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (int32) and their scores (float64, all > 0), in no particular order."""
        if isinstance(session, np.ndarray):
            session = session.ravel().tolist()
        items, scores = self._core.scores(
            session,
            params.k,
            params.sample_size,
            params.similarity == "cosine",
            float(params.idf_weight),
        )
        return np.frombuffer(items, dtype=np.int32), np.frombuffer(scores, dtype=np.float64)

    def prepare(self) -> None:
        """Build the compiled scorer now (it checks the arrays once), not on first use."""
        self._core  # noqa: B018 (the cached property is the point)

    @cached_property
    def _core(self) -> _second_stage.SessionKNN:
        """The compiled scorer over these arrays (made on first use)."""
        return _second_stage.SessionKNN(
            self.items, self.offsets, self.by_item, self.item_offsets, self.idf
        )

    def top_items(
        self, session: Sequence[int] | np.ndarray, params: KNNParams, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items and scores, best first (ties: the smaller item id)."""
        if n < 0:
            raise InvalidRequest(f"n must be >= 0, got {n}")
        if n == 0:
            return _EMPTY_ITEMS, _EMPTY_SCORES
        return top_scored(*self.scores(session, params), n)


def request_session(current: int, visits: Sequence[int]) -> list[int]:
    """The session V-SKNN scores for a request: the earlier ``visits`` (given newest first,
    -1 for unknown items, which are left out) oldest first, then the current item."""
    return [*(v for v in reversed(visits) if v >= 0), current]


def top_scored(items: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best of :meth:`SessionIndex.scores`'s items, best first (ties: the smaller
    item id)."""
    if n <= 0:
        return _EMPTY_ITEMS, _EMPTY_SCORES
    best = np.frombuffer(_second_stage.best_scored(items, scores, n), dtype=np.int64)
    return items[best], scores[best]


def target_rank(items: np.ndarray, scores: np.ndarray, target: int) -> int:
    """1-based rank of ``target`` (higher score first, ties by item id), 0 if unscored."""
    where = np.flatnonzero(items == target)
    if len(where) == 0:
        return 0
    own = scores[where[0]]
    better = (scores > own) | ((scores == own) & (items < target))
    return int(np.count_nonzero(better)) + 1


def _idf(df: np.ndarray, n_sessions: int) -> np.ndarray:
    idf = np.zeros(len(df), dtype=np.float32)
    seen = df > 0
    idf[seen] = np.log(n_sessions / df[seen].astype(np.float64))
    return idf


def _all_chunks(array: np.ndarray, check: Callable[[np.ndarray], bool]) -> bool:
    """``check`` on overlapping chunks of ``array`` (one shared element between chunks)."""
    for start in range(0, max(len(array) - 1, 1), _CHUNK):
        chunk = np.asarray(array[start : start + _CHUNK + 1])
        if len(chunk) and not check(chunk):
            return False
    return True


def _in_range(ids: np.ndarray, bound: int) -> bool:
    """Do all ``ids`` lie in ``0..bound-1``?"""
    for start in range(0, len(ids), _CHUNK):
        chunk = np.asarray(ids[start : start + _CHUNK])
        if chunk.min() < 0 or chunk.max() >= bound:
            return False
    return True


def _increasing_within(ids: np.ndarray, offsets: np.ndarray) -> bool:
    """Is every row ``ids[offsets[r]:offsets[r + 1]]`` strictly increasing?"""
    if len(ids) < 2:
        return True
    # positions j where ids[j] starts a row: there, ids[j] <= ids[j - 1] is allowed
    row_starts = np.zeros(len(ids), dtype=np.bool_)
    row_starts[offsets[:-1][offsets[:-1] < len(ids)]] = True
    for start in range(1, len(ids), _CHUNK):
        stop = min(start + _CHUNK, len(ids))
        ok = (ids[start:stop] > ids[start - 1 : stop - 1]) | row_starts[start:stop]
        if not ok.all():
            return False
    return True


def build_session_index(
    session_ids: np.ndarray,
    items: np.ndarray,
    ts: np.ndarray,
    n_items: int,
    *,
    min_items: int = 2,
) -> SessionIndex:
    """Build the index from events in any order (vectorized; tens of millions of events).

    Parameters
    ----------
    session_ids : int, one per event; any values (the caller's split into sessions)
    items : int, dense item ids in ``0..n_items-1``
    ts : float, Unix seconds; a session's end time is its largest
    n_items : size of the item catalogue
    min_items : sessions with fewer distinct items are dropped (2: see the module docstring)
    """
    session_ids, items, ts = np.asarray(session_ids), np.asarray(items), np.asarray(ts)
    if not (session_ids.ndim == items.ndim == ts.ndim == 1):
        raise DataError("session_ids, items and ts must be 1-d arrays")
    if not (len(session_ids) == len(items) == len(ts)):
        raise DataError(
            f"session_ids, items and ts differ in length: "
            f"{len(session_ids)}, {len(items)}, {len(ts)}"
        )
    if len(items) and not (
        np.issubdtype(session_ids.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)
    ):
        raise DataError("session_ids and items must be integer arrays")
    if n_items < 0 or n_items > np.iinfo(np.int32).max:
        raise DataError(f"n_items out of range: {n_items}")
    if min_items < 1:
        raise DataError(f"min_items must be >= 1, got {min_items}")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise DataError(f"item ids must lie in 0..{n_items - 1}")
    ts = ts.astype(np.float64, copy=False)
    if not np.all(np.isfinite(ts)):
        raise DataError("ts has non-finite values")

    # Plain sorts of int64 keys throughout: much faster than np.unique or stable argsorts.
    # Raw sessions in the caller's id order, and each one's end time.
    by_caller_id = np.argsort(session_ids)
    sorted_ids = session_ids[by_caller_id]
    first = np.flatnonzero(np.r_[len(items) > 0, sorted_ids[1:] != sorted_ids[:-1]])
    n_raw = len(first)
    raw_end = np.maximum.reduceat(ts[by_caller_id], first) if n_raw else ts[:0]
    # rank of each raw session by recency (end time desc, then caller id asc)
    raw_rank = np.empty(n_raw, dtype=np.int64)
    raw_rank[np.lexsort((np.arange(n_raw), -raw_end))] = np.arange(n_raw)
    event_rank = np.empty(len(items), dtype=np.int64)
    event_rank[by_caller_id] = np.repeat(raw_rank, np.diff(np.r_[first, len(items)]))
    del by_caller_id, sorted_ids

    # distinct (session, item) pairs, sorted by recency rank then item
    width = max(n_items, 1)
    pairs = np.sort(event_rank * width + items.astype(np.int64))
    del event_rank
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    pair_rank, pair_item = np.divmod(pairs, width)
    del pairs

    # keep the sessions with min_items distinct items, renumbered 0.. in the same order
    size = np.bincount(pair_rank, minlength=n_raw)
    kept = size >= min_items
    number = np.cumsum(kept) - 1
    in_kept = kept[pair_rank]
    pair_number = number[pair_rank[in_kept]]
    pair_item = pair_item[in_kept].astype(np.int32)
    del pair_rank, in_kept
    n_sessions = int(np.count_nonzero(kept))
    end_ts = np.empty(n_raw, dtype=np.float64)  # by rank
    end_ts[raw_rank] = raw_end

    # each item's sessions, by number (most recent first)
    height = max(n_sessions, 1)
    by_item = (np.sort(pair_item.astype(np.int64) * height + pair_number) % height).astype(np.int32)

    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(size[kept], out=offsets[1:])
    df = np.bincount(pair_item, minlength=n_items)
    item_offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(df, out=item_offsets[1:])
    return SessionIndex(
        items=pair_item,
        offsets=offsets,
        end_ts=end_ts[kept],
        by_item=by_item,
        item_offsets=item_offsets,
        idf=_idf(df, n_sessions),
    )

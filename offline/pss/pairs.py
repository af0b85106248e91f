"""Training and evaluation pairs for the PSS product embeddings: mining, cleaning, splitting.

Two tasks give pairs ``(left, right, label)`` of dense item indices, label 1 = similar
(:class:`offline.data.pairs.Pairs`, the contract with :mod:`training.pss`):

``view_to_purchase`` (:func:`mine_view_to_purchase`)
    Built from each user's time-ordered events. The *view sequence* of a user is their clicks
    with consecutive repeats of one item collapsed (a reload is not a new view), so each
    *view slot* holds one item. For every cart or buy event of item ``p``, the anchor is the
    most recent click before it (earlier in the ``(user, ts)``-sorted log; equal timestamps
    keep the log's order) by the same user on an item other than ``p``: the item of the last
    view slot before the event, or of the slot before that when the last slot is ``p``
    itself (the usual "view p, cart p"). The positive is ``(anchor, p)``. With ``max_gap``,
    the conversion must come at most ``max_gap`` seconds after that anchor click. The hard
    negative is ``(anchor, q)`` with ``q`` the item ``n_back`` view slots before the
    anchor's slot in the same user's view sequence; none when that slot does not exist or
    ``q`` is the positive or the anchor. A cart and a later buy of ``p`` after the same
    anchor click give one pair, not two. The same item pair mined from different users or
    visits is kept each time: how often shoppers convert on it is part of the signal.

``catalogue_labelled`` (:func:`mine_catalogue_labelled`)
    The data sets have no human-labelled pairs, so this task takes its labels from the
    catalogue: for sampled anchor items, a positive is another item of the same category and
    the negatives are items of other categories (default 5 per positive), all drawn
    uniformly and seeded. Items of unknown category (-1) are never used.

Cleaning (:func:`clean_pairs`) follows the PSS paper: a positive is dropped when its cosine
is below ``positive_min`` (0.6) on *every* raw embedding, a negative when its cosine is above
``negative_max`` (0.8) on *all* of them. Only the embeddings known for both items of a pair
(``known`` mask true and a non-zero vector) take part in that judgement; a pair that no
embedding knows for both items cannot be judged and is kept (counted as "unjudged").

:func:`split_by_anchor` holds out every pair of a seeded sample of anchors (left items), so
the recall-at-precision evaluation scores anchors the model never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offline.data.interactions import BUY, CART, CLICK, Interactions
from offline.data.pairs import Pairs
from offline.data.sequences import visit_starts
from recsvc.exceptions import ConfigError, DataError

VIEW_TO_PURCHASE = "view_to_purchase"
CATALOGUE_LABELLED = "catalogue_labelled"


def _pairs(left: np.ndarray, right: np.ndarray, label: np.ndarray, task: str) -> Pairs:
    return Pairs(left.astype(np.int32), right.astype(np.int32), label.astype(np.int8), task)


def mine_view_to_purchase(
    events: Interactions,
    n_back: int = 20,
    max_gap: float | None = None,
    conversion_types: Sequence[int] = (CART, BUY),
) -> Pairs:
    """Positives (last viewed item -> item carted/bought next) and their hard negatives.

    See the module docstring for the exact rules.

    Parameters
    ----------
    events : Interactions
        Sorted by (user, ts), as ``Interactions`` always is.
    n_back : int
        View slots between the anchor and its hard negative.
    max_gap : float, optional
        Largest number of seconds from the anchor click to the conversion; default no limit.
    conversion_types : sequence of int
        Event types that make the positive (indices into ``EVENT_TYPES``).

    Returns
    -------
    Pairs
        Task ``"view_to_purchase"``; each positive is followed by its negative, if any, in
        the order of the conversion events.
    """
    if n_back < 1:
        raise ConfigError(f"n_back must be >= 1, got {n_back}")
    if max_gap is not None and not max_gap > 0:
        raise ConfigError(f"max_gap must be > 0 seconds or None, got {max_gap}")
    users, items, types, ts = events.users, events.items, events.types, events.ts
    empty = _pairs(*(np.zeros(0, dtype=np.int64) for _ in range(3)), VIEW_TO_PURCHASE)
    is_click = types == CLICK
    click_at = np.flatnonzero(is_click)  # event index of each click
    conv = np.flatnonzero(np.isin(types, np.asarray(conversion_types)))
    if len(conv) == 0 or len(click_at) == 0:
        return empty
    c_users, c_items = users[click_at], items[click_at]
    starts = visit_starts(c_users, c_items)  # a click that opens a view slot
    slot_of_click = np.cumsum(starts) - 1
    slot_users, slot_items = c_users[starts], c_items[starts]
    slot_last_click = np.append(np.flatnonzero(starts)[1:] - 1, len(click_at) - 1)

    user, target = users[conv], items[conv]
    last = (np.cumsum(is_click) - is_click)[conv] - 1  # last click before it, -1 if none
    anchor_click = np.maximum(last, 0)
    ok = (last >= 0) & (c_users[anchor_click] == user)
    slot = slot_of_click[anchor_click]
    same = ok & (slot_items[slot] == target)  # viewed the converted item last: go one back
    slot = np.where(same, slot - 1, slot)
    ok &= slot >= 0
    slot = np.maximum(slot, 0)
    ok &= slot_users[slot] == user
    anchor_click = np.where(same, slot_last_click[slot], anchor_click)
    if max_gap is not None:
        ok &= ts[conv] - ts[click_at[anchor_click]] <= max_gap
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        return empty
    # One pair per (anchor click, converted item): a cart then a buy count once.
    _, first = np.unique(np.stack([anchor_click[keep], target[keep]]), axis=1, return_index=True)
    keep = keep[np.sort(first)]
    slot, user, target = slot[keep], user[keep], target[keep]
    anchor = slot_items[slot]

    neg_slot = np.maximum(slot - n_back, 0)
    negative = slot_items[neg_slot]
    has_neg = (slot >= n_back) & (slot_users[neg_slot] == user)
    has_neg &= (negative != target) & (negative != anchor)

    present = np.stack([np.ones(len(keep), dtype=bool), has_neg], axis=1).ravel()
    right = np.stack([target, negative], axis=1).ravel()
    label = np.tile(np.array([1, 0]), len(keep))
    return _pairs(np.repeat(anchor, 2)[present], right[present], label[present], VIEW_TO_PURCHASE)


def mine_catalogue_labelled(
    item_category: np.ndarray,
    n_anchors: int,
    negatives_per_positive: int = 5,
    eligible: np.ndarray | None = None,
    seed: int = 0,
) -> Pairs:
    """Same-category positives and other-category negatives for sampled anchors.

    Parameters
    ----------
    item_category : int array, shape (n_items,)
        Category of each item, -1 when unknown.
    n_anchors : int
        Anchors to draw without replacement among the items whose category has another
        eligible item (all of them when there are fewer).
    negatives_per_positive : int
    eligible : bool array, shape (n_items,), optional
        Items that may appear in pairs (e.g. those with embeddings); default all.
    seed : int

    Returns
    -------
    Pairs
        Task ``"catalogue_labelled"``: per anchor, one positive then its negatives.
    """
    category = np.asarray(item_category)
    if category.ndim != 1:
        raise DataError(f"item_category must be 1-D, got shape {category.shape}")
    if n_anchors < 1 or negatives_per_positive < 1:
        raise ConfigError(
            f"need n_anchors >= 1 and negatives_per_positive >= 1, "
            f"got {n_anchors} and {negatives_per_positive}"
        )
    usable = category >= 0
    if eligible is not None:
        if np.shape(eligible) != category.shape:
            raise DataError(f"eligible has shape {np.shape(eligible)}, expected {category.shape}")
        usable &= np.asarray(eligible, dtype=bool)
    candidates = np.flatnonzero(usable)
    by_category = candidates[np.argsort(category[candidates], kind="stable")]
    cats = category[by_category]
    _, group_start, group_size = np.unique(cats, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(group_start)), group_size)  # per position in by_category
    m = len(by_category)
    anchorable = np.flatnonzero((group_size[group] >= 2) & (group_size[group] < m))
    if len(anchorable) == 0:
        raise DataError("catalogue_labelled: no category has two items besides other categories")
    rng = np.random.default_rng(seed)
    pos = rng.choice(anchorable, size=min(n_anchors, len(anchorable)), replace=False)
    start, size = group_start[group[pos]], group_size[group[pos]]
    # Uniform over the other members of the anchor's category: skip the anchor's own rank.
    j = rng.integers(0, size - 1)
    positive = by_category[start + j + (j >= pos - start)]
    # Uniform over the items outside the category: skip the category's block.
    k = rng.integers(0, (m - size)[:, None], size=(len(pos), negatives_per_positive))
    negatives = by_category[k + size[:, None] * (k >= start[:, None])]

    width = negatives_per_positive + 1
    left = np.repeat(by_category[pos], width)
    right = np.concatenate([positive[:, None], negatives], axis=1).ravel()
    label = np.tile(np.eye(1, width, dtype=np.int8).ravel(), len(pos))
    return _pairs(left, right, label, CATALOGUE_LABELLED)


@dataclass(frozen=True)
class CleaningReport:
    """What :func:`clean_pairs` did to one task's pairs.

    Attributes
    ----------
    task : str
    positive_min, negative_max : float, the thresholds used
    mined_positive, mined_negative : int, pairs before cleaning
    dropped_positive, dropped_negative : int, pairs removed by the positive / negative rule
    unjudged : int, kept pairs that no embedding knows for both items
    """

    task: str
    positive_min: float
    negative_max: float
    mined_positive: int
    mined_negative: int
    dropped_positive: int
    dropped_negative: int
    unjudged: int

    @property
    def kept_positive(self) -> int:
        return self.mined_positive - self.dropped_positive

    @property
    def kept_negative(self) -> int:
        return self.mined_negative - self.dropped_negative

    def summary(self) -> str:
        """One line for logs and job summaries."""
        mined = self.mined_positive + self.mined_negative
        kept = self.kept_positive + self.kept_negative
        return (
            f"{self.task}: mined {mined} ({self.mined_positive} pos / {self.mined_negative} neg)"
            f"; dropped {self.dropped_positive} positives (cosine < {self.positive_min:g} on "
            f"every embedding) and {self.dropped_negative} negatives (cosine > "
            f"{self.negative_max:g} on all); kept {kept} ({self.kept_positive} pos / "
            f"{self.kept_negative} neg), {self.unjudged} unjudged"
        )


def pair_cosines(
    pairs: Pairs, embedding: np.ndarray, known: np.ndarray | None = None, block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each pair on one raw embedding.

    Parameters
    ----------
    pairs : Pairs, n pairs
    embedding : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
        Rows that hold a real vector; default all. Zero rows count as unknown.
    block : int
        Pairs per vectorised block (bounds memory at ``block * d`` floats).

    Returns
    -------
    cosine : float64 array, shape (n,)
        0 where not valid.
    valid : bool array, shape (n,)
        Both items known on this embedding.
    """
    matrix = np.asarray(embedding)
    if matrix.ndim != 2:
        raise DataError(f"embeddings must be 2-D (n_items, d), got shape {matrix.shape}")
    if len(pairs) and max(pairs.left.max(), pairs.right.max()) >= len(matrix):
        raise DataError(f"an item index is beyond the embedding's {len(matrix)} rows")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))  # no full copy
    row_known = norms > 0
    if known is not None:
        if np.shape(known) != (len(matrix),):
            raise DataError(f"known has shape {np.shape(known)}, expected ({len(matrix)},)")
        row_known &= np.asarray(known, dtype=bool)
    valid = row_known[pairs.left] & row_known[pairs.right]
    cosine = np.zeros(len(pairs))
    for lo in range(0, len(pairs), block):
        left, right = pairs.left[lo : lo + block], pairs.right[lo : lo + block]
        dots = np.einsum("ij,ij->i", matrix[left], matrix[right], dtype=np.float64)
        cosine[lo : lo + block] = dots / np.maximum(norms[left] * norms[right], 1e-300)
    return np.where(valid, cosine, 0.0), valid


def clean_pairs(
    pairs: Pairs,
    embeddings: Sequence[np.ndarray],
    known: Sequence[np.ndarray | None] | None = None,
    positive_min: float = 0.6,
    negative_max: float = 0.8,
) -> tuple[Pairs, CleaningReport]:
    """Drop implausible pairs by their cosines on the raw embeddings (module docstring).

    Parameters
    ----------
    pairs : Pairs, n pairs
    embeddings : sequence of float arrays, each shape (n_items, d_k)
        Raw embeddings (image, title, behaviour, ...).
    known : sequence of (bool array of shape (n_items,) or None), optional
        One mask per embedding; None means every non-zero row is known.
    positive_min, negative_max : float in [-1, 1]

    Returns
    -------
    Pairs
        The kept pairs, in order.
    CleaningReport
    """
    if not embeddings:
        raise ConfigError("clean_pairs needs at least one raw embedding")
    masks = list(known) if known is not None else [None] * len(embeddings)
    if len(masks) != len(embeddings):
        raise DataError(f"{len(masks)} known masks for {len(embeddings)} embeddings")
    for name, value in (("positive_min", positive_min), ("negative_max", negative_max)):
        if not -1.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a cosine in [-1, 1], got {value}")
    # judged: some embedding knows both items; any_high / any_low: some such embedding finds
    # the pair similar enough for a positive / different enough for a negative.
    judged, any_high, any_low = (np.zeros(len(pairs), dtype=bool) for _ in range(3))
    for matrix, mask in zip(embeddings, masks, strict=True):
        cosine, valid = pair_cosines(pairs, matrix, mask)
        judged |= valid
        any_high |= valid & (cosine >= positive_min)
        any_low |= valid & (cosine <= negative_max)
    positive = pairs.label == 1
    drop_positive = positive & judged & ~any_high
    drop_negative = ~positive & judged & ~any_low
    keep = ~(drop_positive | drop_negative)
    counts = (positive, ~positive, drop_positive, drop_negative, ~judged)
    report = CleaningReport(
        pairs.task, positive_min, negative_max, *(int(np.count_nonzero(c)) for c in counts)
    )
    return pairs.select(keep), report


def split_by_anchor(
    pairs: Pairs, holdout_fraction: float = 0.1, seed: int = 0
) -> tuple[Pairs, Pairs]:
    """Split pairs into (train, held-out) so that no anchor (left item) is in both.

    Parameters
    ----------
    pairs : Pairs
    holdout_fraction : float in (0, 1)
        Share of the distinct anchors held out (rounded, at least one of each side).
    seed : int

    Returns
    -------
    train, held_out : Pairs
        Each keeps the input order.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    anchors = np.unique(pairs.left)
    if len(anchors) < 2:
        raise DataError(f"{pairs.task}: need two distinct anchors to split, got {len(anchors)}")
    n_held = min(max(round(holdout_fraction * len(anchors)), 1), len(anchors) - 1)
    held = np.random.default_rng(seed).choice(anchors, size=n_held, replace=False)
    is_held = np.isin(pairs.left, held)
    return pairs.select(~is_held), pairs.select(is_held)

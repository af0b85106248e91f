"""Encoded event data shared by every offline job: dense integer ids, columnar arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsvc.contract import EVENT_TYPES

#: Integer codes of the event types (``types`` arrays index ``EVENT_TYPES``).
CLICK, CART, FAV, BUY = (EVENT_TYPES.index(t) for t in ("click", "cart", "fav", "buy"))


@dataclass(frozen=True)
class Catalogue:
    """Every item recsvc can recommend, with the attributes the pool rules use.

    Attributes
    ----------
    item_ids : str array, shape (n_items,)
        External item id of each dense index.
    item_category : int32 array, shape (n_items,)
        Category index of each item, -1 when unknown.
    category_names : str array, shape (n_categories,)
    first_seen : float64 array, shape (n_items,)
        Unix seconds of the item's listing: its first fit-period event, or the start of the
        held-out period for items first seen there.
    """

    item_ids: np.ndarray
    item_category: np.ndarray
    category_names: np.ndarray
    first_seen: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Interactions:
    """Events with dense ids, sorted by (user, ts) so each user's events are contiguous.

    Attributes
    ----------
    users, items : int32 arrays, shape (n,)
    types : int8 arrays, shape (n,)
        Index into ``EVENT_TYPES``.
    ts : float64 array, shape (n,)
    n_users, n_items : int
        Sizes of the id spaces (``n_items`` is the catalogue size).
    """

    users: np.ndarray
    items: np.ndarray
    types: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, int, int, float]], n_items: int) -> Interactions:
        """Events from ``(user, item, type, ts)`` rows of dense ids, sorted by (user, ts)."""
        users, items, types, ts = (np.array(column) for column in zip(*rows, strict=True))
        order = np.lexsort((ts, users))
        return cls(
            users[order].astype(np.int32),
            items[order].astype(np.int32),
            types[order].astype(np.int8),
            ts[order].astype(np.float64),
            int(users.max()) + 1,
            n_items,
        )

    def select(self, mask: np.ndarray) -> Interactions:
        """The events where ``mask`` is true, keeping the id spaces."""
        return Interactions(
            self.users[mask],
            self.items[mask],
            self.types[mask],
            self.ts[mask],
            self.n_users,
            self.n_items,
        )

    def of_type(self, event_type: int) -> Interactions:
        return self.select(self.types == event_type)

    def item_counts(self) -> np.ndarray:
        """int64 array, shape (n_items,): events per item."""
        return np.bincount(self.items, minlength=self.n_items)

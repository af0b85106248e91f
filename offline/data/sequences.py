"""Next-item cases: one definition shared by evaluation and personalized-model training.

A *visit* is a run of consecutive click or add-to-cart events of one user on one item (a
reload, or the add-to-cart that follows a view, is not a new visit; favourites and purchases
are not visits). Each visit that includes a click and has a next visit by the same user is
a case: the window is the current item followed by the earlier visits' items, newest first;
the target is the next visit's item. Taobao logs many add-to-carts without a view of the
same item just before, so counting visits over clicks and carts (not clicks alone) keeps
those as next items.

A case is a *conversion* case (``Cases.is_cart``) when a conversion event of the user on the
target item falls in the next visit's span: from that visit's first event up to, not
including, the first event of the user's visit after it (or up to the user's last event),
in the events' (user, time) order. Which events convert is the ``conversion`` setting
(:data:`CONVERSIONS`):

- ``cart`` (default): an add-to-cart. Every cart inside the span is part of the next visit,
  so this is "the next visit includes an add-to-cart" (a cart of the item much later,
  after other visits, is a visit of its own and labels that later step instead);
- ``buy``: a purchase of the target item inside the span. Purchases are not visits, so a
  purchase between the next visit and the visit after it counts, and one after other
  visits (e.g. a checkout of the cart later in the session) labels no case;
- ``both``: either.

No event after the span is read, so a case's label needs no more of the log than the cart
rule always did; in evaluation only ``eligible`` (held-out) conversion events count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.data.interactions import BUY, CART, CLICK
from recsvc.exceptions import ConfigError

#: The ``conversion`` settings: the event types that make a next-item case a conversion case.
CONVERSIONS: dict[str, tuple[int, ...]] = {"cart": (CART,), "buy": (BUY,), "both": (CART, BUY)}
#: What each setting's conversion cases are called in messages and tables.
CONVERSION_NAMES: dict[str, str] = {
    "cart": "add-to-cart",
    "buy": "purchase",
    "both": "add-to-cart or purchase",
}


@dataclass(frozen=True)
class Cases:
    """Next-item cases.

    Attributes
    ----------
    users : int array, shape (n,)
    current, target : int32 arrays, shape (n,), the item viewed and the next one visited
    is_cart : bool array, shape (n,)
        A conversion case: the user added the target to cart (``conversion="cart"``, the
        default), bought it, or either, during the next visit (see the module docstring).
    windows : int32 array, shape (n, w), current item then earlier visits, -1 padded
    window_gaps : float64 array, shape (n, w), or None
        Seconds from the end of each slot's visit (its last event) to the start of the next
        newer slot's visit: 0 in slot 0, NaN for padding. Given when the events' times were;
        a session is cut where it exceeds the session gap, as :mod:`offline.data.sessions`
        cuts the training sessions between consecutive events.
    times : float64 array, shape (n,), or None
        Time of each case's current visit (its first event), when the events' times were
        given: ``recsvc eval --replay`` ranks a case with the stream before it.
    """

    users: np.ndarray
    current: np.ndarray
    target: np.ndarray
    is_cart: np.ndarray
    windows: np.ndarray
    window_gaps: np.ndarray | None = None
    times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def select(self, rows: np.ndarray) -> Cases:
        """The cases at ``rows`` (indices or a mask), in that order."""
        gaps = None if self.window_gaps is None else self.window_gaps[rows]
        times = None if self.times is None else self.times[rows]
        return Cases(self.users[rows], self.current[rows], self.target[rows],
                     self.is_cart[rows], self.windows[rows], gaps, times)  # fmt: skip


def check_conversion(conversion: str) -> None:
    """Raise a :class:`ConfigError` unless ``conversion`` is a key of :data:`CONVERSIONS`."""
    if conversion not in CONVERSIONS:
        raise ConfigError(f"conversion must be one of {', '.join(CONVERSIONS)}, got {conversion!r}")


def visit_starts(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mask of events that start a visit: a user's first event, or a different item."""
    start = np.ones(len(users), dtype=bool)
    start[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    return start


def next_item_cases(
    users: np.ndarray,
    items: np.ndarray,
    types: np.ndarray,
    eligible: np.ndarray | None = None,
    window: int = 8,
    ts: np.ndarray | None = None,
    conversion: str = "cart",
) -> Cases:
    """Cases from events sorted by (user, time).

    Parameters
    ----------
    users, items, types : arrays of shape (n_events,)
    eligible : bool array, shape (n_events,), optional
        Events that may start a case and whose conversion events count (the held-out
        period in evaluation); other events only give windows their history. Default: all.
    window : int
        Slots of each window.
    ts : float array, shape (n_events,), optional
        Event times, for ``Cases.window_gaps``.
    conversion : str
        A key of :data:`CONVERSIONS`: which events make a case a conversion case
        (``Cases.is_cart``).

    Raises
    ------
    ConfigError
        An unknown ``conversion``.
    """
    check_conversion(conversion)
    if eligible is None:
        eligible = np.ones(len(users), dtype=bool)
    visit_events = (types == CLICK) | (types == CART)
    e_users, e_items = users[visit_events], items[visit_events]
    e_types, e_eligible = types[visit_events], eligible[visit_events]
    start = visit_starts(e_users, e_items)
    visit_of_event = np.cumsum(start) - 1
    v_users, v_items, v_eligible = e_users[start], e_items[start], e_eligible[start]
    v_clicked = np.bincount(visit_of_event, weights=e_types == CLICK, minlength=len(v_users)) > 0
    v_converted = _converted_visits(
        users, items, types, eligible, np.flatnonzero(visit_events)[start], v_users, v_items,
        CONVERSIONS[conversion],
    )  # fmt: skip
    has_next = np.zeros(len(v_users), dtype=bool)
    has_next[:-1] = v_users[1:] == v_users[:-1]
    case = np.flatnonzero(v_eligible & v_clicked & has_next)
    target, is_cart = v_items[case + 1], v_converted[case + 1]  # fmt: skip
    lowest = _first_visits(v_users)[case]  # each case's user's first visit
    windows = _windows(v_items, case, lowest, window)
    window_gaps = times = None
    if ts is not None:
        back = case[:, None] - np.arange(window)[None, :]
        inside = back >= lowest[:, None]
        e_ts = np.asarray(ts, dtype=np.float64)[visit_events]
        begins = e_ts[start]
        ends = np.maximum.reduceat(e_ts, np.flatnonzero(start)) if len(e_ts) else e_ts
        # Slot j's gap: from the end of visit (case - j) to the start of visit (case - j + 1).
        newer = np.minimum(back + 1, len(begins) - 1)
        gaps = begins[np.maximum(newer, 0)] - ends[np.maximum(back, 0)]
        gaps[:, 0] = 0.0
        window_gaps = np.where(inside, gaps, np.nan)
        times = begins[case]
    return Cases(v_users[case], v_items[case].astype(np.int32), target.astype(np.int32),
                 is_cart, windows, window_gaps, times)  # fmt: skip


def _first_visits(v_users: np.ndarray) -> np.ndarray:
    """For each visit (sorted by user), the index of its user's first visit."""
    new_user = np.ones(len(v_users), dtype=bool)
    new_user[1:] = v_users[1:] != v_users[:-1]
    return np.maximum.accumulate(np.where(new_user, np.arange(len(v_users)), 0))


def _windows(v_items: np.ndarray, case: np.ndarray, lowest: np.ndarray, window: int) -> np.ndarray:
    """int32 (len(case), window): slot j of a case holds the visit j before it, -1 before
    the visit ``lowest`` (the user's first). Built a slot at a time, so that a paper-sized
    log needs the windows' own 4 bytes per slot and no (cases, window) int64 array."""
    windows = np.full((len(case), window), -1, dtype=np.int32)
    for slot in range(window):
        source = case - slot
        inside = source >= lowest
        windows[inside, slot] = v_items[source[inside]]
    return windows


def _converted_visits(
    users: np.ndarray,
    items: np.ndarray,
    types: np.ndarray,
    eligible: np.ndarray,
    begins: np.ndarray,
    v_users: np.ndarray,
    v_items: np.ndarray,
    kinds: tuple[int, ...],
) -> np.ndarray:
    """Visits during which the user had an eligible ``kinds`` event on the visit's item.

    Parameters
    ----------
    users, items, types, eligible : arrays of shape (n_events,), sorted by (user, time)
    begins : int array, shape (n_visits,), index of each visit's first event (ascending)
    v_users, v_items : arrays of shape (n_visits,), each visit's user and item
    kinds : event type codes that convert

    Returns
    -------
    bool array, shape (n_visits,)
        Events from a visit's first event up to the next visit's first event (or, for a
        user's last visit, up to that user's last event) belong to that visit's span.
    """
    events = np.flatnonzero(np.isin(types, kinds) & eligible)
    span = np.searchsorted(begins, events, side="right") - 1  # latest visit begun by then
    inside = span >= 0
    events, span = events[inside], span[inside]
    mine = (v_users[span] == users[events]) & (v_items[span] == items[events])
    return np.bincount(span[mine], minlength=len(v_users)) > 0

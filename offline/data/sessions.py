"""Sessions of the fit period, for the session-kNN methods (:mod:`recsvc.session_knn`).

A session is a run of one user's visit events (clicks and add-to-carts) with no gap longer
than ``gap_s`` between two of them. Logs whose user column is already a session id (such as
YooChoose) keep their sessions, unless one has such a gap.
"""

from __future__ import annotations

import numpy as np

from offline.data.interactions import CART, CLICK, Interactions
from recsvc.session_knn import SessionIndex, build_session_index


def session_numbers(users: np.ndarray, ts: np.ndarray, gap_s: float) -> np.ndarray:
    """Session number of each event of events sorted by (user, time): int64, from 0."""
    new = np.ones(len(users), dtype=bool)
    new[1:] = (users[1:] != users[:-1]) | (np.diff(ts) > gap_s)
    return np.cumsum(new) - 1


def fit_sessions(fit: Interactions, gap_s: float) -> SessionIndex:
    """The session index of the fit period's visits."""
    visits = (fit.types == CLICK) | (fit.types == CART)
    users, items, ts = fit.users[visits], fit.items[visits], fit.ts[visits]
    sessions = session_numbers(users, ts.astype(np.float64), gap_s)
    return build_session_index(sessions, items, ts.astype(np.float64), fit.n_items)

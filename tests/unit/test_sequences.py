import numpy as np

from offline.data.interactions import BUY, CART, CLICK
from offline.data.sequences import next_item_cases

# user, item, type, ts, held out
EVENTS = [
    (0, 1, CLICK, 1.0, False),  # history
    (0, 2, CLICK, 2.0, False),
    (0, 3, CLICK, 10.0, True),  # case: 3 -> 3 is a reload, so the next visit is 4
    (0, 3, CLICK, 11.0, True),
    (0, 4, CLICK, 12.0, True),  # case: 4 -> 5, added to cart after the visit
    (0, 5, CLICK, 13.0, True),  # last visit: no case
    (0, 5, CART, 14.0, True),
    (1, 4, CLICK, 20.0, True),  # case: 4 -> 3, carted as the visit began
    (1, 3, CART, 20.5, True),
    (1, 3, CLICK, 21.0, True),
    (1, 3, BUY, 21.5, True),  # a purchase is not a visit
    (1, 6, CART, 22.0, True),  # case: 3 -> 6, added to cart without a view just before
    (1, 8, CART, 23.0, True),  # no case: 6 was never viewed, so nothing was shown beside it
    (2, 7, CLICK, 30.0, True),  # a single visit: no case
]


def test_cases_windows_and_cart_flags_by_hand():
    users, items, types, _ts, hold = (np.array(c) for c in zip(*EVENTS, strict=True))
    cases = next_item_cases(users, items, types.astype(np.int8), hold, window=4)
    assert cases.users.tolist() == [0, 0, 1, 1]
    assert cases.current.tolist() == [3, 4, 4, 3]
    assert cases.target.tolist() == [4, 5, 3, 6]
    assert cases.is_cart.tolist() == [False, True, True, True]
    assert cases.windows.tolist() == [
        [3, 2, 1, -1],  # current item, then the history visits, newest first
        [4, 3, 2, 1],
        [4, -1, -1, -1],  # other users' visits never leak in
        [3, 4, -1, -1],
    ]


def test_carts_outside_the_eligible_events_do_not_count():
    users, items, types, _ts, hold = (np.array(c) for c in zip(*EVENTS, strict=True))
    hold[6] = False  # user 0's cart of item 5 is no longer held out
    cases = next_item_cases(users, items, types.astype(np.int8), hold, window=4)
    assert cases.is_cart.tolist() == [False, False, True, True]


def test_windows_and_gaps_follow_their_definition_on_random_logs():
    rng = np.random.default_rng(3)
    n = 3000
    users = np.sort(rng.integers(0, 200, n))  # sorted by user, then time
    items = rng.integers(0, 15, n)  # few items: many reloads, one-visit users
    types = np.where(rng.random(n) < 0.8, CLICK, CART).astype(np.int8)
    ts = np.cumsum(rng.random(n))
    for window in (1, 3, 8):
        cases = next_item_cases(users, items, types, window=window, ts=ts)
        # The definition, one event at a time: a visit is a run of one user's events on
        # one item; slot j holds the visit j before the case's visit, or -1.
        visits: list[tuple[int, int, float, float]] = []  # user, item, first ts, last ts
        for user, item, t in zip(users.tolist(), items.tolist(), ts.tolist(), strict=True):
            if visits and visits[-1][:2] == (user, item):
                visits[-1] = (user, item, visits[-1][2], t)
            else:
                visits.append((user, item, t, t))
        index = {(u, t0): v for v, (u, _, t0, _) in enumerate(visits)}
        for row, gaps, user, time in zip(
            cases.windows.tolist(), cases.window_gaps.tolist(), cases.users, cases.times,
            strict=True,
        ):  # fmt: skip
            v = index[(int(user), float(time))]
            for slot in range(window):
                back = v - slot
                if back >= 0 and visits[back][0] == user:
                    assert row[slot] == visits[back][1]
                    expected = 0.0 if slot == 0 else visits[back + 1][2] - visits[back][3]
                    assert gaps[slot] == expected
                else:
                    assert row[slot] == -1 and np.isnan(gaps[slot])
        assert cases.windows.dtype == np.int32

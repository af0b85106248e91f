"""Live co-visitation: the pairs an append adds, decay, the cap, and the in-memory store."""

from __future__ import annotations

import asyncio

import pytest

from recsvc.events import Event
from recsvc.exceptions import ConfigError
from recsvc.ingest import report_live_held
from recsvc.live import (
    LiveCovisits,
    LiveHeld,
    LiveRead,
    LiveSettings,
    Visit,
    covisit_pairs,
    training_mismatch,
)
from recsvc.metrics import Metrics
from recsvc.sessions import InMemorySessionStore, SessionEvent, live_items

HOUR = 3600.0


def visit(item: str, ts: float, new: bool = True, kind: str = "click") -> Visit:
    return Visit(item, kind, ts, new)


def test_a_new_visit_pairs_with_the_visit_before_it():
    session = [visit("a", 1, new=False), visit("b", 2), visit("c", 3)]
    assert covisit_pairs(session) == [("a", "b", 2), ("b", "c", 3)]


def test_a_late_visit_also_pairs_with_the_stored_visit_after_it():
    session = [visit("a", 1, new=False), visit("x", 2), visit("b", 3, new=False)]
    assert covisit_pairs(session) == [("a", "x", 2), ("x", "b", 3)]


def test_repeats_and_events_that_are_not_visits_make_no_pair():
    session = [
        visit("a", 1, new=False),
        visit("a", 2),  # the same item again
        visit("b", 3, kind="fav"),  # not a visit: skipped over
        visit("c", 4, kind="cart"),
    ]
    assert covisit_pairs(session) == [("a", "c", 4)]
    assert covisit_pairs([visit("a", 1, new=False), visit("b", 2, new=False)]) == []


def test_scores_decay_with_the_half_life_and_count_both_ways():
    live = LiveCovisits(LiveSettings(half_life_s=HOUR))
    live.add_pairs([("a", "b", 0.0), ("a", "c", HOUR), ("a", "b", 2 * HOUR)])
    read = live.read(["a", "b"])
    # a's base is 0: b gets 2**0 + 2**2, c gets 2**1 (forward decay, before normalising)
    assert read.neighbours("a") == [("b", 5.0), ("c", 2.0)]
    assert read.neighbours("b") == [("a", 5.0)]
    assert live.updates == 6


def test_a_read_brings_its_items_to_the_latest_base():
    live = LiveCovisits(LiveSettings(half_life_s=HOUR))
    live.add_pairs([("a", "b", 0.0), ("c", "d", 2 * HOUR)])
    read = live.read(["a", "c", "unknown"])
    # a's one co-visit is two half-lives older than c's
    assert read.neighbours("a") == [("b", 0.25)]
    assert read.neighbours("c") == [("d", 1.0)]
    assert read.neighbours("unknown") == []
    assert read.items() == ["a", "c"]


def test_scores_are_rebased_when_an_item_outlives_its_base():
    half = HOUR
    live = LiveCovisits(LiveSettings(half_life_s=half))
    live.add_pairs([("a", "b", 0.0), ("a", "c", 20 * half)])  # 20 > 16 half-lives: rebase
    read = live.read(["a"])
    assert read.neighbours("a") == [("c", 1.0), ("b", 2.0**-20)]


def test_the_cap_keeps_the_best_neighbours_and_counts_evictions():
    live = LiveCovisits(LiveSettings(half_life_s=HOUR, cap=2))
    live.add_pairs([("a", "b", 0.0), ("a", "b", 1.0), ("a", "c", 2.0), ("a", "d", 3.0)])
    neighbours = [n for n, _ in live.read(["a"]).neighbours("a")]
    assert neighbours == ["b", "d"]  # c, the weakest, was dropped when d came
    assert live.evictions == 1


def test_ties_are_ordered_as_redis_orders_them():
    live = LiveCovisits(LiveSettings(half_life_s=HOUR, cap=2))
    live.add_pairs([("a", "z", 0.0), ("a", "y", 0.0), ("a", "x", 0.0)])
    # equal scores: the smallest member is dropped first, the largest is read first
    assert [n for n, _ in live.read(["a"]).neighbours("a")] == ["z", "y"]


@pytest.mark.parametrize(
    "field,value", [("half_life_s", 0), ("cap", 0), ("ttl_s", -1), ("read_top", 1.5)]
)
def test_bad_settings_are_refused(field: str, value: float):
    with pytest.raises(ConfigError, match=field.removesuffix("_s").split("_")[0]):
        LiveSettings(**{field: value})


def test_the_store_counts_a_replayed_event_once():
    store = InMemorySessionStore(length=20, live=LiveSettings(half_life_s=HOUR))
    events = [Event(f"e{n}", "u", item, "click", 100.0 + n) for n, item in enumerate("abc")]
    assert store.append_now(events) == 3
    before = store.read_now("u", "b")[1].neighbours("b")
    assert store.append_now(events[1:]) == 0  # replayed: no new event, no co-visit
    assert store.read_now("u", "b")[1].neighbours("b") == before
    assert sorted(n for n, _ in before) == ["a", "c"]
    assert store.live_counts.updates == 4


def test_a_read_returns_the_session_and_its_items_neighbours():
    store = InMemorySessionStore(length=20, live=LiveSettings(half_life_s=HOUR, read_items=2))
    store.append_now(
        [Event("o1", "other", "x", "click", 1.0), Event("o2", "other", "y", "click", 2.0)]
    )
    store.append_now([Event("e1", "u", "y", "click", 3.0)])
    session, live = asyncio.run(store.read("u", "x"))
    assert [e.item_id for e in session] == ["y"]
    assert live.neighbours("x") == [("y", 1.0)]
    assert live.neighbours("y") == [("x", 1.0)]


def test_the_items_read_are_the_view_then_the_newest_distinct_visits():
    session = [Event(f"e{n}", "u", i, k, float(n)) for n, (i, k) in enumerate(
        [("a", "click"), ("b", "click"), ("c", "buy"), ("b", "cart"), ("d", "click")]
    )]  # fmt: skip
    events = [SessionEvent(e.event_id, e.item_id, e.type, e.ts) for e in session]
    assert live_items("d", events, 3) == ["d", "b", "a"]
    assert live_items("x", events, 1) == ["x"]


def test_without_live_settings_a_read_has_no_neighbours():
    store = InMemorySessionStore(length=20)
    store.append_now([Event("e1", "u", "a", "click", 1.0), Event("e2", "u", "b", "click", 2.0)])
    session, live = store.read_now("u", "b")
    assert len(session) == 2 and not live
    assert isinstance(live, LiveRead)


def test_a_replayed_event_older_than_the_kept_session_does_not_pair_again():
    store = InMemorySessionStore(length=3, live=LiveSettings(half_life_s=HOUR))
    events = [Event(f"e{n}", "u", item, "click", 100.0 + n) for n, item in enumerate("abcde")]
    store.append_now(events)
    before = store.live_counts.updates
    store.append_now(events[:1])  # a is older than the 3 kept: added, trimmed, not paired
    assert store.live_counts.updates == before


def test_ingest_reports_the_live_state_held_in_its_gauges():
    store = InMemorySessionStore(length=10, live=LiveSettings())
    store.append_now([Event(f"e{n}", "u", item, "click", 10.0 + n) for n, item in
                      enumerate(["a", "b", "a", "c"])])  # fmt: skip
    metrics = Metrics()

    async def one_round() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(report_live_held(store, metrics, 60.0, stopping))
        await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(one_round())
    # a: b, c; b: a; c: a
    assert store.covisits is not None and store.covisits.held() == LiveHeld(3, 4)
    value = metrics.registry.get_sample_value
    assert value("recsvc_live_items_held") == 3 and value("recsvc_live_neighbours_held") == 4


def test_a_server_reading_other_co_visits_than_the_training_is_told_how() -> None:
    trained = LiveSettings().as_dict()
    assert training_mismatch(trained, LiveSettings()) is None
    assert training_mismatch(None, None) is None  # learned without them: nothing to match
    assert "--live 0" in (training_mismatch(trained, None) or "")
    told = training_mismatch(trained, LiveSettings(read_top=20, ttl_s=60)) or ""
    assert "read_top 10 in training, 20 here" in told
    assert "ttl_s" not in told  # the TTL does not change what a read returns

"""``recsvc eval --replay``: the served ranking with the live co-visits the stream builds.

The server adds live neighbours to a request's candidates (:mod:`recsvc.live`), learned from
the clicks that ingest has seen. To score that offline, the held-out period's events are
played in time order into :class:`~recsvc.sessions.InMemorySessionStore` with live settings
(the steps that ingest's Redis script follows; a test holds the two equal), and each case
is ranked by the server's ``Ranker.rank`` with the live neighbours read from the state that
the events strictly before its view built. The case's own session comes from its window, as
in the ``served`` method, so the only difference is the live state.

Only held-out events are played, and nothing expires (the in-memory store has no TTL), which
is right while the held-out period is shorter than the sessions' and co-visits' TTLs (one
and three days by default): the state starts empty at the held-out period's start,
where a running server would hold the decayed co-visits of the days before. The figures
are therefore a floor for what the stream adds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from offline.data.sequences import Cases
from offline.evaluation.served import MISS, case_session
from recsvc.bundle import Bundle
from recsvc.candidates import CandidateSettings
from recsvc.contract import EVENT_TYPES, SOURCE_BITS
from recsvc.events import Event
from recsvc.live import EMPTY_READ, LiveRead, LiveSettings
from recsvc.ranking import Ranker
from recsvc.sessions import InMemorySessionStore, live_items

_LIVE = SOURCE_BITS["live"]
#: An item counts as recommended when it is in the top this many of an answer.
RECOMMENDED_TOP = 10


@dataclass(frozen=True)
class Replay:
    """What a replay found.

    Attributes
    ----------
    ranks : int64 (n_cases,), the target's rank in each served answer, ``MISS`` if absent
    events : held-out events played
    new_items : items clicked in the held-out period with no event before it
    lags_s : float64, for each of them that some answer put in its top
        :data:`RECOMMENDED_TOP` as a live item: seconds from its first click to the first
        such answer
    live_share : share of the cases whose answer held a live item in its top
        :data:`RECOMMENDED_TOP`
    """

    ranks: np.ndarray
    events: int
    new_items: int
    lags_s: np.ndarray
    live_share: float

    def summary(self) -> dict[str, float]:
        """The replay's own figures, for the report and the JSON."""
        lags = self.lags_s / 60.0
        reached = len(lags)
        return {
            "events": self.events,
            "new_items_clicked": self.new_items,
            "new_items_recommended": reached,
            "minutes_to_first_recommendation_p50": _percentile(lags, 50),
            "minutes_to_first_recommendation_p90": _percentile(lags, 90),
            "answers_with_a_live_item": round(self.live_share, 4),
        }


def _percentile(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if len(values) else float("nan")


def held_out_events(bundle: Bundle, item_ids: list[str]) -> list[Event]:
    """The held-out period's events as the stream carried them, in time order."""
    holdout = np.asarray(bundle["eval/is_holdout"])
    users = np.asarray(bundle["eval/users"])[holdout]
    items = np.asarray(bundle["eval/items"])[holdout]
    types = np.asarray(bundle["eval/types"])[holdout]
    ts = np.asarray(bundle["eval/ts"], dtype=np.float64)[holdout]
    order = np.argsort(ts, kind="stable")
    return [
        Event(f"e{n}", f"u{users[n]}", item_ids[items[n]], EVENT_TYPES[types[n]], float(ts[n]))
        for n in order.tolist()
    ]


def replay_served(
    bundle: Bundle,
    cases: Cases,
    live: LiveSettings | None = None,
    candidates: CandidateSettings | None = None,
) -> Replay:
    """Rank every case as the server would with the live state before it (see the module
    docstring). ``cases`` need their ``times`` (``cases_from_bundle(..., with_times=True)``).
    """
    live = live or LiveSettings()
    ranker = Ranker(bundle, "personalized", candidates)
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    events = held_out_events(bundle, item_ids)
    history = np.ones(len(item_ids), dtype=bool)
    if "item_fit_events" in bundle:
        history = np.asarray(bundle["item_fit_events"]) > 0
    first_click: dict[str, float] = {}
    for event in events:
        if event.type == "click" and not history[ranker.index(event.item_id)]:
            first_click.setdefault(event.item_id, event.ts)
    first_recommended: dict[str, float] = {}
    ranks = np.full(len(cases), MISS, dtype=np.int64)
    with_live = 0
    for n, read in _replayed(cases, live, events, item_ids):
        now = float(cases.times[n])
        current = item_ids[int(cases.current[n])]
        session = case_session(cases, n, item_ids)
        answer = ranker.rank(current, ranker.pool_size, session, live=read)
        target = item_ids[int(cases.target[n])]
        if target in answer.items:
            ranks[n] = answer.items.index(target) + 1
        top = answer.items[:RECOMMENDED_TOP]
        with_live += any(s & _LIVE for s in answer.sources[:RECOMMENDED_TOP])
        for item, sources in zip(top, answer.sources, strict=False):
            live_item = sources & _LIVE
            if live_item and item not in first_recommended and first_click.get(item, np.inf) <= now:
                first_recommended[item] = now
    lags = np.array(
        [first_recommended[i] - first_click[i] for i in first_recommended], dtype=np.float64
    )
    return Replay(ranks, len(events), len(first_click), lags, with_live / max(len(cases), 1))


def live_reads(
    bundle: Bundle, cases: Cases, live: LiveSettings, wanted: np.ndarray | None = None
) -> list[LiveRead]:
    """What each case's view reads of the live state that the held-out events strictly
    before it built, in case order (the second stage's training uses these); with
    ``wanted`` (a mask over the cases), only those cases read, the others get
    :data:`~recsvc.live.EMPTY_READ`, and every event is still played."""
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    reads: list[LiveRead] = [EMPTY_READ] * len(cases)
    events = held_out_events(bundle, item_ids)
    for n, read in _replayed(cases, live, events, item_ids, wanted):
        reads[n] = read
    return reads


def _replayed(
    cases: Cases,
    live: LiveSettings,
    events: list[Event],
    item_ids: list[str],
    wanted: np.ndarray | None = None,
) -> Iterator[tuple[int, LiveRead]]:
    """Each case (of ``wanted``, a mask, when given), in time order, with the live
    neighbours its view reads from the state that ``events`` strictly before it built."""
    if cases.times is None:
        raise ValueError("replay needs the cases' times (eval/ts)")
    store = InMemorySessionStore(length=20, live=live)
    assert store.covisits is not None
    event_times = np.array([e.ts for e in events])
    played = 0
    for n in np.argsort(cases.times, kind="stable").tolist():
        upto = int(np.searchsorted(event_times, float(cases.times[n]), side="left"))
        if upto > played:
            store.append_now(events[played:upto])
            played = upto
        if wanted is not None and not wanted[n]:
            continue
        current = item_ids[int(cases.current[n])]
        session = case_session(cases, n, item_ids)
        yield n, store.covisits.read(live_items(current, session, live.read_items))

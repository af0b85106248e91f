"""Live co-visitation: item -> item neighbours learned from the click stream as it arrives.

The bundle's pools are fixed until the next offline run; an item listed an hour ago has no
pool and no embedding. The session store therefore also keeps, per item, the items visited
just before or after it in the same session, counted with exponential time decay
(``half_life_s``), the ``cap`` best kept and the rest dropped, expiring ``ttl_s`` after the
item's last co-visit. The server reads them with the session and adds them to the
candidates (source ``live``).

Pairs
    When an append adds a visit (a ``click`` or ``cart``) to a session, it is paired with
    the nearest earlier visit of the session, and, when the event arrived late, with the
    nearest later visit already stored. Pairs of an item with itself are skipped. Each pair
    counts in both directions. Only events the append actually adds count, so a replayed
    event (the same event id, item, type and time) counts once: the co-visits are tied to
    the idempotent session append and happen in the same Lua script.

Decay without rewriting
    A pair at event time ``t`` adds ``2 ** ((t - base) / half_life_s)`` to the neighbour's
    score, where ``base`` is the item's own time base (forward decay, Cormode et al. 2009):
    the scores of one item stay comparable without touching the others. When an event comes
    more than :data:`REBASE_HALF_LIVES` half-lives after the base, the item's scores are
    multiplied by ``2 ** ((base - t) / half_life_s)`` and ``t`` becomes the base. A read
    brings the items it returns to one base, the latest among them, so that scores of two
    items compare (:meth:`LiveRead.neighbours`).

Times are the events' own times, not the clock, so a replay of a day builds exactly the
state the stream built. The in-memory :class:`LiveCovisits` and the Redis script in
:mod:`recsvc.sessions` follow the same steps in the same floating-point order; a test holds
their scores equal (with the same C maths library: powers of 2 come from ``pow``).

A replayed event counts once while its session still holds it. One older than every event
the session keeps is added, trimmed again, and does not pair; one redelivered after its
session expired (a day by default, far longer than a crash replay) counts again.

Redis layout: ``recsvc:live:n:<item>`` a sorted set of neighbour -> score;
``recsvc:live:b:<item>`` the item's base (the event time, as the event gave it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from recsvc.contract import VISIT_TYPES
from recsvc.exceptions import ConfigError

NEIGHBOURS_PREFIX = "recsvc:live:n:"
BASE_PREFIX = "recsvc:live:b:"
#: Rescale an item's scores when an event is this many half-lives past its base (2 ** 16:
#: far from float64's limits, and rare).
REBASE_HALF_LIVES = 16


@dataclass(frozen=True)
class LiveSettings:
    """How co-visits are counted, kept and read."""

    half_life_s: float = 6 * 3600.0
    cap: int = 50
    ttl_s: int = 3 * 86400
    #: Items whose neighbours a request reads: the viewed item and the newest earlier visits.
    read_items: int = 3
    #: Neighbours read per item (20 did no better on the validation days, at twice the cost).
    read_top: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.half_life_s < math.inf:
            raise ConfigError(f"live half-life must be > 0 seconds, got {self.half_life_s}")
        for name in ("cap", "ttl_s", "read_items", "read_top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"live {name} must be an int >= 1, got {value!r}")

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


#: The settings that shape the co-visits a request reads, and so the second stage's live
#: columns (the TTL only drops items idle for days).
READ_SHAPING = ("half_life_s", "cap", "read_items", "read_top")


def training_mismatch(
    trained: Mapping[str, object] | None, serving: LiveSettings | None
) -> str | None:
    """Why the live co-visits a server reads differ from those a second stage learned on
    (``trained``: the settings the pipeline recorded, None when it learned without them),
    or None when they match or the model learned none.

    Only the server's own settings are compared. The half-life and the cap also shape
    what ingest writes, so ingest must run with the same ones; nothing checks that here."""
    if trained is None:
        return None
    if serving is None:
        return (
            "the second stage learned the live co-visit columns, but this server runs with "
            "--live 0: they are missing on every request and items new since the bundle go "
            "unranked (run with --live 1)"
        )
    differ = [
        f"{name} {trained.get(name)} in training, {getattr(serving, name)} here"
        for name in READ_SHAPING
        if trained.get(name) != getattr(serving, name)
    ]
    if not differ:
        return None
    return (
        "the live co-visits read here are not those the second stage learned on ("
        + "; ".join(differ)
        + "): its live columns will be off; serve with the settings of the training"
    )


@dataclass(frozen=True)
class LiveHeld:
    """How much live state a store holds: items with neighbours, and neighbours in all."""

    items: int
    neighbours: int


@dataclass(frozen=True)
class Visit:
    """One session member as the pairing sees it."""

    item_id: str
    type: str
    ts: float
    new: bool


def covisit_pairs(session: Sequence[Visit]) -> list[tuple[str, str, float]]:
    """The (earlier item, later item, time) pairs an append adds to a session.

    ``session`` is the whole session after the append, in store order (time, then member
    text), each member marked ``new`` when this append added it.
    """
    visits = [v for v in session if v.type in VISIT_TYPES]
    pairs = []
    for i, visit in enumerate(visits):
        if not visit.new:
            continue
        if i > 0 and visits[i - 1].item_id != visit.item_id:
            pairs.append((visits[i - 1].item_id, visit.item_id, visit.ts))
        if i + 1 < len(visits) and not visits[i + 1].new:
            later = visits[i + 1]
            if later.item_id != visit.item_id:
                pairs.append((visit.item_id, later.item_id, later.ts))
    return pairs


@dataclass
class _Item:
    base: float
    scores: dict[str, float] = field(default_factory=dict)


class LiveCovisits:
    """The co-visit state in memory: for unit tests and for ``recsvc eval --replay``.

    Nothing expires here (right for a replay shorter than the TTLs); everything else is as
    in Redis.
    """

    def __init__(self, settings: LiveSettings | None = None) -> None:
        self.settings = settings or LiveSettings()
        self._items: dict[str, _Item] = {}
        self.updates = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def counts_at(self, at: float) -> dict[str, dict[str, float]]:
        """Every item's neighbours with their co-visit counts decayed to the time ``at``
        (comparable whatever the items' bases)."""
        half = self.settings.half_life_s
        return {
            item: {n: v * 2.0 ** ((state.base - at) / half) for n, v in state.scores.items()}
            for item, state in self._items.items()
        }

    def held(self) -> LiveHeld:
        """Items with neighbours and neighbours in all."""
        return LiveHeld(len(self._items), sum(len(s.scores) for s in self._items.values()))

    def add_pairs(self, pairs: Iterable[tuple[str, str, float]]) -> None:
        for earlier, later, ts in pairs:
            self._bump(earlier, later, ts)
            self._bump(later, earlier, ts)

    def _bump(self, item: str, neighbour: str, ts: float) -> None:
        half = self.settings.half_life_s
        state = self._items.get(item)
        if state is None:
            state = self._items[item] = _Item(ts)
        elif ts - state.base > REBASE_HALF_LIVES * half:
            factor = 2.0 ** ((state.base - ts) / half)
            state.scores = {k: v * factor for k, v in state.scores.items()}
            state.base = ts
        scores = state.scores
        scores[neighbour] = scores.get(neighbour, 0.0) + 2.0 ** ((ts - state.base) / half)
        self.updates += 1
        cap = self.settings.cap
        if len(scores) > cap:
            # Redis's ZREMRANGEBYRANK order: lowest score first, ties by member bytes.
            ranked = sorted(scores.items(), key=_store_order)
            state.scores = dict(ranked[len(ranked) - cap :])
            self.evictions += len(ranked) - cap

    def read(self, items: Sequence[str]) -> LiveRead:
        """The stored neighbours of ``items`` (best ``read_top`` each)."""
        top = self.settings.read_top
        lists = {}
        for item in items:
            state = self._items.get(item)
            if state is None:
                continue
            # ZREVRANGE's order: highest score first, ties by member bytes, descending.
            ranked = sorted(state.scores.items(), key=_store_order, reverse=True)[:top]
            lists[item] = (state.base, [n for n, _ in ranked], [v for _, v in ranked])
        return LiveRead(lists, self.settings.half_life_s)


def _store_order(entry: tuple[str, float]) -> tuple[float, bytes]:
    """A sorted set's order: score, then member bytes."""
    return entry[1], entry[0].encode()


class LiveRead:
    """What one request read: each item's neighbours with their scores, on one time base.

    ``lists`` maps an item to (its base, its neighbours best first, their stored scores);
    the scores are brought to the latest base among the items when used.
    """

    def __init__(
        self, lists: dict[str, tuple[float, list[str], list[float]]], half_life_s: float
    ) -> None:
        reference = max((base for base, _, _ in lists.values()), default=0.0)
        self._lists = {
            item: (2.0 ** ((base - reference) / half_life_s), names, scores)
            for item, (base, names, scores) in lists.items()
            if names
        }

    def __bool__(self) -> bool:
        return bool(self._lists)

    def has(self, item: str) -> bool:
        """Whether the stream holds live neighbours of ``item``."""
        return item in self._lists

    def neighbours(self, item: str) -> list[tuple[str, float]]:
        """``item``'s live neighbours, best first, with decayed co-visit counts (empty when
        the stream has none for it)."""
        factor, names, scores = self._lists.get(item, (1.0, [], []))
        return [(name, score * factor) for name, score in zip(names, scores, strict=True)]

    @property
    def by_item(self) -> dict[str, tuple[float, list[str], list[float]]]:
        """item -> (factor, neighbours best first, stored scores), for each item read that
        has neighbours, without a copy (do not modify it); a neighbour's co-visit count is its
        stored score times the factor."""
        return self._lists

    def count(self) -> int:
        """Neighbours read, over all items."""
        return sum(len(names) for _, names, _ in self._lists.values())

    def items(self) -> list[str]:
        """The items read that have neighbours."""
        return list(self._lists)


EMPTY_READ = LiveRead({}, 1.0)

"""Synthetic e-commerce event logs in the Taobao UserBehavior format, streamed to disk.

    python -m offline.data.synthetic --events 16000000 --out .local/synthetic/16M.csv

The paper's log had 2 million users, 700,000 items and 200 million clicks in 8 days; the
defaults keep its ratios (100 events per user, ~286 events per item) at any ``--events``.

The catalogue: items are grouped in categories whose sizes are heavy-tailed (Zipf over
category rank), stored contiguously so that nearby indices inside a category are "related
items"; categories with nearby indices are related categories. Each item has a Zipf
popularity (exponent ``--zipf`` over a random rank) and a first-seen day: ``--new-items`` of
them appear after the first day and are never shown before it (each category's most popular
item exists from day 0).

A user (activity log-normal, at least one event) browses in sessions (a diurnal start hour
measured on the Taobao slice, log-normal gaps between events). Every click either jumps (a
new anchor item drawn by popularity, from anywhere or from a category related to the user's
current topic), moves near the anchor inside its category, takes a popular item of the
anchor's category, or re-views an item the user clicked a few clicks before. Add-to-cart,
favourite and buy events act on the item last clicked. Default rates are calibrated on the
Taobao slice (``python -m bench.synthetic_realism`` compares the two).

Generation runs user chunk by user chunk with numpy (memory grows with users and items, not
events); each chunk draws from its own generator seeded by (seed, chunk), so a file is a
function of its flags. The file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recsvc.exceptions import ConfigError

#: 2017-11-25 00:00 in China time (UTC+8), the first day of the Taobao log.
START_TS = 1511539200
DAY = 86400
BEHAVIORS = np.array(["pv", "cart", "fav", "buy"])
#: Share of session starts per hour of the day (UTC+8), measured on the Taobao slice.
HOUR_PROFILE = np.array(
    [35, 16, 8, 4, 5, 7, 16, 26, 33, 40, 45, 46, 40, 51, 50, 55, 54, 46, 49, 65, 78, 88, 79, 61],
    dtype=np.float64,
)
#: The paper's log: users, items and clicks.
PAPER_SCALE = {"users": 2_000_000, "items": 700_000, "clicks": 200_000_000, "days": 8}
#: Redraws of an item that is not out yet on the event's day before the fallback.
REDRAWS = 4


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate.

    Attributes
    ----------
    events, users, items, categories, days : sizes of the log
    cart_rate, fav_rate, buy_rate : events of each kind per click
    repeat_rate : share of clicks that re-view an item clicked a few clicks before
    jump_rate : share of clicks (besides each session's first) that jump to a new anchor
    related_jump : share of jumps that go to a category related to the user's topic
    near_share : of the remaining clicks, share that move near the anchor (the rest take
        a popular item of the anchor's category)
    zipf : exponent of item popularity over rank (category sizes use 1.0)
    new_items : share of items first seen after day 0
    session_events : mean events per session
    user_sigma : sigma of the log-normal user activity
    chunk_events : events generated per chunk (whole users; one user may exceed it)
    seed : random seed
    """

    events: int
    users: int
    items: int
    categories: int
    days: int = 8
    cart_rate: float = 0.059
    fav_rate: float = 0.031
    buy_rate: float = 0.023
    repeat_rate: float = 0.07
    jump_rate: float = 0.47
    related_jump: float = 0.4
    near_share: float = 0.6
    zipf: float = 0.8
    new_items: float = 0.2
    session_events: float = 12.0
    user_sigma: float = 0.8
    chunk_events: int = 500_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("events", "users", "items", "categories", "days", "chunk_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.users > self.events:
            raise ConfigError(f"--users ({self.users}) cannot exceed --events ({self.events})")
        if self.categories > self.items:
            raise ConfigError(
                f"--categories ({self.categories}) cannot exceed --items ({self.items})"
            )
        for name in ("cart_rate", "fav_rate", "buy_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1]")
        for name in ("repeat_rate", "jump_rate", "related_jump", "near_share", "new_items"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if self.repeat_rate + self.jump_rate > 1:
            raise ConfigError("--repeat-rate + --jump-rate must be <= 1")
        if self.zipf < 0 or self.user_sigma < 0 or self.session_events < 1:
            raise ConfigError("--zipf and --user-sigma must be >= 0, --session-events >= 1")


@dataclass(frozen=True)
class Catalogue:
    """Items stored contiguously by category (internal index order).

    Attributes
    ----------
    category : int array, shape (items,), category of each item (non-decreasing)
    start, size : int arrays, shape (categories,), each category's index range
    cum_weight : float array, shape (items,), cumulative popularity in index order
    first_day : int array, shape (items,), first day the item can be seen
    fallback : int array, shape (categories,), most popular item of the category (day 0)
    item_ids, category_ids : int arrays, the external ids written to the file
    """

    category: np.ndarray
    start: np.ndarray
    size: np.ndarray
    cum_weight: np.ndarray
    first_day: np.ndarray
    fallback: np.ndarray
    item_ids: np.ndarray
    category_ids: np.ndarray


def build_catalogue(spec: SyntheticSpec) -> Catalogue:
    """Category sizes, item popularity, first-seen days and external ids."""
    rng = np.random.default_rng([spec.seed, 0])
    n_items, n_cats = spec.items, spec.categories
    cat_weight = 1.0 / np.arange(1, n_cats + 1)
    rng.shuffle(cat_weight)
    size = 1 + rng.multinomial(n_items - n_cats, cat_weight / cat_weight.sum())
    start = np.r_[0, np.cumsum(size)[:-1]]
    category = np.repeat(np.arange(n_cats), size)
    weight = 1.0 / np.arange(1, n_items + 1) ** spec.zipf
    rng.shuffle(weight)
    first_day = np.where(
        rng.random(n_items) < spec.new_items, rng.integers(1, max(spec.days, 2), n_items), 0
    )
    if spec.days == 1:
        first_day[:] = 0
    # The most popular item of each category exists from day 0: the redraw fallback.
    order = np.lexsort((-weight, category))
    fallback = order[start]
    first_day[fallback] = 0
    return Catalogue(
        category=category,
        start=start,
        size=size,
        cum_weight=np.cumsum(weight),
        first_day=first_day,
        fallback=fallback,
        item_ids=rng.permutation(n_items) + 1,
        category_ids=rng.permutation(n_cats) + 1,
    )


def user_event_counts(spec: SyntheticSpec) -> np.ndarray:
    """Events per user, shape (users,): at least one each, log-normal activity, sum events."""
    rng = np.random.default_rng([spec.seed, 1])
    activity = rng.lognormal(0.0, spec.user_sigma, spec.users)
    extra = rng.multinomial(spec.events - spec.users, activity / activity.sum())
    return (1 + extra).astype(np.int64)


def chunk_bounds(counts: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """User ranges ``[lo, hi)`` of about ``chunk_events`` events each (whole users)."""
    ends = np.cumsum(counts)
    bounds = []
    lo = 0
    while lo < len(counts):
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + chunk_events, side="right"))
        hi = max(hi, lo + 1)
        bounds.append((lo, hi))
        lo = hi
    return bounds


@dataclass(frozen=True)
class Chunk:
    """Events of whole users, in user then time order.

    Attributes
    ----------
    users : int array, shape (m,), 0-based user index
    items : int array, shape (m,), internal item index
    types : int array, shape (m,), index into ``BEHAVIORS``
    ts : int array, shape (m,), Unix seconds
    """

    users: np.ndarray
    items: np.ndarray
    types: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def generate_chunk(
    spec: SyntheticSpec, cat: Catalogue, counts: np.ndarray, first_user: int, index: int
) -> Chunk:
    """Events of users ``first_user .. first_user + len(counts) - 1``.

    Parameters
    ----------
    counts : int array, shape (n_users,), events per user of this chunk
    index : chunk number, which seeds this chunk's generator
    """
    rng = np.random.default_rng([spec.seed, 2, index])
    n = int(counts.sum())
    users = np.repeat(np.arange(len(counts)), counts)
    user_start = np.r_[0, np.cumsum(counts)[:-1]]
    is_first = np.zeros(n, dtype=bool)
    is_first[user_start] = True
    session_start = is_first | (rng.random(n) < 1.0 / spec.session_events)
    types = np.zeros(n, dtype=np.int64)
    rest = np.flatnonzero(~session_start)
    types[rest] = rng.choice(4, size=len(rest), p=_rest_probabilities(spec, len(rest) / n))
    ts = _timestamps(spec, rng, users, session_start)
    day = np.minimum((ts - START_TS) // DAY, spec.days - 1)
    clicks = np.flatnonzero(types == 0)
    click_items = _click_items(
        spec, cat, rng, users[clicks], session_start[clicks], day[clicks], len(counts)
    )
    # Carts, favourites and buys act on the item clicked last (forward fill over clicks).
    last_click = np.maximum.accumulate(np.where(types == 0, np.arange(n), 0))
    items = np.empty(n, dtype=np.int64)
    items[clicks] = click_items
    items = items[last_click]
    return Chunk(users=users + first_user, items=items, types=types, ts=ts)


def _rest_probabilities(spec: SyntheticSpec, rest_share: float) -> np.ndarray:
    """Type probabilities of events that do not start a session (those are clicks), such
    that carts, favourites and buys per click come out at the configured rates."""
    rates = np.array([spec.cart_rate, spec.fav_rate, spec.buy_rate])
    if rest_share <= 0:
        return np.array([1.0, 0.0, 0.0, 0.0])
    scale = (1.0 / rest_share) / (1.0 + rates.sum())
    other = np.minimum(rates * scale, 1.0)
    other = other / max(1.0, other.sum())
    return np.r_[1.0 - other.sum(), other]


def _timestamps(
    spec: SyntheticSpec, rng: np.random.Generator, users: np.ndarray, session_start: np.ndarray
) -> np.ndarray:
    """Unix seconds, non-decreasing within each user, shape (m,)."""
    sessions = np.cumsum(session_start) - 1
    n_sessions = int(sessions[-1]) + 1
    session_user = users[session_start]
    hour = rng.choice(24, size=n_sessions, p=HOUR_PROFILE / HOUR_PROFILE.sum())
    begin = rng.integers(0, spec.days, n_sessions) * DAY + hour * 3600
    begin = begin + rng.integers(0, 3600, n_sessions)
    begin = begin[np.lexsort((begin, session_user))]  # each user's sessions in time order
    gaps = np.where(session_start, 0.0, rng.lognormal(np.log(50.0), 1.2, len(users)))
    within = np.cumsum(gaps)
    within -= within[session_start][sessions]
    offset = begin[sessions] + np.minimum(within, DAY / 2).astype(np.int64)
    # Later sessions never start before earlier ones end: non-decreasing per user.
    span = spec.days * DAY * 2
    offset = np.maximum.accumulate(offset + users * span) - users * span
    return START_TS + np.minimum(offset, spec.days * DAY - 1)


def _click_items(
    spec: SyntheticSpec,
    cat: Catalogue,
    rng: np.random.Generator,
    users: np.ndarray,
    session_start: np.ndarray,
    day: np.ndarray,
    n_users: int,
) -> np.ndarray:
    """The item of each click (clicks of whole users in time order), shape (k,)."""
    k = len(users)
    pos = np.arange(k)
    is_first = np.r_[True, users[1:] != users[:-1]]
    first_pos = np.maximum.accumulate(np.where(is_first, pos, 0))
    draw = rng.random(k)
    jump = session_start | (draw < spec.jump_rate)
    repeat = ~jump & (draw < spec.jump_rate + spec.repeat_rate)
    back = 2 + rng.geometric(0.15, k)
    repeat &= pos - back >= first_pos
    related = jump & ~is_first & (rng.random(k) < spec.related_jump)
    # Anchors: a global popularity draw, or a category next to the user's topic (the
    # category of their last global jump, else their home category).
    anchor = np.where(jump, pos, 0)
    anchors = np.flatnonzero(jump)
    anchor_item = _pop_draw(cat, rng, None, len(anchors))
    home = cat.category[_pop_draw(cat, rng, None, n_users)]
    topic_src = np.maximum.accumulate(np.where(jump & ~related, pos, -1))
    topic_src = np.where(topic_src >= first_pos, topic_src, -1)
    anchor_cat = np.full(k, -1)
    anchor_cat[anchors] = cat.category[anchor_item]
    rel = np.flatnonzero(related)
    src = topic_src[rel]
    topic = np.where(src >= 0, anchor_cat[np.maximum(src, 0)], home[users[rel]])
    shift = rng.integers(1, 4, len(rel)) * rng.choice([-1, 1], len(rel))
    rel_cat = (topic + shift) % spec.categories
    rel_in_anchors = np.searchsorted(anchors, rel)
    anchor_item[rel_in_anchors] = _pop_draw(cat, rng, rel_cat, len(rel))
    anchor_item = _available(cat, rng, anchor_item, day[anchors], None, None)
    items = np.empty(k, dtype=np.int64)
    items[anchors] = anchor_item
    # Moves inside the anchor's category: near the anchor, or by popularity.
    anchor = np.maximum.accumulate(anchor)
    moves = np.flatnonzero(~jump & ~repeat)
    centre = items[anchor[moves]]
    near = rng.random(len(moves)) < spec.near_share
    items[moves] = _related_draw(cat, rng, centre, near)
    items[moves] = _available(cat, rng, items[moves], day[moves], centre, near)
    # Re-views copy an earlier click (chains of re-views resolve in a few passes).
    reviews = np.flatnonzero(repeat)
    source = reviews - back[reviews]
    for _ in range(64):
        chained = repeat[source]
        if not chained.any():
            break
        source = np.where(chained, np.maximum(source - back[source], first_pos[reviews]), source)
    source = np.where(repeat[source], first_pos[reviews], source)
    items[reviews] = items[source]
    return items


def _pop_draw(
    cat: Catalogue, rng: np.random.Generator, categories: np.ndarray | None, n: int
) -> np.ndarray:
    """Items drawn by popularity, over the catalogue or inside ``categories`` (shape (n,))."""
    total = cat.cum_weight[-1]
    if categories is None:
        point = rng.random(n) * total
    else:
        lo = np.where(cat.start[categories] > 0, cat.cum_weight[cat.start[categories] - 1], 0.0)
        hi = cat.cum_weight[cat.start[categories] + cat.size[categories] - 1]
        point = lo + rng.random(n) * (hi - lo)
    found = np.searchsorted(cat.cum_weight, point, side="right")
    return np.minimum(found, len(cat.cum_weight) - 1)


def _related_draw(
    cat: Catalogue, rng: np.random.Generator, centre: np.ndarray, near: np.ndarray
) -> np.ndarray:
    """Items of the centre's category: near the centre (Laplace offset) or by popularity."""
    c = cat.category[centre]
    size = cat.size[c]
    scale = np.clip(size * 0.05, 1.0, 25.0)
    offset = np.rint(rng.laplace(0.0, scale)).astype(np.int64)
    offset = np.where(offset == 0, np.where(rng.random(len(c)) < 0.5, -1, 1), offset)
    local = (centre - cat.start[c] + offset) % size
    by_pop = _pop_draw(cat, rng, c, len(c))
    return np.where(near, cat.start[c] + local, by_pop)


def _available(
    cat: Catalogue,
    rng: np.random.Generator,
    items: np.ndarray,
    day: np.ndarray,
    centre: np.ndarray | None,
    near: np.ndarray | None,
) -> np.ndarray:
    """Redraw items not out yet on ``day`` (same kind of draw), then fall back to the
    category's day-0 item."""
    items = items.copy()
    for _ in range(REDRAWS):
        late = np.flatnonzero(cat.first_day[items] > day)
        if not len(late):
            return items
        if centre is None:
            items[late] = _pop_draw(cat, rng, cat.category[items[late]], len(late))
        else:
            items[late] = _related_draw(cat, rng, centre[late], near[late])  # type: ignore[index]
    late = cat.first_day[items] > day
    items[late] = cat.fallback[cat.category[items[late]]]
    return items


def iter_chunks(spec: SyntheticSpec, cat: Catalogue) -> Iterator[Chunk]:
    """The log as chunks of whole users, in user order."""
    counts = user_event_counts(spec)
    for index, (lo, hi) in enumerate(chunk_bounds(counts, spec.chunk_events)):
        yield generate_chunk(spec, cat, counts[lo:hi], lo, index)


def format_chunk(chunk: Chunk, cat: Catalogue) -> str:
    """Taobao UserBehavior lines: ``user,item,category,behavior,timestamp``."""
    rows = zip(
        (chunk.users + 1).tolist(),
        cat.item_ids[chunk.items].tolist(),
        cat.category_ids[cat.category[chunk.items]].tolist(),
        BEHAVIORS[chunk.types].tolist(),
        chunk.ts.tolist(),
        strict=True,
    )
    return "".join(f"{u},{i},{c},{b},{t}\n" for u, i, c, b, t in rows)


def write_log(spec: SyntheticSpec, out: str | Path, *, progress: bool = True) -> dict[str, int]:
    """Generate and write the log atomically; returns counts per behaviour and users/items.

    Raises
    ------
    ConfigError
        The output folder does not exist or cannot be written.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    cat = build_catalogue(spec)
    by_type = np.zeros(4, dtype=np.int64)
    seen = np.zeros(spec.items, dtype=bool)
    try:
        with (
            tmp.open("w", encoding="utf-8") as handle,
            tqdm(total=spec.events, unit="ev", unit_scale=True, disable=not progress) as bar,
        ):
            for chunk in iter_chunks(spec, cat):
                handle.write(format_chunk(chunk, cat))
                by_type += np.bincount(chunk.types, minlength=4)
                seen[chunk.items] = True
                bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    summary = {str(b): int(n) for b, n in zip(BEHAVIORS, by_type, strict=True)}
    return {**summary, "users": spec.users, "items_seen": int(seen.sum())}


def default_sizes(events: int) -> dict[str, int]:
    """Users, items and categories for ``events`` at the paper's ratios: 100 events per user
    (2M users, 200M clicks), 0.0035 items per event (700k items), 200 items per category."""
    users = max(1, events // 100)
    items = max(1, round(events * PAPER_SCALE["items"] / PAPER_SCALE["clicks"]))
    return {"users": users, "items": items, "categories": max(1, items // 200)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offline.data.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, required=True, help="events to write")
    parser.add_argument("--users", type=int, help="users (default events / 100)")
    parser.add_argument("--items", type=int, help="items (default events * 0.0035)")
    parser.add_argument("--categories", type=int, help="categories (default items / 200)")
    parser.add_argument("--days", type=int, default=8, help="days of the log (default 8)")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    defaults = SyntheticSpec(events=1, users=1, items=1, categories=1)
    helps = {
        "cart_rate": "add-to-carts per click",
        "fav_rate": "favourites per click",
        "buy_rate": "buys per click",
        "repeat_rate": "share of clicks that re-view an item clicked a few clicks before",
        "jump_rate": "share of clicks that jump to a new anchor item",
        "new_items": "share of items first seen after day 0",
        "zipf": "exponent of item popularity over rank",
    }
    for name, text in helps.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=getattr(defaults, name),
            help=f"{text} (default {getattr(defaults, name)})",
        )
    parser.add_argument(
        "--chunk-events",
        type=int,
        default=defaults.chunk_events,
        help=f"events generated per chunk of users (default {defaults.chunk_events})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.events < 1:
            raise ConfigError("--events must be >= 1")
        sizes = default_sizes(args.events)
        spec = SyntheticSpec(
            events=args.events,
            users=args.users if args.users is not None else sizes["users"],
            items=args.items if args.items is not None else sizes["items"],
            categories=args.categories if args.categories is not None else sizes["categories"],
            days=args.days,
            cart_rate=args.cart_rate,
            fav_rate=args.fav_rate,
            buy_rate=args.buy_rate,
            repeat_rate=args.repeat_rate,
            jump_rate=args.jump_rate,
            new_items=args.new_items,
            zipf=args.zipf,
            chunk_events=args.chunk_events,
            seed=args.seed,
        )
        summary = write_log(spec, args.out)
    except ConfigError as exc:
        print(f"synthetic: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {spec.events} events ({summary}), {spec.users} users, "
        f"{spec.items} items in {spec.categories} categories over {spec.days} days, "
        f"seed {spec.seed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

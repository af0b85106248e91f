"""Names and limits that the offline jobs and the online processes must agree on.

Each is defined here once. ``offline/`` and ``training/`` import them from here, since
``recsvc`` imports neither of them.
"""

from __future__ import annotations

#: Event types of the Event contract, in the order of their integer codes offline.
EVENT_TYPES: tuple[str, ...] = ("click", "cart", "fav", "buy")
#: Event types that are visits of an item: the steps of a session's scoring window.
VISIT_TYPES: tuple[str, ...] = ("click", "cart")
#: Longest user, item or event id, in characters.
MAX_ID_LENGTH = 256
#: Timestamps are Unix seconds before 2100-01-01; a millisecond timestamp is caught here.
LATEST_TIMESTAMP = 4_102_444_800.0

#: The personalized models a bundle can hold (``models/<name>/...``).
MODELS: tuple[str, ...] = ("personalized", "personalized_cart")
#: Bit of each candidate source and pool rule in a bundle's ``pool_sources`` (uint8) and in
#: the proto's ``Source``. Bundles store these bits, so they never change: a new source
#: takes the next free bit. Sources come in the order the pipeline builds them and the pool
#: merge sees them; the rules add candidates after them.
SOURCE_BITS: dict[str, int] = {
    "itemcf": 1 << 0,
    "item2vec": 1 << 1,
    "image": 1 << 2,
    "pss": 1 << 3,
    "category": 1 << 4,
    "new": 1 << 5,
    "session_knn": 1 << 6,
    "live": 1 << 7,
}
#: Business rules that add candidates to a pool after the sources.
POOL_RULES: tuple[str, ...] = ("category", "new")
#: Sources the server adds to a pool per request (from the shopper's session).
REQUEST_SOURCES: tuple[str, ...] = ("session_knn", "live")
#: Candidate sources of the offline pools, each with its neighbours and ``pool_scores/<name>``.
CANDIDATE_SOURCES: tuple[str, ...] = tuple(
    n for n in SOURCE_BITS if n not in POOL_RULES + REQUEST_SOURCES
)

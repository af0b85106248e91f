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
#: Candidate sources, each with its own neighbours and ``pool_scores/<name>``.
CANDIDATE_SOURCES: tuple[str, ...] = ("itemcf", "item2vec", "image", "pss")
#: Business rules that add candidates to a pool after the sources.
POOL_RULES: tuple[str, ...] = ("category", "new")
#: Bit of each source and rule in a bundle's ``pool_sources`` (and the proto's ``Source``).
SOURCE_BITS: dict[str, int] = {
    name: 1 << bit for bit, name in enumerate(CANDIDATE_SOURCES + POOL_RULES)
}

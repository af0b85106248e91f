"""Types of recsvc._wire, the protobuf wire bytes of a reply's ranked items (see
recsvc/_wire.c)."""

from collections.abc import Sequence

def ranked_items(
    item_ids: list[str],
    scores: list[float],
    flags: list[int],
    sources_by_flags: list[tuple[int, ...]],
    fields: Sequence[int],
    /,
) -> bytes:
    """Wire bytes of a repeated message field: one (item id, float score, packed enum
    sources, bool unscored) message per item; sources_by_flags[flags[i]] is item i's tuple
    of enum values; a score that is not finite is sent as -FLT_MAX, unscored. fields: the
    five field numbers (repeated, id, score, sources, unscored)."""

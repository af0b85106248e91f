"""Types of recsvc._live, a request's live candidates gathered in C (see recsvc/_live.c)."""

from collections.abc import Mapping

def gather(
    lists: dict[str, tuple[float, list[str], list[float]]],
    index: Mapping[str, int],
    viewed: str,
    /,
) -> tuple[bytes, bytes, list[str], bytes, bytes, bytes, bytes, bytes, bytes]:
    """(known int32, known_strength float64, new ids, anchors int32, weights float64
    (len(new) x len(anchors)), strength float64, known_shares float32 (n x 2), new_shares
    float32, absent_shares float32 (2)), the arrays as bytes; lists: item -> (factor,
    neighbours, stored scores); index: a dict of the bundle's item -> index."""

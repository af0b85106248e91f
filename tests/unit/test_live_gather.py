"""recsvc._live.gather, the compiled gathering of a request's live candidates, against the
plain-Python loop it replaced (kept here as the reference), and its errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc import _live
from recsvc.live import LiveRead
from recsvc.live_candidates import gather


def reference(live: LiveRead, index: dict[str, int], viewed: str) -> tuple:
    """The gather of recsvc.live_candidates as it was written in Python."""
    strength: dict[str, float] = {}
    from_anchor: dict[str, dict[int, float]] = {}
    side_counts: tuple[dict[str, float], dict[str, float]] = ({}, {})
    side_totals = [0.0, 0.0]
    for item, (factor, names, scores) in live.by_item.items():
        anchor = index.get(item, -1)
        side = 0 if item == viewed else 1
        for neighbour, stored in zip(names, scores, strict=True):
            score = stored * factor
            strength[neighbour] = strength.get(neighbour, 0.0) + score
            side_counts[side][neighbour] = side_counts[side].get(neighbour, 0.0) + score
            side_totals[side] += score
            if anchor >= 0 and neighbour not in index:
                from_anchor.setdefault(neighbour, {})[anchor] = score
    strength.pop(viewed, None)
    from_anchor.pop(viewed, None)
    absent = np.array([0.0 if t > 0 else np.nan for t in side_totals], dtype=np.float32)

    def shares(names: list[str]) -> np.ndarray:
        out = np.tile(absent, (len(names), 1))
        for side in (0, 1):
            if side_totals[side] > 0:
                out[:, side] = [side_counts[side].get(n, 0.0) / side_totals[side] for n in names]
        return out

    ranked = sorted(strength, key=lambda n: -strength[n])
    known = [n for n in ranked if n in index]
    new = [n for n in ranked if n not in index]
    anchors = sorted({a for n in new for a in from_anchor.get(n, {})})
    weights = np.zeros((len(new), len(anchors)))
    for i, neighbour in enumerate(new):
        for anchor, score in from_anchor.get(neighbour, {}).items():
            weights[i, anchors.index(anchor)] = score
    return (
        [index[n] for n in known],
        [strength[n] for n in known],
        new,
        anchors,
        weights.tolist(),
        [strength[n] for n in new],
        shares(known).tolist(),
        shares(new).tolist(),
    ), absent


@pytest.mark.parametrize("seed", range(60))
def test_gather_gives_the_python_loop_s_values_to_the_last_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    catalogue = [f"i{n}" for n in range(30)]
    index = {name: n for n, name in enumerate(catalogue[:20])}  # i20..i29 are new
    read = rng.choice(catalogue, int(rng.integers(0, 5)), replace=False).tolist()
    lists = {}
    for item in read:
        names = rng.choice(catalogue, int(rng.integers(0, 8)), replace=False).tolist()
        scores = sorted(rng.integers(1, 6, len(names)).astype(float) / 4, reverse=True)  # ties
        lists[item] = (float(rng.integers(0, 100)), names, scores)
    live = LiveRead(lists, 30.0)
    viewed = read[0] if read and rng.random() < 0.8 else str(rng.choice(catalogue))
    expected, absent = reference(live, index, viewed)
    got = gather(live, index, viewed)
    assert got.absent_shares.tobytes() == absent.tobytes()
    if not expected[0] and not expected[2]:
        assert not got
        return
    fields = ("known", "known_strength", "new", "anchors", "weights", "strength")
    for name, want in zip(fields, expected[:6], strict=True):
        value = getattr(got, name)
        assert (value if name == "new" else value.tolist()) == want, name
    for name, want in zip(("known_shares", "new_shares"), expected[6:], strict=True):
        assert getattr(got, name).tobytes() == np.array(want, np.float32).reshape(-1, 2).tobytes()
    assert got.known.dtype == np.int32 and got.known_shares.dtype == np.float32


def test_gather_refuses_what_is_not_a_read() -> None:
    index = {"a": 0}
    with pytest.raises(TypeError, match="factor, names, scores"):
        _live.gather({"a": (1.0, ["b"])}, index, "a")
    with pytest.raises(ValueError, match="as many scores as names"):
        _live.gather({"a": (1.0, ["b", "c"], [1.0])}, index, "a")
    with pytest.raises(TypeError, match="names must be str"):
        _live.gather({"a": (1.0, [7], [1.0])}, index, "a")
    with pytest.raises(TypeError):
        _live.gather({"a": (1.0, ["b"], ["x"])}, index, "a")
    with pytest.raises(TypeError):
        _live.gather({}, [("a", 0)], "a")
    with pytest.raises(ValueError, match="item indices"):
        _live.gather({"a": (1.0, ["b"], [1.0])}, {"a": -3}, "a")

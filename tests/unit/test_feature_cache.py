from pathlib import Path

import numpy as np

from offline.features.cache import FeatureCache, cached_embed


class CountingExtractor:
    """A stand-in extractor that records every input it is asked to embed."""

    def __init__(self) -> None:
        self.calls: list[str | bytes] = []

    def __call__(self, inputs: list[str | bytes]) -> np.ndarray:
        self.calls += inputs
        return np.array([[len(x), x[0] if isinstance(x, bytes) else ord(x[0])] for x in inputs])


def test_second_run_computes_nothing_and_changes_are_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "features.sqlite")
    embed = CountingExtractor()
    items, titles = ["a", "b", "c"], ["red shirt", "blue mug", "lamp"]
    first, computed = cached_embed(cache, "model@1", embed, items, titles, batch_size=2)
    assert computed == 3 and embed.calls == titles
    np.testing.assert_array_equal(first, [[9, ord("r")], [8, ord("b")], [4, ord("l")]])

    embed.calls.clear()
    again, computed = cached_embed(cache, "model@1", embed, items, titles)
    assert computed == 0 and embed.calls == []
    np.testing.assert_array_equal(again, first)

    _, computed = cached_embed(cache, "model@1", embed, items, ["red shirt", "green mug", "lamp"])
    assert computed == 1 and embed.calls == ["green mug"]  # only the changed title

    embed.calls.clear()
    _, computed = cached_embed(cache, "model@2", embed, items, titles)
    assert computed == 3  # a new model never reuses another model's vectors
    cache.close()

    reopened = FeatureCache(tmp_path / "features.sqlite")  # survives a restart
    embed.calls.clear()
    _, computed = cached_embed(reopened, "model@2", embed, items, titles)
    assert computed == 0

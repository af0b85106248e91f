"""Compound features from real photos (MobileNet) and titles (MiniLM), through the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline.features.cache import FeatureCache, cached_embed
from offline.features.compound import Part, compound_features
from offline.features.image import MobileNetEmbedder
from offline.features.text import MiniLMEmbedder

pytestmark = pytest.mark.slow

#: item -> (photo, title); items a and b share a photo and a kind of product.
CATALOGUE = {
    "a": ("hot_dog.jpg", "grilled hot dog in a bun with mustard"),
    "b": ("hot_dog.jpg", "classic frankfurter sausage sandwich"),
    "c": ("cat.bmp", "tabby cat plush toy"),
    "d": ("bird.bmp", "songbird figurine for the garden"),
    "e": ("grace_hopper.bmp", "portrait poster of a navy officer"),
}


class Counting:
    """Wraps an extractor's batch call and counts the inputs it really embeds."""

    def __init__(self, embed) -> None:
        self.embed, self.calls = embed, 0

    def __call__(self, inputs: list) -> np.ndarray:
        self.calls += len(inputs)
        return self.embed(inputs)


def nearest(matrix: np.ndarray) -> list[int]:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    return cos.argmax(axis=1).tolist()


def test_photos_and_titles_make_sensible_compound_features(shared: Path, tmp_path: Path) -> None:
    items = list(CATALOGUE)
    photos = [(shared / "models/sample_images" / p).read_bytes() for p, _ in CATALOGUE.values()]
    titles = [t for _, t in CATALOGUE.values()]
    images, texts = MobileNetEmbedder(shared=shared), MiniLMEmbedder()
    count_images, count_texts = Counting(images.embed_many), Counting(texts.embed)

    def build(cache: FeatureCache) -> np.ndarray:
        image_vectors, _ = cached_embed(cache, images.model_id, count_images, items, photos)
        title_vectors, _ = cached_embed(cache, texts.model_id, count_texts, items, titles)
        known = np.ones(len(items), dtype=bool)
        parts = [Part("image", image_vectors, known), Part("title", title_vectors, known)]
        return compound_features(parts, size=128).matrix

    cache = FeatureCache(tmp_path / "features.sqlite")
    first = build(cache)
    assert (count_images.calls, count_texts.calls) == (5, 5)
    assert first.shape == (5, 128 + 128)  # each part reduced to 128 columns

    again = build(FeatureCache(tmp_path / "features.sqlite"))
    assert (count_images.calls, count_texts.calls) == (5, 5)  # the second run embedded nothing
    np.testing.assert_allclose(again, first, rtol=1e-6)

    # a and b share a photo and are both sausages in buns: each is the other's nearest item.
    assert nearest(first)[:2] == [1, 0]
    assert nearest(first[:, 128:])[:2] == [1, 0]  # also on the titles alone

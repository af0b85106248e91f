"""The image-folder path through the feature cache: a re-run embeds no image again."""

from pathlib import Path

import numpy as np

from offline.features.cache import FeatureCache
from offline.features.image import embed_image_folder
from recsvc.exceptions import DataError


class CountingImageEmbedder:
    """Stands in for MobileNet: the vector is (length, first byte); b"bad" does not decode."""

    dim = 2
    model_id = "counting@1"

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def embed_bytes(self, data: bytes) -> np.ndarray:
        self.calls.append(data)
        if data == b"bad":
            raise DataError("cannot decode image")
        return np.array([len(data), data[0]], dtype=np.float32)


def test_second_run_embeds_nothing_and_an_edited_photo_once(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\x01photo-a")
    (folder / "b.png").write_bytes(b"\x02pb")
    (folder / "c.jpg").write_bytes(b"bad")
    (folder / "notes.txt").write_text("not an image")
    index = {"a": 0, "b": 1, "c": 2}
    cache = FeatureCache(tmp_path / "features.sqlite")
    embedder = CountingImageEmbedder()

    first = embed_image_folder(folder, index, embedder, n_items=4, cache=cache)
    assert first.computed == 2 and len(embedder.calls) == 3  # the bad one was tried
    np.testing.assert_array_equal(first.vectors[:2], [[8, 1], [3, 2]])
    assert first.known.tolist() == [True, True, False, False]
    assert dict(first.report.skipped) == {"undecodable image": 1, "not an image file": 1}

    embedder.calls.clear()
    second = embed_image_folder(folder, index, embedder, n_items=4, cache=cache)
    assert second.computed == 0 and embedder.calls == [b"bad"]  # failures are not cached
    np.testing.assert_array_equal(second.vectors, first.vectors)

    (folder / "b.png").write_bytes(b"\x03new-b")
    embedder.calls.clear()
    third = embed_image_folder(folder, index, embedder, n_items=4, cache=cache)
    assert third.computed == 1 and embedder.calls == [b"\x03new-b", b"bad"]
    np.testing.assert_array_equal(third.vectors[1], [6, 3])

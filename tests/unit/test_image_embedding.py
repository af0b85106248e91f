"""Item vector files, and the real MobileNet embedder on the shared sample photos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from offline.ann.search import exact_neighbours
from offline.data.skips import SkipReport
from offline.features.image import (
    MODEL_RELATIVE_PATH,
    MobileNetEmbedder,
    embed_image_folder,
    load_item_vectors,
    resolve_shared_dir,
    save_item_vectors,
)
from recsvc.exceptions import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RECSVC_SHARED") or REPO.parent / "shared")
SAMPLES = SHARED / "models" / "sample_images"
PHOTOS = {"cat": "cat.bmp", "bird": "bird.bmp", "grace_hopper": "grace_hopper.bmp",
          "hot_dog": "hot_dog.jpg"}  # fmt: skip
ITEMS = {"a": 0, "b": 1, "c": 2}


def test_npz_round_trip_with_unknown_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "vectors.npz"
    rows = [[1, 2], [3, 4], [5, 6], [np.nan, 1], [7, 8]]
    save_item_vectors(path, ["a", "zz", "c", "b", "a"], rows)
    loaded = load_item_vectors(path, ITEMS, 4)
    np.testing.assert_array_equal(loaded.vectors, [[1, 2], [0, 0], [5, 6], [0, 0]])
    np.testing.assert_array_equal(loaded.known, [True, False, True, False])
    assert loaded.vectors.dtype == np.float32
    report = loaded.report
    assert report.loaded == 2
    assert report.skipped == {"unknown item": 1, "non-finite values": 1, "duplicate item": 1}
    assert "unknown item" in report.examples[0] and "'zz'" in report.examples[0]
    assert "2 loaded, 3 skipped" in report.summary()


def test_csv_with_header_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "vectors.csv"
    path.write_text(
        "item_id,v1,v2,v3\n"
        "b,0.5,1,2\n"
        "a,x,1,2\n"  # not a number
        "\n"
        "c,1,2\n"  # too short
        "a,1,1,1\n"
        "nobody,1,1,1\n"
        "c\n"  # no values
    )
    loaded = load_item_vectors(path, ITEMS, 3)
    np.testing.assert_array_equal(loaded.vectors, [[1, 1, 1], [0.5, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(loaded.known, [True, True, False])
    assert loaded.report.skipped == {"malformed row": 2, "wrong dimension": 1, "unknown item": 1}


def test_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_item_vectors(tmp_path / "missing.npz", ITEMS, 3)
    (tmp_path / "v.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported"):
        load_item_vectors(tmp_path / "v.parquet", ITEMS, 3)
    np.savez(tmp_path / "wrong.npz", ids=np.array(["a"]), vectors=np.ones((1, 2)))
    with pytest.raises(DataError, match="not an item vectors"):
        load_item_vectors(tmp_path / "wrong.npz", ITEMS, 3)
    np.savez(tmp_path / "short.npz", item_ids=np.array(["a", "b"]), vectors=np.ones((1, 2)))
    with pytest.raises(DataError, match="do not line up"):
        load_item_vectors(tmp_path / "short.npz", ITEMS, 3)
    (tmp_path / "strangers.csv").write_text("x,1,2\ny,3,4\n")
    with pytest.raises(DataError, match="no usable item vectors"):
        load_item_vectors(tmp_path / "strangers.csv", ITEMS, 3)


def test_shared_dir_and_model_path_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECSVC_SHARED", raising=False)
    with pytest.raises(ConfigError, match="RECSVC_SHARED"):
        resolve_shared_dir()
    monkeypatch.setenv("RECSVC_SHARED", str(tmp_path))
    assert resolve_shared_dir() == tmp_path
    assert resolve_shared_dir("/elsewhere") == Path("/elsewhere")
    with pytest.raises(ConfigError, match="model not found"):
        MobileNetEmbedder()  # no model under tmp_path; fails before importing TensorFlow


def test_report_keeps_few_examples() -> None:
    report = SkipReport("somewhere")
    for i in range(100):
        report.skip(f"row {i}", "unknown item")
    assert report.n_skipped == 100 and len(report.examples) == 20


@pytest.fixture(scope="module")
def embedder() -> MobileNetEmbedder:
    if not (SHARED / MODEL_RELATIVE_PATH).is_file():
        pytest.fail(f"the MobileNet model is missing under {SHARED} (set RECSVC_SHARED)")
    return MobileNetEmbedder(shared=SHARED)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos named by item id, a copy, a corrupt file and files to skip."""
    folder = tmp_path_factory.mktemp("images")
    for item_id, name in PHOTOS.items():
        shutil.copy(SAMPLES / name, folder / f"{item_id}{Path(name).suffix}")
    shutil.copy(SAMPLES / "cat.bmp", folder / "cat_copy.bmp")
    shutil.copy(SAMPLES / "bird.bmp", folder / "stranger.bmp")  # not in the catalogue
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


CATALOGUE = {"cat": 0, "bird": 1, "grace_hopper": 2, "hot_dog": 3, "cat_copy": 4, "broken": 5}


@pytest.mark.slow
def test_real_photos_embed_to_distinct_finite_vectors(
    embedder: MobileNetEmbedder, photo_folder: Path
) -> None:
    result = embed_image_folder(photo_folder, CATALOGUE, embedder, n_items=7, progress=False)
    assert embedder.dim == 1024
    assert result.vectors.shape == (7, 1024) and result.vectors.dtype == np.float32
    np.testing.assert_array_equal(result.known, [1, 1, 1, 1, 1, 0, 0])
    photos = result.vectors[:4]
    assert np.isfinite(photos).all()
    assert (photos.std(axis=1) > 0.1).all()
    assert result.report.loaded == 5
    assert result.report.skipped == {
        "undecodable image": 1,
        "unknown item": 1,
        "not an image file": 1,
    }
    assert any(e.startswith("broken.jpg: undecodable image") for e in result.report.examples)

    unit = photos / np.linalg.norm(photos, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert (cosine[~np.eye(4, dtype=bool)] < 0.8).all()  # four different photos
    copy = result.vectors[4] / np.linalg.norm(result.vectors[4])
    assert float(unit[0] @ copy) == pytest.approx(1.0, abs=1e-6)
    neighbours = exact_neighbours(result.vectors, result.known, 1)
    assert neighbours.items[0, 0] == 4 and neighbours.items[4, 0] == 0


@pytest.mark.slow
def test_an_edited_photo_is_nearest_to_its_original(embedder: MobileNetEmbedder) -> None:
    import tensorflow as tf

    originals, edited = [], []
    for name in PHOTOS.values():
        data = (SAMPLES / name).read_bytes()
        originals.append(embedder.embed_bytes(data))
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        h, w = image.shape[0], image.shape[1]
        crop = tf.image.flip_left_right(image[h // 10 : h - h // 10, w // 10 : w - w // 10])
        edited.append(embedder.embed_bytes(tf.io.encode_png(crop).numpy()))
    vectors = np.vstack([originals, edited])
    result = exact_neighbours(vectors, None, 1, items=np.arange(4, 8))
    np.testing.assert_array_equal(result.items[4:, 0], [0, 1, 2, 3])
    assert (result.scores[4:, 0] > 0.85).all()

"""``--item-titles``: the loader's row checks, and cached title embeddings."""

from pathlib import Path

import numpy as np
import pytest

from offline.features.cache import FeatureCache
from offline.features.text import HashedTokenEmbedder
from offline.features.titles import load_item_titles, title_part
from recsvc.exceptions import DataError

INDEX = {"a": 0, "b": 1, "c": 2, "d": 3}


class CountingEmbedder(HashedTokenEmbedder):
    """The hashed embedder, recording every title it is asked to embed."""

    def __init__(self) -> None:
        super().__init__(dim=16, seed=1)
        self.calls: list[str] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.calls += texts
        return super()._embed(texts)


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_text(
        "item_id,title\n"
        'a,"Red shirt, cotton"\n'  # a quoted comma stays in the title
        "b,\n"  # empty title
        "zz,Unknown thing\n"
        "a,Second title of a\n"
        "c,Blue   mug\n"
        "\n"
        "d,too,many\n"
    )
    titles = load_item_titles(path, INDEX, 4)
    assert titles.titles == ["Red shirt, cotton", "", "Blue mug", ""]
    assert titles.known.tolist() == [True, False, True, False]
    report = titles.report
    assert (report.read, report.loaded) == (6, 2)
    assert dict(report.skipped) == {
        "empty title": 1,
        "unknown item": 1,
        "duplicate item": 1,
        "wrong number of fields": 1,
    }
    assert "line 3: empty title" in report.summary()


def test_tsv_is_detected_and_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    tsv = tmp_path / "titles.txt"
    tsv.write_text("b\tLamp, desk\nd\tChair\n")  # a tab on the first line: TSV
    titles = load_item_titles(tsv, INDEX, 4)
    assert titles.titles == ["", "Lamp, desk", "", "Chair"]
    with pytest.raises(DataError, match="not found"):
        load_item_titles(tmp_path / "missing.csv", INDEX, 4)
    (tmp_path / "latin1.csv").write_bytes("a,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_item_titles(tmp_path / "latin1.csv", INDEX, 4)
    (tmp_path / "none.csv").write_text("zz,nothing we know\n")
    with pytest.raises(DataError, match=r"no usable item titles.*unknown item: 1"):
        load_item_titles(tmp_path / "none.csv", INDEX, 4)


def test_a_second_run_embeds_nothing_and_a_changed_title_once(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_text("a,red shirt\nb,blue mug\nd,desk lamp\n")
    ids = np.array(["a", "b", "c", "d"])
    cache = FeatureCache(tmp_path / "cache.sqlite")
    embedder = CountingEmbedder()
    part, computed = title_part(load_item_titles(path, INDEX, 4), ids, embedder, cache)
    assert computed == 3 and sorted(embedder.calls) == ["blue mug", "desk lamp", "red shirt"]
    assert part.name == "title" and part.known.tolist() == [True, True, False, True]
    assert part.vectors.shape == (4, 16) and not part.vectors[2].any()
    np.testing.assert_allclose(np.linalg.norm(part.vectors[[0, 1, 3]], axis=1), 1.0, rtol=1e-6)

    embedder.calls.clear()
    again, computed = title_part(load_item_titles(path, INDEX, 4), ids, embedder, cache)
    assert computed == 0 and embedder.calls == []
    np.testing.assert_array_equal(again.vectors, part.vectors)

    path.write_text("a,red shirt\nb,green mug\nd,desk lamp\n")
    _, computed = title_part(load_item_titles(path, INDEX, 4), ids, embedder, cache)
    assert computed == 1 and embedder.calls == ["green mug"]

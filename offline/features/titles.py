"""Item titles for the PSS title embedding: read ``--item-titles`` and embed them, cached.

The file is CSV or TSV with two fields per line, ``item_id`` and ``title``: tab-separated when
the name ends in ``.tsv`` or the first line holds a tab, else comma-separated (quote a title
that holds commas, as CSV does). An optional header line starts with ``item_id``. Rows that
cannot be used (wrong number of fields, empty title, unknown item, repeated item) are
skipped and counted in a :class:`~offline.data.skips.SkipReport`; a file with no usable row, or
one that is not UTF-8 text, is a :class:`~recsvc.exceptions.DataError`.

:func:`title_part` turns the titles into the ``title`` part of the compound feature with a
:class:`~offline.features.text.TextEmbedder` (all-MiniLM-L6-v2 by default), through a
:class:`~offline.features.cache.FeatureCache` so a re-run embeds only new or changed titles.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from offline.data.skips import SkipReport
from offline.features.compound import Part
from recsvc.exceptions import DataError

if TYPE_CHECKING:
    from offline.features.cache import FeatureCache
    from offline.features.text import TextEmbedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemTitles:
    """One title per catalogue item, where there is one.

    Attributes
    ----------
    titles : list of str, length n_items ("" for items without a title)
    known : bool array, shape (n_items,)
    report : SkipReport
    """

    titles: list[str]
    known: np.ndarray
    report: SkipReport


def _delimiter(path: Path, first_line: str) -> str:
    return "\t" if path.suffix.lower() == ".tsv" or "\t" in first_line else ","


def load_item_titles(
    path: str | os.PathLike[str], item_index: dict[str, int], n_items: int
) -> ItemTitles:
    """Read an ``item_id,title`` file (see the module docstring).

    Parameters
    ----------
    path : the CSV or TSV file
    item_index : external item id -> dense index (< n_items)
    n_items : int

    Raises
    ------
    DataError
        Missing or unreadable file, not UTF-8, or not one usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"item titles file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: item titles must be UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise DataError(f"cannot read item titles {path}: {exc}") from exc
    lines = text.splitlines()
    delimiter = _delimiter(path, lines[0] if lines else "")
    report = SkipReport(str(path))
    titles = [""] * n_items
    known = np.zeros(n_items, dtype=bool)
    try:
        rows = list(csv.reader(lines, delimiter=delimiter))
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse item titles ({exc})") from exc
    for number, fields in enumerate(rows, start=1):
        if not fields or not "".join(fields).strip():
            continue  # blank line
        if number == 1 and fields[0].strip().lower() == "item_id":
            continue  # header
        report.read += 1
        where = f"line {number}"
        if len(fields) != 2:
            report.skip(where, "wrong number of fields", f"{len(fields)}, expected 2")
            continue
        item_id, title = fields[0].strip(), " ".join(fields[1].split())
        index = item_index.get(item_id)
        if not title:
            report.skip(where, "empty title")
        elif index is None:
            report.skip(where, "unknown item", item_id)
        elif known[index]:
            report.skip(where, "duplicate item", item_id)
        else:
            titles[index], known[index] = title, True
            report.loaded += 1
    if report.loaded == 0:
        raise DataError(f"no usable item titles in {report.summary()}")
    if report.n_skipped:
        log.warning("%s", report.summary())
    return ItemTitles(titles, known, report)


def title_part(
    titles: ItemTitles,
    item_ids: np.ndarray,
    embedder: TextEmbedder,
    cache: FeatureCache | None = None,
) -> tuple[Part, int]:
    """The ``title`` part of the compound feature: each known title's embedding.

    Parameters
    ----------
    titles : ItemTitles over the catalogue
    item_ids : external ids of the catalogue items (the cache key), shape (n_items,)
    embedder : TextEmbedder
    cache : FeatureCache, optional
        Vectors are looked up by (``embedder.model_id``, item, sha256 of the title) and only
        the misses are embedded.

    Returns
    -------
    (Part of shape (n_items, embedder.dim), number of titles embedded in this call)
    """
    rows = np.flatnonzero(titles.known)
    texts = [titles.titles[i] for i in rows]
    if cache is None:
        embedded, computed = embedder.embed(texts), len(texts)
    else:
        from offline.features.cache import cached_embed

        keys = [str(item_ids[i]) for i in rows]
        embedded, computed = cached_embed(cache, embedder.model_id, embedder.embed, keys, texts)
    vectors = np.zeros((len(titles.titles), embedder.dim), dtype=np.float32)
    if len(rows):
        vectors[rows] = embedded
    return Part("title", vectors, titles.known.copy()), computed


def titles_from_file(
    path: Path,
    item_ids: np.ndarray,
    cache: FeatureCache | None = None,
    embedder: TextEmbedder | None = None,
) -> tuple[Part, dict[str, object]]:
    """Read ``--item-titles`` and embed the titles (MiniLM unless ``embedder`` is given).

    Prints the load summary and how many titles were embedded or came from the cache.

    Returns
    -------
    (the ``title`` Part, a report for the bundle manifest)
    """
    titles = load_item_titles(
        path, {str(item): i for i, item in enumerate(item_ids)}, len(item_ids)
    )
    print(titles.report.summary())
    if embedder is None:
        from offline.features.text import MiniLMEmbedder

        embedder = MiniLMEmbedder(progress=True)
    part, computed = title_part(titles, item_ids, embedder, cache)
    loaded = int(titles.known.sum())
    print(f"title features ({embedder.model_id}): {computed} embedded, {loaded - computed} cached")
    report = {**titles.report.as_dict(), "model": embedder.model_id, "computed": computed}
    return part, report

"""A cache of per-item feature vectors, keyed by (model, item, input checksum) as PSS §4.1.

Extracting image and title embeddings is the slow part of building compound features, and
between runs most items do not change. Each vector is stored with the identifier of the
model that made it and the sha256 of the input it was made from; a lookup hits only when
all three match, so a changed photo or title is recomputed, and a new model (a new
identifier) never sees the old model's vectors. The store is one SQLite file: stdlib,
safe against a crash mid-write (transactions), and readable by other tools.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recsvc.exceptions import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL,
    item TEXT NOT NULL,
    checksum TEXT NOT NULL,
    dtype TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, item)
)
"""


def checksum(data: bytes | str) -> str:
    """sha256 of an extractor input (image bytes, or a title as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


class FeatureCache:
    """Vectors by (model, item), valid while the input's checksum is unchanged."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"feature cache {self.path} is unusable: {exc}") from exc

    def get(
        self, model: str, items: Sequence[str], checksums: Sequence[str]
    ) -> list[np.ndarray | None]:
        """The cached vector of each item, or None where missing or made from other input."""
        found: dict[str, tuple[str, str, bytes]] = {}
        for start in range(0, len(items), 500):
            chunk = list(items[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT item, checksum, dtype, vector FROM vectors "
                f"WHERE model = ? AND item IN ({marks})",
                [model, *chunk],
            )
            found.update({item: (sum_, dtype, blob) for item, sum_, dtype, blob in rows})
        out: list[np.ndarray | None] = []
        for item, expected in zip(items, checksums, strict=True):
            hit = found.get(item)
            if hit is None or hit[0] != expected:
                out.append(None)
            else:
                out.append(np.frombuffer(hit[2], dtype=np.dtype(hit[1])).copy())
        return out

    def put(
        self, model: str, items: Sequence[str], checksums: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Store vectors (one row each), replacing older entries of the same model and item."""
        vectors = np.ascontiguousarray(vectors)
        rows = [
            (model, item, sum_, vectors.dtype.str, vector.tobytes())
            for item, sum_, vector in zip(items, checksums, vectors, strict=True)
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()


def cached_embed(
    cache: FeatureCache,
    model: str,
    embed: Callable[[list[bytes | str]], np.ndarray],
    items: Sequence[str],
    inputs: Sequence[bytes | str],
    batch_size: int = 256,
) -> tuple[np.ndarray, int]:
    """Vectors of ``items`` from their ``inputs``, computing only what the cache lacks.

    Parameters
    ----------
    cache : FeatureCache
    model : str
        Identifier of the extractor (name and weights checksum).
    embed : callable
        ``embed(inputs) -> float array (len(inputs), d)``; called on the misses only, in
        batches of ``batch_size``.
    items, inputs : sequences of length n

    Returns
    -------
    (float32 array (n, d), number of items computed)
    """
    if len(items) != len(inputs):
        raise DataError(f"{len(items)} items but {len(inputs)} inputs")
    sums = [checksum(data) for data in inputs]
    found = cache.get(model, items, sums)
    missing = [i for i, vector in enumerate(found) if vector is None]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        vectors = np.asarray(embed([inputs[i] for i in chunk]), dtype=np.float32)
        cache.put(model, [items[i] for i in chunk], [sums[i] for i in chunk], vectors)
        for i, vector in zip(chunk, vectors, strict=True):
            found[i] = vector
    if not found:
        return np.zeros((0, 0), dtype=np.float32), 0
    return np.stack(found).astype(np.float32), len(missing)

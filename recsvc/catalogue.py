"""What the gateway says about an item besides its recommendations: its category and photo.

Read from the bundle the server serves (``item_ids``, ``item_category``,
``category_names``), and read again when the bundle root's ``current`` link moves to a new
version, so the two stay in step across a hot swap. Photos come from an optional folder
laid out as ``recsvc pipeline --item-images`` takes it: ``<item_id>.<ext>``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsvc.bundle import load_bundle, resolve
from recsvc.contract import MAX_ID_LENGTH

#: Photo formats a browser shows, with their media types.
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
}


#: Popular items kept for :meth:`Catalogue.popular`.
POPULAR = 100


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    #: None for an item the bundle does not know (one seen only in the live stream)
    category: str | None
    in_bundle: bool
    has_image: bool


@dataclass(frozen=True)
class _Snapshot:
    """One bundle version's lookups, swapped in whole so readers never mix two versions."""

    version: Path
    index: dict[str, int]
    categories: list[str]
    item_category: np.ndarray
    popular: list[str]


class Catalogue:
    """Item lookups against the bundle at ``bundle`` (a version dir or a root)."""

    def __init__(self, bundle: Path, images: Path | None = None) -> None:
        self._bundle = Path(bundle)
        self._images = images
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def describe(self, item_ids: list[str]) -> list[ItemInfo]:
        """Each item's category (if the bundle knows it) and whether it has a photo.

        Raises
        ------
        BundleError
            No bundle at the path.
        """
        snapshot = self._current()
        return [self._describe(snapshot, item_id) for item_id in item_ids]

    def _describe(self, snapshot: _Snapshot, item_id: str) -> ItemInfo:
        row = snapshot.index.get(item_id)
        category = None
        if row is not None:
            code = int(snapshot.item_category[row])
            if 0 <= code < len(snapshot.categories):
                category = snapshot.categories[code]
        return ItemInfo(item_id, category, row is not None, self.image(item_id) is not None)

    def popular(self, n: int) -> list[str]:
        """The bundle's ``n`` most popular items (training clicks), most popular first."""
        return self._current().popular[:n]

    def image(self, item_id: str) -> tuple[Path, str] | None:
        """(path, media type) of the item's photo, or None; only files directly in the
        folder, named by an id of at most ``MAX_ID_LENGTH`` characters."""
        if (
            self._images is None
            or not 0 < len(item_id) <= MAX_ID_LENGTH
            or "/" in item_id
            or "\\" in item_id
            or "\0" in item_id
            or item_id.startswith(".")
        ):
            return None
        for suffix, media_type in IMAGE_TYPES.items():
            path = self._images / f"{item_id}{suffix}"
            try:
                if path.is_file():
                    return path, media_type
            except OSError:  # a name the file system refuses (too long, ...)
                return None
        return None

    def _current(self) -> _Snapshot:
        version = resolve(self._bundle)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                self._snapshot = self._load(version)
            return self._snapshot

    @staticmethod
    def _load(version: Path) -> _Snapshot:
        bundle = load_bundle(version, verify=False)
        ids = np.asarray(bundle["item_ids"]).astype(str)
        order = np.argsort(-np.asarray(bundle["item_popularity"]), kind="stable")
        return _Snapshot(
            version=version,
            index=bundle.item_index(),
            categories=np.asarray(bundle["category_names"]).astype(str).tolist(),
            item_category=np.asarray(bundle["item_category"]),
            popular=ids[order[:POPULAR]].tolist(),
        )

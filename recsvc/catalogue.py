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


class Catalogue:
    """Item lookups against the bundle at ``bundle`` (a version dir or a root)."""

    def __init__(self, bundle: Path, images: Path | None = None) -> None:
        self._bundle = Path(bundle)
        self._images = images
        self._lock = threading.Lock()
        self._version: Path | None = None
        self._index: dict[str, int] = {}
        self._categories: list[str] = []
        self._item_category = np.zeros(0, dtype=np.int32)
        self._popular: list[str] = []

    def describe(self, item_ids: list[str]) -> list[ItemInfo]:
        """Each item's category (if the bundle knows it) and whether it has a photo.

        Raises
        ------
        BundleError
            No bundle at the path.
        """
        self._refresh()
        return [self._describe(item_id) for item_id in item_ids]

    def _describe(self, item_id: str) -> ItemInfo:
        row = self._index.get(item_id)
        category = None
        if row is not None:
            code = int(self._item_category[row])
            category = self._categories[code] if 0 <= code < len(self._categories) else None
        return ItemInfo(item_id, category, row is not None, self.image(item_id) is not None)

    def popular(self, n: int) -> list[str]:
        """The bundle's ``n`` most popular items (training clicks), most popular first."""
        self._refresh()
        return self._popular[:n]

    def image(self, item_id: str) -> tuple[Path, str] | None:
        """(path, media type) of the item's photo, or None."""
        if self._images is None or not item_id or "/" in item_id or item_id.startswith("."):
            return None
        for suffix, media_type in IMAGE_TYPES.items():
            path = self._images / f"{item_id}{suffix}"
            if path.is_file():
                return path, media_type
        return None

    def _refresh(self) -> None:
        version = resolve(self._bundle)
        if version == self._version:
            return
        with self._lock:
            if version == self._version:
                return
            bundle = load_bundle(version, verify=False)
            self._index = bundle.item_index()
            self._categories = np.asarray(bundle["category_names"]).astype(str).tolist()
            self._item_category = np.asarray(bundle["item_category"])
            ids = np.asarray(bundle["item_ids"]).astype(str)
            order = np.argsort(-np.asarray(bundle["item_popularity"]), kind="stable")
            self._popular = ids[order[:POPULAR]].tolist()
            self._version = version

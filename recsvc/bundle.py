"""The artifact bundle: the one contract between the offline jobs and the server.

A bundle is a directory ``<root>/<version>/`` holding ``manifest.json`` and ``.npy`` arrays.
The manifest records the sha256, shape and dtype of every array; ``<root>/current`` is a
symlink to the newest complete bundle. Writers build the bundle in a hidden temporary
directory and rename it into place, so a reader never sees half of one. Reading needs
numpy only: arrays are loaded with ``allow_pickle=False`` and memory-mapped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.exceptions import BundleError

FORMAT = "recsvc-bundle/1"
MANIFEST = "manifest.json"
CURRENT = "current"

#: Bit of each candidate source in ``pool_sources``; the business rules come last.
SOURCE_BITS: dict[str, int] = {
    "itemcf": 1 << 0,
    "item2vec": 1 << 1,
    "image": 1 << 2,
    "pss": 1 << 3,
    "category": 1 << 4,
    "new": 1 << 5,
}


def source_names(flags: int) -> list[str]:
    """Names of the sources set in one ``pool_sources`` value."""
    return [name for name, bit in SOURCE_BITS.items() if flags & bit]


#: Arrays every bundle has; the first dimension of each is the number of items.
REQUIRED_ITEM_ARRAYS = (
    "item_ids",
    "item_category",
    "item_popularity",
    "item_first_seen",
    "pools",
    "pool_sources",
)
#: The types the server's compiled scoring reads arrays in, by name or name ending: it
#: reads them where they are mapped, never from a converted copy.
SERVING_DTYPES = {
    "pools": np.int32,
    "pool_sources": np.uint8,
    "/input_embeddings": np.float32,
    "/output_embeddings": np.float32,
    "/position_weights": np.float32,
    "/known": np.bool_,
    "/scorable": np.bool_,
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    root: str | Path, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any]
) -> Path:
    """Write a new bundle version under ``root`` atomically and point ``current`` at it.

    Parameters
    ----------
    root : directory holding bundle versions (created if missing)
    arrays : relative name (``"pools"``, ``"models/personalized/position_weights"``) -> array;
        object arrays are refused, so every file loads without pickle.
    manifest : extra manifest fields (source data, parameters, metrics, ...)

    Returns
    -------
    The path of the new version directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    version = now.strftime("%Y%m%dT%H%M%S%fZ")
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, array in sorted(arrays.items()):
            array = np.asarray(array)
            if array.dtype.hasobject:
                raise BundleError(f"array {name!r} has dtype object; bundles hold plain arrays")
            path = tmp / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
            files[f"{name}.npy"] = {
                "sha256": sha256_file(path),
                "shape": list(array.shape),
                "dtype": array.dtype.str,
            }
        body = {
            "format": FORMAT,
            "version": version,
            "created_at": now.isoformat(),
            **manifest,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
        _fsync_tree(tmp)
        final = root / version
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link = root / f".{CURRENT}-{version}"
    link.symlink_to(version)
    link.replace(root / CURRENT)
    return final


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def resolve(path: str | Path) -> Path:
    """A version directory, or the version ``current`` (else the newest) under a root."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CURRENT / MANIFEST).is_file():
        return (path / CURRENT).resolve()
    if path.is_dir():
        versions = sorted(
            p for p in path.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith(".")
        )
        if versions:
            return versions[-1]
    raise BundleError(f"no bundle at {path} (expected {MANIFEST} or a '{CURRENT}' link)")


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: ``bundle["pools"]`` gives the (memory-mapped) array."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def n_items(self) -> int:
        return len(self.arrays["item_ids"])

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no array {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def item_index(self) -> dict[str, int]:
        """External item id -> dense index."""
        return {str(item): i for i, item in enumerate(self.arrays["item_ids"])}


def load_bundle(path: str | Path, *, verify: bool = True, mmap: bool = True) -> Bundle:
    """Load and check a bundle.

    Raises
    ------
    BundleError
        Missing or unreadable manifest, unknown format, a missing file, a checksum,
        shape or dtype that differs from the manifest, or arrays that disagree on the
        number of items.
    """
    directory = resolve(path)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"unreadable manifest in {directory}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{directory}: bundle format {found!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{directory}: manifest lists no files")
    if not isinstance(manifest.get("version"), str):
        raise BundleError(f"{directory}: manifest has no version")
    try:
        arrays = _load_arrays(directory, files, verify=verify, mmap=mmap)
    except OSError as exc:
        raise BundleError(f"{directory}: cannot read the bundle: {exc}") from exc
    _check_consistent(directory, arrays)
    return Bundle(directory, manifest, arrays)


def _load_arrays(
    directory: Path, files: dict[str, Any], *, verify: bool, mmap: bool
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for relative, meta in files.items():
        file = directory / relative
        if not file.is_file():
            raise BundleError(f"{directory}: {relative} is missing")
        if verify and sha256_file(file) != meta.get("sha256"):
            raise BundleError(f"{directory}: {relative} does not match its sha256 (corrupted?)")
        try:
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{directory}: cannot load {relative}: {exc}") from exc
        if list(array.shape) != meta.get("shape") or array.dtype.str != meta.get("dtype"):
            raise BundleError(
                f"{directory}: {relative} is {array.dtype.str}{list(array.shape)}, "
                f"manifest says {meta.get('dtype')}{meta.get('shape')}"
            )
        arrays[relative.removesuffix(".npy")] = array
    return arrays


def _check_consistent(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    missing = [name for name in REQUIRED_ITEM_ARRAYS if name not in arrays]
    if missing:
        raise BundleError(f"{directory}: required arrays missing: {missing}")
    n_items = len(arrays["item_ids"])
    pools_shape = arrays["pools"].shape
    for name, array in arrays.items():
        per_item = name in REQUIRED_ITEM_ARRAYS or name.startswith(("pool_scores/", "embeddings/"))
        per_item |= name.endswith(
            ("/input_embeddings", "/output_embeddings", "/known", "/scorable")
        )
        if per_item and array.shape[0] != n_items:
            raise BundleError(f"{directory}: {name} has {array.shape[0]} rows, expected {n_items}")
    for name, array in arrays.items():
        if name.startswith(("pool_sources", "pool_scores/")) and array.shape != pools_shape:
            raise BundleError(f"{directory}: {name} has shape {array.shape}, pools {pools_shape}")
    for name, array in arrays.items():
        wanted = SERVING_DTYPES.get(name) or next(
            (t for end, t in SERVING_DTYPES.items() if end[0] == "/" and name.endswith(end)), None
        )
        if wanted is not None and (array.dtype != wanted or not array.flags.c_contiguous):
            raise BundleError(
                f"{directory}: {name} must be a C-ordered {np.dtype(wanted).name} array, "
                f"got {array.dtype.name}{'' if array.flags.c_contiguous else ' (not C-ordered)'}"
            )
    eval_lengths = {name: len(a) for name, a in arrays.items() if name.startswith("eval/")}
    if len(set(eval_lengths.values())) > 1:
        raise BundleError(f"{directory}: eval arrays differ in length: {eval_lengths}")
    pools = arrays["pools"]
    if pools.size and (pools.max() >= n_items or pools.min() < -1):
        raise BundleError(f"{directory}: pools reference items outside 0..{n_items - 1}")

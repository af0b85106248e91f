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

from recsvc.contract import CANDIDATE_SOURCES, POOL_RULES, SOURCE_BITS
from recsvc.exceptions import BundleError

FORMAT = "recsvc-bundle/1"
MANIFEST = "manifest.json"
CURRENT = "current"


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
        shape or dtype that differs from the manifest, arrays that disagree on the
        number of items, or values the server cannot serve (see :func:`_check_values`).
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
    _check_values(directory, arrays)
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


#: Rows of the pool arrays checked at a time, so checking a large bundle's values needs
#: little memory beyond the mapped arrays.
CHECK_ROWS = 1 << 16
#: Largest score magnitude a model may be able to reach: far below float32's 3.4e38.
MAX_SCORE_BOUND = 1e30


def _check_values(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """Refuse values that a checksum cannot catch because they were written that way.

    Embeddings and weights must be finite, and small enough that no score overflows;
    a pool slot holds an item exactly when it has a source flag, and only known flags.
    """
    for name, array in arrays.items():
        checked = name.startswith(("models/", "embeddings/")) and array.dtype.kind == "f"
        if checked and not all(np.isfinite(block).all() for block in _row_blocks(array)):
            raise BundleError(f"{directory}: {name} holds NaN or infinite values")
    for name in arrays:
        if name.endswith("/position_weights"):
            _check_score_bound(directory, name.removesuffix("/position_weights"), arrays)
    # Request-time sources (session-kNN) are never stored in a pool.
    known_bits = np.uint8(sum(SOURCE_BITS[n] for n in CANDIDATE_SOURCES + POOL_RULES))
    for pools, flags in zip(
        _row_blocks(arrays["pools"]), _row_blocks(arrays["pool_sources"]), strict=True
    ):
        padding = pools < 0
        if flags[padding].any():
            raise BundleError(f"{directory}: pool_sources flags empty (-1) pool slots")
        if not flags[~padding].all():
            raise BundleError(f"{directory}: a pool candidate has no source flag")
        if (np.bitwise_or.reduce(flags, axis=None) if flags.size else 0) & ~known_bits:
            raise BundleError(f"{directory}: pool_sources has flags no source is assigned")


def _check_score_bound(directory: Path, prefix: str, arrays: dict[str, np.ndarray]) -> None:
    """|u . o| <= d * |window| * max|w| * max|v| * max|o| must stay far from overflow.

    A model that lacks one of its arrays is left to :class:`~recsvc.ranking.Ranker`, which
    names the missing one.
    """
    largest = {
        part: max((float(np.abs(b).max()) for b in _row_blocks(arrays[name]) if b.size), default=0)
        for part in ("input_embeddings", "output_embeddings", "position_weights")
        if (name := f"{prefix}/{part}") in arrays
    }
    if len(largest) < 3:
        return
    dims = arrays[f"{prefix}/input_embeddings"].shape[-1]
    bound = dims * len(arrays[f"{prefix}/position_weights"]) * np.prod(list(largest.values()))
    if not bound < MAX_SCORE_BOUND:
        raise BundleError(
            f"{directory}: {prefix} has values so large that its scores could overflow "
            f"(largest |value|: {', '.join(f'{k} {v:.3g}' for k, v in largest.items())})"
        )


def _row_blocks(array: np.ndarray) -> list[np.ndarray]:
    return [array[start : start + CHECK_ROWS] for start in range(0, max(len(array), 1), CHECK_ROWS)]

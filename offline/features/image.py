"""Item image vectors: read precomputed ones, or embed photos with the MobileNet extractor.

Two ways in, one result (:class:`ItemVectors`: a float32 ``(n_items, d)`` matrix, a ``known``
mask and a :class:`SkipReport` of what was skipped and why):

* :func:`load_item_vectors` reads a vectors file, in one of two formats:

  - ``.npz`` with ``item_ids`` (1-D str array, shape (m,)) and ``vectors`` (float, shape
    (m, d)), read with ``allow_pickle=False`` (:func:`save_item_vectors` writes it);
  - ``.csv`` with lines ``item_id,v1,...,vd``, no quoting, an optional header line whose
    first field is ``item_id``.

* :func:`embed_image_folder` embeds files named ``<item_id>.<ext>`` (jpg, jpeg, png, bmp)
  with :class:`MobileNetEmbedder`, which runs the quantized MobileNet v1 embedding
  extractor (TFLite, 1024-d) from the shared models directory.

Rows or files that cannot be used (unknown item, malformed row, non-finite values, repeated
item, undecodable image) are skipped and counted, never fatal; a source with nothing
usable at all is a :class:`~recsvc.exceptions.DataError`. TensorFlow is imported only when
an embedder is created.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from offline.data.skips import SkipReport
from offline.features.cache import FeatureCache, checksum
from recsvc.exceptions import ConfigError, DataError

log = logging.getLogger(__name__)

#: The model file, relative to the shared directory.
MODEL_RELATIVE_PATH = Path(
    "models/mobilenet_v1_embedding/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


@dataclass(frozen=True)
class ItemVectors:
    """One vector per catalogue item, where there is one.

    Attributes
    ----------
    vectors : float32 array, shape (n_items, d)
        Zero rows for items without a vector.
    known : bool array, shape (n_items,)
    report : SkipReport
    computed : int or None
        Images embedded by the call that made this (the others came from a feature
        cache); None for vectors read from a file.
    """

    vectors: np.ndarray
    known: np.ndarray
    report: SkipReport
    computed: int | None = None


def resolve_shared_dir(shared: str | os.PathLike[str] | None = None) -> Path:
    """The shared data and models directory: ``shared`` if given, else env RECSVC_SHARED."""
    value = shared if shared is not None else os.environ.get("RECSVC_SHARED")
    if not value:
        raise ConfigError("no shared directory: pass one or set RECSVC_SHARED")
    return Path(value)


def save_item_vectors(path: str | os.PathLike[str], item_ids: Any, vectors: np.ndarray) -> None:
    """Write item vectors as ``.npz`` (``item_ids`` str (m,), ``vectors`` float32 (m, d))."""
    np.savez(
        path, item_ids=np.asarray(item_ids, dtype=str), vectors=np.asarray(vectors, np.float32)
    )


def load_item_vectors(
    path: str | os.PathLike[str], item_index: dict[str, int], n_items: int
) -> ItemVectors:
    """Read an items-to-vectors file (``.npz`` or ``.csv``, see the module doc).

    Parameters
    ----------
    path : path of the file
    item_index : dict str -> int
        External item id to dense index, every index ``< n_items``.
    n_items : int

    Returns
    -------
    ItemVectors
        ``vectors`` of shape (n_items, d). Unknown items, malformed rows, non-finite rows
        and repeats of an item (the first one wins) are skipped and reported.

    Raises
    ------
    DataError
        Missing or unreadable file, unsupported suffix, an ``.npz`` without the expected
        arrays, or not a single usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"item vectors file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ids, rows = _read_npz(path)
    elif suffix == ".csv":
        ids, rows = _read_csv(path)
    else:
        raise DataError(f"{path}: unsupported item vectors format {suffix!r} (use .npz or .csv)")
    report = SkipReport(str(path), read=len(ids))
    dim = next((len(row) for row in rows if row is not None), 0)
    vectors = np.zeros((n_items, dim), dtype=np.float32)
    known = np.zeros(n_items, dtype=bool)
    for line, (item_id, row) in enumerate(zip(ids, rows, strict=True), start=1):
        where = f"row {line} {item_id!r}"
        if row is None:
            report.skip(where, "malformed row")
        elif len(row) != dim:
            report.skip(where, "wrong dimension", f"{len(row)} values, expected {dim}")
        else:
            _place(vectors, known, item_index, item_id, row, report, where)
    return _finish(vectors, known, report)


def _read_npz(path: Path) -> tuple[list[str], list[np.ndarray | None]]:
    """Item ids and rows of an ``.npz`` vectors file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, vectors = data["item_ids"], data["vectors"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not an item vectors .npz ({exc})") from exc
    if ids.ndim != 1 or vectors.ndim != 2 or len(ids) != len(vectors):
        raise DataError(
            f"{path}: item_ids {ids.shape} and vectors {vectors.shape} do not line up "
            "(expected shapes (m,) and (m, d))"
        )
    if ids.dtype.kind not in "US" or vectors.dtype.kind not in "fiu":
        raise DataError(f"{path}: item_ids must be strings and vectors numbers")
    return list(ids.astype(str)), list(vectors.astype(np.float32))


def _read_csv(path: Path) -> tuple[list[str], list[np.ndarray | None]]:
    """Item ids and rows of a CSV vectors file; None for a row that is not numbers."""
    ids: list[str] = []
    rows: list[np.ndarray | None] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for number, fields in enumerate(csv.reader(handle)):
                if not fields or (number == 0 and fields[0].strip() == "item_id"):
                    continue
                ids.append(fields[0].strip())
                try:
                    rows.append(np.array(fields[1:], dtype=np.float32) if fields[1:] else None)
                except ValueError:
                    rows.append(None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read item vectors CSV ({exc})") from exc
    return ids, rows


def _place(
    vectors: np.ndarray,
    known: np.ndarray,
    item_index: dict[str, int],
    item_id: str,
    row: np.ndarray,
    report: SkipReport,
    where: str,
) -> None:
    """Put one item's vector in place, or record why not."""
    index = item_index.get(item_id)
    if index is None:
        report.skip(where, "unknown item")
    elif not 0 <= index < len(known):
        raise DataError(f"item index {index} of {item_id!r} is outside [0, {len(known)})")
    elif known[index]:
        report.skip(where, "duplicate item")
    elif not np.isfinite(row).all():
        report.skip(where, "non-finite values")
    else:
        vectors[index] = row
        known[index] = True
        report.loaded += 1


def _finish(vectors: np.ndarray, known: np.ndarray, report: SkipReport) -> ItemVectors:
    """Log the report; no usable vector at all is an error."""
    if report.loaded == 0:
        raise DataError(f"no usable item vectors in {report.summary()}")
    if report.n_skipped:
        log.warning("%s; e.g. %s", report.summary(), "; ".join(report.examples[:3]))
    return ItemVectors(vectors, known, report)


class MobileNetEmbedder:
    """Image to 1024-d vector with the quantized MobileNet v1 TFLite embedding extractor.

    Parameters
    ----------
    model_path : path, optional
        The ``.tflite`` file; default ``<shared>/`` + ``MODEL_RELATIVE_PATH``.
    shared : path, optional
        The shared directory (default: env ``RECSVC_SHARED``).
    num_threads : int
        TFLite interpreter threads.

    Notes
    -----
    Images are decoded (JPEG, PNG, BMP, GIF first frame) to RGB, resized to the model's
    input size with antialiased bilinear filtering, mapped to MobileNet's [-1, 1] range and
    quantized with the input tensor's scale and zero point (for this model that is the raw
    uint8 pixel). The uint8 output is dequantized. One instance is not thread-safe.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        shared: str | os.PathLike[str] | None = None,
        num_threads: int = 1,
    ) -> None:
        path = Path(model_path) if model_path else resolve_shared_dir(shared) / MODEL_RELATIVE_PATH
        if not path.is_file():
            raise ConfigError(f"image embedding model not found: {path}")
        self._tf = _tensorflow()
        try:
            with warnings.catch_warnings():
                # TF >= 2.20 points to ai_edge_litert; tf.lite still runs this model.
                warnings.filterwarnings(
                    "ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated"
                )
                self._interpreter = self._tf.lite.Interpreter(
                    model_path=str(path), num_threads=num_threads
                )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{path}: not a usable TFLite model ({exc})") from exc
        self.model_path = path
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = tuple(int(s) for s in self._input["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ConfigError(f"{path}: expected input shape (1, h, w, 3), got {shape}")
        #: (height, width) the images are resized to
        self.input_size: tuple[int, int] = (shape[1], shape[2])
        #: length of the output vectors (1024 for MobileNet v1)
        self.dim = int(np.prod(self._output["shape"][1:]))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        #: identifies the model in feature caches: file name and weights checksum
        self.model_id = f"{path.stem}@{digest}"

    def embed_many(self, images: Sequence[bytes]) -> np.ndarray:
        """float32 (n, dim): embeddings of encoded images, one after another."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed_bytes(data) for data in images])

    def decode(self, data: bytes) -> np.ndarray:
        """Decode and resize one image.

        Returns
        -------
        uint8 array, shape (h, w, 3), RGB at the model's input size.

        Raises
        ------
        DataError
            The bytes are not an image TensorFlow can decode.
        """
        tf = self._tf
        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.OpError as exc:
            raise DataError(f"cannot decode image: {exc.message.splitlines()[0]}") from exc
        resized = tf.image.resize(image, self.input_size, method="bilinear", antialias=True)
        return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed one decoded image.

        Parameters
        ----------
        pixels : uint8 array, shape (h, w, 3), at ``input_size``

        Returns
        -------
        float32 array, shape (dim,)
        """
        if pixels.shape != (*self.input_size, 3):
            raise DataError(f"pixels have shape {pixels.shape}, expected {(*self.input_size, 3)}")
        real = pixels.astype(np.float32) / 127.5 - 1.0
        dtype = np.dtype(self._input["dtype"])
        scale, zero_point = self._input["quantization"]
        if dtype.kind == "f":
            model_input = real.astype(dtype)
        elif scale == 0:  # integer input without quantization: raw pixels
            model_input = pixels.astype(dtype)
        else:
            info = np.iinfo(dtype)
            quantized = np.rint(real / scale + zero_point)
            model_input = np.clip(quantized, info.min, info.max).astype(dtype)
        self._interpreter.set_tensor(self._input["index"], model_input[None])
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"]).reshape(-1)
        out_scale, out_zero = self._output["quantization"]
        if output.dtype.kind in "iu" and out_scale != 0:
            return (out_scale * (output.astype(np.float32) - out_zero)).astype(np.float32)
        return output.astype(np.float32)

    def embed_bytes(self, data: bytes) -> np.ndarray:
        """Embed an encoded image; float32 array of shape (dim,)."""
        return self.embed_pixels(self.decode(data))


def embed_image_folder(
    folder: str | os.PathLike[str],
    item_index: dict[str, int],
    embedder: MobileNetEmbedder,
    *,
    n_items: int | None = None,
    progress: bool | None = None,
    cache: FeatureCache | None = None,
) -> ItemVectors:
    """Embed every ``<item_id>.<ext>`` image in a folder.

    Parameters
    ----------
    folder : path
    item_index : dict str -> int
        External item id to dense index.
    embedder : MobileNetEmbedder
        (anything with ``dim``, ``model_id`` and ``embed_bytes``)
    n_items : int, optional
        Catalogue size (default: the largest index + 1).
    progress : bool or None
        tqdm bar (None: only on a terminal).
    cache : FeatureCache, optional
        Vectors are looked up by (``embedder.model_id``, item id, sha256 of the file's
        bytes); only the misses are embedded (and stored).

    Returns
    -------
    ItemVectors
        ``vectors`` of shape (n_items, embedder.dim); ``computed`` counts the images
        embedded in this call. Skipped, with the reason in the report: other file types,
        unknown items, a second image of an item (files are taken in name order),
        unreadable or undecodable files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    if n_items is None:
        n_items = max(item_index.values(), default=-1) + 1
    report = SkipReport(str(folder))
    vectors = np.zeros((n_items, embedder.dim), dtype=np.float32)
    known = np.zeros(n_items, dtype=bool)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    report.read = len(files)
    pending: list[tuple[str, str, np.ndarray]] = []  # new (item, checksum, vector) to cache
    computed = 0
    for path in tqdm(files, desc="embed images", unit="image", disable=_progress_off(progress)):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            report.skip(path.name, "not an image file")
            continue
        item_id = path.stem
        if item_id not in item_index:
            report.skip(path.name, "unknown item")
            continue
        if known[item_index[item_id]]:
            report.skip(path.name, "duplicate item")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.skip(path.name, "unreadable file", str(exc))
            continue
        digest = checksum(data) if cache is not None else ""
        row = cache.get(embedder.model_id, [item_id], [digest])[0] if cache is not None else None
        if row is None:
            try:
                row = embedder.embed_bytes(data)
            except DataError as exc:
                report.skip(path.name, "undecodable image", str(exc))
                continue
            computed += 1
            if cache is not None:
                pending.append((item_id, digest, row))
                if len(pending) >= 256:
                    _flush(cache, embedder.model_id, pending)
        _place(vectors, known, item_index, item_id, row, report, path.name)
    if cache is not None:
        _flush(cache, embedder.model_id, pending)
    result = _finish(vectors, known, report)
    return dataclasses.replace(result, computed=computed)


def _flush(cache: FeatureCache, model: str, pending: list[tuple[str, str, np.ndarray]]) -> None:
    """Store the pending vectors in the cache and empty the list."""
    if pending:
        items, sums, rows = zip(*pending, strict=True)
        cache.put(model, list(items), list(sums), np.stack(rows))
        pending.clear()


def _progress_off(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag (None: show only on a terminal)."""
    return None if progress is None else not progress


def _tensorflow() -> Any:
    """Import TensorFlow on first use: it takes seconds and the server never needs it."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the image embedder needs tensorflow (the 'offline' extra)") from exc
    return tf

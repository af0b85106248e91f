"""Stage checkpoints: what a stopped ``recsvc pipeline --checkpoint DIR`` run keeps.

A paper-scale run takes hours, and a run stopped in its last stage should not start again
from the first. With ``--checkpoint DIR`` each finished stage of the costly ones (item2vec,
the neighbours, the personalized models, and the second stage, whose own first-stage build
keeps the same stages in a subfolder until it is done) is saved under
``DIR/<run key>/<stage>/``: its arrays as ``.npy`` files (nothing pickled; a ``/`` in a
name is a subfolder) and a ``stage.json`` record with its seconds, peak memory, metrics and
the files' SHA-256.

The run key is a hash of what decides the results: the input files (path, size,
modification time), the format, split and engine, every setting and the seed. The same
command started again loads the saved stages instead of running them, and the manifest
lists them under ``resumed``, with the seconds and peak memory they took when they ran. A
different command gets a different folder. The run removes its folder once the bundle is
written.

A stage is saved into a temporary folder and renamed into place, so a run killed while
saving leaves no half stage behind; a saved stage whose files do not match their
checksums is an error that names the folder to delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import sha256_file
from recsvc.exceptions import DataError

RECORD = "stage.json"
#: Bumped when what a stage saves changes, so that an older folder is not read.
FORMAT = 1


@dataclass(frozen=True)
class SavedStage:
    """A stage loaded from its checkpoint."""

    arrays: dict[str, np.ndarray]
    seconds: float
    peak_mib: float
    metrics: dict[str, Any]
    saved_at: str


def run_key(identity: Mapping[str, Any]) -> str:
    """A short hash of a run's identity (JSON-able values; paths become file identities)."""
    text = json.dumps(_identities(identity), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _identities(value: Any) -> Any:
    """``value`` with each path replaced by (resolved path, size, mtime), recursively."""
    if isinstance(value, Path):
        try:
            stat = value.stat()
        except OSError:
            return {"path": str(value), "missing": True}
        return {"path": str(value.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _identities(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _identities(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_identities(v) for v in value]
    return value


class Checkpoint:
    """The saved stages of one run (one folder under the ``--checkpoint`` root)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.folder = root / key

    def child(self, name: str) -> Checkpoint:
        """The checkpoint of a run inside this one (the second stage's own first-stage
        build), in a subfolder; :meth:`remove` on this one removes it too."""
        return Checkpoint(self.folder, name)

    def done(self) -> list[str]:
        """The stages saved so far."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / RECORD).is_file())

    def load(self, stage: str) -> SavedStage | None:
        """The saved ``stage``, or None when it was not saved.

        Raises
        ------
        DataError
            The stage's folder is damaged: a file missing or not matching its checksum.
        """
        folder = self.folder / stage
        if not (folder / RECORD).is_file():
            return None
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r}, this code reads {FORMAT}")
            arrays = {}
            for name, digest in record["arrays"].items():
                path = folder / f"{name}.npy"
                if sha256_file(path) != digest:
                    raise ValueError(f"{path.name} does not match its checksum")
                arrays[name] = np.load(path, allow_pickle=False)
            return SavedStage(
                arrays,
                float(record["seconds"]),
                float(record["peak_mib"]),
                dict(record["metrics"]),
                str(record["saved_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"checkpoint of stage {stage} in {folder} is damaged ({exc}); delete that "
                "folder to run the stage again"
            ) from None

    def save(
        self,
        stage: str,
        arrays: Mapping[str, np.ndarray],
        seconds: float,
        peak_mib: float,
        metrics: Mapping[str, Any],
    ) -> None:
        """Save a finished stage (replacing an earlier save of it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{stage}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        record = {
            "format": FORMAT,
            "stage": stage,
            "seconds": seconds,
            "peak_mib": peak_mib,
            "metrics": dict(metrics),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        try:
            record["arrays"] = self._write_arrays(tmp, arrays)
            (tmp / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.folder / stage
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    @staticmethod
    def _write_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Each array as ``folder/<name>.npy``; returns their SHA-256 by name."""
        digests = {}
        for name, array in arrays.items():
            parts = name.split("/")
            if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
                raise ValueError(f"checkpoint array name {name!r} is not a relative file name")
            path = folder / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.asarray(array), allow_pickle=False)
            digests[name] = sha256_file(path)
        return digests

    def remove(self) -> None:
        """Delete this run's folder (its results are kept elsewhere now), and the root if
        that leaves it empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # other runs' folders are left
            self.root.rmdir()

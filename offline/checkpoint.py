"""Stage checkpoints: what a stopped ``recsvc pipeline --checkpoint DIR`` run keeps.

A paper-scale run takes hours, and a run stopped in its last stage should not start again
from the first. With ``--checkpoint DIR`` each finished stage of the costly ones (item2vec,
the neighbours, the personalized models, and the second stage, whose own first-stage build
keeps the same stages in a subfolder until it is done) is saved under
``DIR/<run key>/<stage>/``: its arrays as ``.npy`` files (nothing pickled; a ``/`` in a
name is a subfolder) and a ``stage.json`` record with its seconds, peak memory, metrics and
the files' SHA-256.

The run key is a hash of what decides the results: the input files (path, size,
modification time; for a folder, those of every file in it; of ``--shared``, only the
image model, and only when images are embedded), the format, split and engine,
every setting, the seed and the checkpoint format. The same command started again loads the
saved stages instead of running them, and the manifest lists them under ``resumed``, with
the seconds and peak memory they took when they ran. A different command gets a different
folder. A change of code does not: delete the folder to run every stage again. The run
removes its folder once the bundle is written.

A stage is written into a hidden temporary folder, synced to disk and renamed into place,
so a run killed while saving leaves no half stage behind. A saved stage whose files do not
match their checksums is reported, deleted and run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offline.timings import Timings
from recsvc.bundle import sha256_file
from recsvc.exceptions import RecsvcError

RECORD = "stage.json"
#: Bumped when what a stage saves changes; it is part of the run key, so an older folder is
#: left alone rather than read.
CHECKPOINT_FORMAT = 1


class CheckpointDamaged(RecsvcError):
    """A saved stage whose files are missing, unreadable or not what was saved."""


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
    described = {"checkpoint_format": CHECKPOINT_FORMAT, **_identities(identity)}
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _identities(value: Any) -> Any:
    """``value`` with each path replaced by what identifies its contents, recursively."""
    if isinstance(value, Path):
        return _path_identity(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _identities(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _identities(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_identities(v) for v in value]
    return value


def _path_identity(path: Path) -> dict[str, Any]:
    """A file's resolved path, size and modification time; for a folder, a digest of those
    of every file in it (a file written again inside it changes the folder's identity)."""
    try:
        if not path.is_dir():
            stat = path.stat()
            return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(
                f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
        return {"path": str(path.resolve()), "files": digest.hexdigest()}
    except OSError:
        return {"path": str(path), "missing": True}


class Checkpoint:
    """The saved stages of one run (one folder under the ``--checkpoint`` root)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.folder = root / key

    def child(self, name: str) -> Checkpoint:
        """The checkpoint of a run inside this one (the second stage's own first-stage
        build), in a subfolder; :meth:`remove` on this one removes it too."""
        return Checkpoint(self.folder, name)

    def saved_stages(self, nested: bool = False) -> list[str]:
        """The stages saved so far; with ``nested``, those of the runs inside this one
        too, as ``child/stage``."""
        if not self.folder.is_dir():
            return []
        stages, children = [], []
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                continue
            if (path / RECORD).is_file():
                stages.append(path.name)
            elif nested and path.is_dir():
                child = self.child(path.name).saved_stages(nested=True)
                children += [f"{path.name}/{stage}" for stage in child]
        return sorted(stages) + sorted(children)

    def load(self, stage: str) -> SavedStage | None:
        """The saved ``stage``, or None when it was not saved.

        Raises
        ------
        CheckpointDamaged
            A file of the stage is missing, unreadable or does not match its checksum.
        """
        folder = self.folder / stage
        if not (folder / RECORD).is_file():
            return None
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("arrays"), dict):
                raise ValueError(f"{RECORD} is not a stage record")
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
            raise CheckpointDamaged(f"checkpoint of stage {stage} in {folder}: {exc}") from None

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
            "stage": stage,
            "seconds": seconds,
            "peak_mib": peak_mib,
            "metrics": dict(metrics),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        try:
            record["arrays"] = _write_arrays(tmp, arrays)
            _write_synced(tmp / RECORD, json.dumps(record, indent=1).encode("utf-8"))
            _sync_folder(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.discard(stage)
        tmp.rename(self.folder / stage)
        _sync_folder(self.folder)

    def discard(self, stage: str) -> None:
        """Delete a saved stage (nothing if it was not saved)."""
        shutil.rmtree(self.folder / stage, ignore_errors=True)

    def remove(self) -> None:
        """Delete this run's folder (its results are kept elsewhere now), and the root if
        that leaves it empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # other runs' folders are left
            self.root.rmdir()


def _write_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Each array as ``folder/<name>.npy``, synced; returns their SHA-256 by name."""
    digests = {}
    for name, array in arrays.items():
        parts = name.split("/")
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise ValueError(f"checkpoint array name {name!r} is not a relative file name")
        path = folder / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        digests[name] = sha256_file(path)
    return digests


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a folder's entries (new files, a rename) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_stage(checkpoint: Checkpoint | None, stage: str, timings: Timings) -> SavedStage | None:
    """``stage`` from the checkpoint, its figures restored into ``timings``; None when the
    stage must run (no checkpoint, not saved, or damaged: then reported and deleted)."""
    if checkpoint is None:
        return None
    try:
        saved = checkpoint.load(stage)
    except CheckpointDamaged as exc:
        print(f"{exc}; deleted, the stage runs again")
        checkpoint.discard(stage)
        return None
    if saved is not None:
        timings.restore(stage, saved.seconds, saved.peak_mib, saved.saved_at)
    return saved


def save_stage(
    checkpoint: Checkpoint | None,
    stage: str,
    timings: Timings,
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any],
) -> bool:
    """Keep a finished ``stage`` (its arrays and ``metrics``) in the checkpoint, with its
    figures from ``timings``. Returns whether it was saved: a failure to write (a full
    disk) is reported, and the run goes on with the stage's results in memory."""
    if checkpoint is None:
        return False
    try:
        checkpoint.save(stage, arrays, timings.seconds[stage], timings.peak_mib[stage], metrics)
    except OSError as exc:
        print(f"checkpoint: stage {stage} not saved ({exc}); the run goes on without it")
        return False
    return True


def staged(
    checkpoint: Checkpoint | None,
    stage: str,
    timings: Timings,
    run: Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]],
    unfit: Callable[[Mapping[str, np.ndarray]], str | None] = lambda arrays: None,
) -> tuple[Mapping[str, np.ndarray], Mapping[str, Any]]:
    """The arrays and metrics of ``stage``: the checkpoint's when it holds them, else those
    ``run`` returns, timed as the stage and then saved. Saved arrays for which ``unfit``
    gives a reason (they lack something this run needs) are reported, deleted and made
    again."""
    saved = load_stage(checkpoint, stage, timings)
    if saved is not None:
        reason = unfit(saved.arrays)
        if reason is None:
            return saved.arrays, saved.metrics
        assert checkpoint is not None  # (the stage was loaded from it)
        print(f"checkpoint: the saved {stage} {reason}; the stage runs again")
        checkpoint.discard(stage)
        timings.forget(stage)
    with timings.stage(stage):
        arrays, metrics = run()
    save_stage(checkpoint, stage, timings, arrays, metrics)
    return arrays, metrics

"""Scaling curve of the offline pipeline: time and peak memory per stage against log size.

    nice -n 10 python -m bench.scaling --sizes 1M,4M,16M
    nice -n 10 python -m bench.scaling --sizes 1M,4M --engines local,spark

For every size N (events) it writes a synthetic Taobao-format log with
:mod:`offline.data.synthetic` at the paper's ratios (N / 100 users, N * 0.0035 items, items / 200
categories: 200M clicks, 2M users and 700k items scaled down), runs ``recsvc pipeline`` on it
in a child process, and records the manifest's per-stage seconds (``timings``) and peak
resident MiB (``peak_mib``), plus the child's wall time and peak RSS sampled from outside.
A Spark run's scratch folder is ``<workdir>/scratch``, and the peak size of its files,
sampled every 10 s, is ``scratch_peak_mib``: the local disk a run of that size needs.

Training runs a bounded budget so that its cost grows with the data only through one pass:
``--param`` defaults to one epoch of item2vec and of each personalized model, larger
batches and 256 sampled negatives (see ``BUDGET``); give ``--param`` to override
(repeatable).

``--engines local,spark`` runs each size with both engines (``recsvc pipeline --engine``,
Spark in local mode on every core), one after the other on the same log; the peak memory
includes the Spark JVM, a child of the pipeline.

Each size and engine appends a JSON line to ``<workdir>/results.jsonl``; the end prints a
Markdown table. Logs are kept (``--keep-data`` keeps the CSV and bundle too) under ``--workdir``.

The same command run again goes on where it stopped: a size and engine already in
``results.jsonl`` with the same ``--param`` is not run again (its line is reused; delete
the file to measure again), and the pipeline runs with ``--checkpoint
<workdir>/checkpoints``, so a size stopped midway (the 64M runs take hours) loads the
stages it finished. Its JSON line names them (``resumed``; their seconds and peaks are the
earlier run's). Saving a stage adds to the wall time, not to any stage's seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from offline.data.synthetic import SyntheticSpec, default_sizes, write_log
from offline.peak_memory import MIB, rss_bytes
from offline.spark.session import folder_bytes
from recsvc.bundle import load_bundle
from recsvc.exceptions import RecsvcError

#: Training budget of the curve: one pass over the data, large batches, and 256 shared
#: sampled negatives (not 1024) per personalized batch.
BUDGET = (
    "item2vec.epochs=1",
    "item2vec.batch_size=8192",
    "personalized.epochs=1",
    "personalized.batch_size=4096",
    "personalized.negatives=256",
)
SUFFIXES = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
#: RSS samples between two samples of the scratch folder's size (every 10 s at 0.2 s).
SCRATCH_EVERY = 50


def parse_size(text: str) -> int:
    """``"16M"`` -> 16000000; plain integers too."""
    text = text.strip().upper()
    factor = SUFFIXES.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in SUFFIXES else text
    try:
        value = int(float(digits) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 250K)") from None
    if value < 1000:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1000 events")
    return value


def _sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def label(events: int) -> str:
    for suffix, factor in reversed(SUFFIXES.items()):
        if events % factor == 0 and events >= factor:
            return f"{events // factor}{suffix}"
    return str(events)


def run_pipeline(
    csv: Path,
    out: Path,
    params: Sequence[str],
    log: Path,
    interval: float = 0.2,
    engine: str = "local",
    checkpoint: Path | None = None,
    scratch: Path | None = None,
) -> dict[str, Any]:
    """``recsvc pipeline`` on ``csv`` in a child process; wall seconds and peak RSS MiB.
    With ``checkpoint`` its costly stages are kept there, and a rerun resumes from them.
    With ``scratch`` (for ``--engine spark``), Spark's scratch folder goes there, and the
    peak MiB of its files is sampled every ``SCRATCH_EVERY`` RSS samples.

    Raises
    ------
    RecsvcError
        The pipeline exited with an error (its log says why).
    """
    command = [sys.executable, "-m", "recsvc.cli", "pipeline", "--format", "taobao"]
    command += ["--events", str(csv), "--out", str(out), "--engine", engine]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    for param in params:
        command += ["--param", param]
    env = dict(os.environ)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        env["RECSVC_SPARK_SCRATCH"] = str(scratch)
    started = time.perf_counter()
    peak = scratch_peak = samples = 0
    with log.open("a") as handle:  # a resumed run keeps the log of the one it resumes
        handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        handle.flush()
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        process = psutil.Process(child.pid)
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, rss_bytes(process))
            if scratch is not None and samples % SCRATCH_EVERY == 0:
                scratch_peak = max(scratch_peak, folder_bytes(scratch))
            samples += 1
            time.sleep(interval)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RecsvcError(f"pipeline exited with {child.returncode}; see {log}")
    run = {"wall_s": round(wall, 1), "peak_mib": round(peak / MIB, 1), "command": command}
    if scratch is not None:
        run["scratch_peak_mib"] = round(scratch_peak / MIB, 1)
    return run


def recorded(path: Path, params: Sequence[str]) -> dict[tuple[int, str], dict[str, Any]]:
    """The results already in ``path`` (a ``results.jsonl``) measured with ``params``, by
    (events, engine); the last line of each wins. Lines that do not parse are skipped."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            result = json.loads(line)
            key = (int(result["events"]), str(result.get("engine", "local")))
        except (ValueError, KeyError, TypeError):
            continue
        if result.get("params") == list(params):
            found[key] = result
    return found


def bench_size(
    events: int,
    workdir: Path,
    params: Sequence[str],
    seed: int,
    keep: bool,
    engines: Sequence[str] = ("local",),
) -> Iterator[dict[str, Any]]:
    """Generate the log of ``events`` events, run the pipeline with each engine, and yield
    the figures of each run as it ends."""
    if not engines:
        return
    name = label(events)
    sizes = default_sizes(events)
    spec = SyntheticSpec(events=events, seed=seed, **sizes)
    csv = workdir / f"synthetic_{name}.csv"
    started = time.perf_counter()
    if not csv.is_file():
        write_log(spec, csv, progress=False)
    generate_s = time.perf_counter() - started
    for engine in engines:
        tag = name if engine == "local" else f"{name}_{engine}"
        bundles = workdir / "bundles" / tag
        log = workdir / f"pipeline_{tag}.log"
        checkpoint = workdir / "checkpoints"
        scratch = workdir / "scratch" if engine == "spark" else None
        run = run_pipeline(
            csv, bundles, params, log, engine=engine, checkpoint=checkpoint, scratch=scratch
        )
        bundle = load_bundle(bundles, verify=False)
        on_disk = sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file())
        yield {
            "events": events,
            "engine": engine,
            **sizes,
            "items_in_bundle": bundle.n_items,
            "csv_mib": round(csv.stat().st_size / MIB, 1),
            "generate_s": round(generate_s, 1),
            "stage_s": bundle.manifest["timings"],
            "stage_peak_mib": bundle.manifest.get("peak_mib", {}),
            # Stages an earlier, stopped run of the same command ran (their figures are in
            # stage_s); the wall time and peak RSS below are this run's alone.
            "resumed": bundle.manifest.get("resumed", {}),
            "pipeline_wall_s": run["wall_s"],
            "pipeline_peak_mib": run["peak_mib"],
            # Spark's scratch files at their largest (shuffles, the driver's Parquet).
            **({"scratch_peak_mib": run["scratch_peak_mib"]} if scratch is not None else {}),
            "bundle_mib": round(on_disk / MIB, 1),
            "params": list(params),
        }
        if not keep:
            shutil.rmtree(bundles, ignore_errors=True)
    if not keep:
        csv.unlink(missing_ok=True)


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """Per-stage seconds and peak MiB, one column pair per size."""
    names = [
        label(r["events"]) + ("" if r.get("engine", "local") == "local" else f" {r['engine']}")
        for r in results
    ]
    lines = [
        "| | " + " | ".join(f"{n} s | {n} MiB" for n in names) + " |",
        "|---" + "|---:|---:" * len(results) + "|",
    ]
    for key in ("users", "items_in_bundle", "csv_mib"):
        lines.append(f"| {key} | " + " | ".join(f"{r[key]} | " for r in results) + " |")
    stages = list(dict.fromkeys(s for r in results for s in r["stage_s"]))
    for stage in stages:
        cells = [
            f"{r['stage_s'].get(stage, '')} | {r['stage_peak_mib'].get(stage, '')}" for r in results
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"{r['pipeline_wall_s']} | {r['pipeline_peak_mib']}" for r in results]
    lines.append("| whole pipeline (wall, peak RSS) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=_sizes, default=[1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--workdir", type=Path, default=Path(".local/scaling"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help=f"pipeline parameter, repeatable (default: {' '.join(BUDGET)})",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the CSVs and bundles (default: delete)"
    )
    parser.add_argument(
        "--engines",
        type=lambda text: [e.strip() for e in text.split(",") if e.strip()],
        default=["local"],
        help="pipeline engines to run each size with: local, spark or local,spark (default local)",
    )
    args = parser.parse_args(argv)
    params = args.param if args.param is not None else list(BUDGET)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    results_file = args.workdir / "results.jsonl"
    done = recorded(results_file, params)
    try:
        for events in tqdm(args.sizes, desc="sizes", unit="size"):
            engines = [e for e in args.engines if (events, e) not in done]
            for engine in args.engines:
                if engine not in engines:
                    print(f"{label(events)} {engine}: already in {results_file}", flush=True)
                    results.append(done[events, engine])
            for result in bench_size(
                events, args.workdir, params, args.seed, args.keep_data, engines
            ):
                results.append(result)
                line = json.dumps(result)
                print(line, flush=True)
                with results_file.open("a") as handle:
                    handle.write(line + "\n")
    except RecsvcError as exc:
        print(f"bench.scaling: error: {exc}", file=sys.stderr)
        return 1
    if results:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

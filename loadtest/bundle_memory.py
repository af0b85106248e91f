"""Server memory with a paper-scale bundle: 700,000 items x 200 candidates.

    python -m loadtest.bundle_memory --items 700000

Writes a synthetic bundle of that shape with the project's bundle writer
(:func:`recsvc.bundle.write_bundle`): the arrays ``recsvc pipeline`` writes, with the dims of
the Taobao bundle (64-d item2vec and personalized embeddings, int32 pools, uint8 source
flags, float32 pool scores of two sources). Then starts ``recsvc serve`` on it (free gRPC
and metrics ports, Redis at ``--redis-url``), waits for SERVING, sends Recommend calls
(half of them for a user with a session written to Redis, so the personalized model runs),
and prints the server's RSS, PSS and USS (psutil ``memory_full_info``; on Linux also RSS
split into heap ``anon`` and mapped-file ``file`` pages) after start-up and after the calls,
the start-up seconds and the bundle's size on disk, as a JSON line. ``--bundle`` measures
an existing bundle instead (``--keep`` keeps the written one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from loadtest.processes import stop_process
from recsvc.bundle import load_bundle, write_bundle
from recsvc.client import recommend, wait_serving
from recsvc.events import Event
from recsvc.exceptions import RecsvcError
from recsvc.sessions import KEY_PREFIX, RedisSessionStore

MIB = 1 << 20
WINDOW = 8


def bundle_arrays(
    n_items: int, pool: int = 200, dim: int = 64, categories: int = 3500, seed: int = 0
) -> dict[str, np.ndarray]:
    """Arrays of a pipeline-shaped bundle with random contents.

    Returns
    -------
    name -> array: ids ``(n_items,)``, pools and pool sources/scores ``(n_items, pool)``,
    embeddings ``(n_items, dim)``, position weights ``(8,)``, a small eval set.
    """
    rng = np.random.default_rng(seed)
    item_ids = np.arange(1, n_items + 1).astype(str)
    pools = rng.integers(0, n_items, (n_items, pool), dtype=np.int32)
    arrays: dict[str, np.ndarray] = {
        "item_ids": item_ids,
        "item_category": rng.integers(0, categories, n_items, dtype=np.int32),
        "category_names": np.arange(1, categories + 1).astype(str),
        "item_first_seen": np.full(n_items, 1.5e9),
        "item_popularity": rng.zipf(2.0, n_items).astype(np.int64),
        "item_fit_events": rng.zipf(2.0, n_items).astype(np.int64),
        "pools": pools,
        "pool_sources": rng.integers(1, 4, (n_items, pool), dtype=np.uint8),
        "embeddings/item2vec": _embeddings(rng, n_items, dim),
        "embeddings/item2vec_known": np.ones(n_items, dtype=bool),
    }
    for source in ("itemcf", "item2vec"):
        arrays[f"pool_scores/{source}"] = rng.random((n_items, pool), dtype=np.float32)
    for model in ("personalized", "personalized_cart"):
        prefix = f"models/{model}"
        arrays[f"{prefix}/input_embeddings"] = _embeddings(rng, n_items, dim)
        arrays[f"{prefix}/output_embeddings"] = _embeddings(rng, n_items, dim)
        arrays[f"{prefix}/position_weights"] = np.ones(WINDOW, dtype=np.float32)
        arrays[f"{prefix}/known"] = np.ones(n_items, dtype=bool)
        arrays[f"{prefix}/scorable"] = np.ones(n_items, dtype=bool)
    n_eval = min(n_items, 1000)
    arrays.update(
        {
            "eval/users": np.arange(n_eval, dtype=np.int32),
            "eval/items": rng.integers(0, n_items, n_eval, dtype=np.int32),
            "eval/types": np.zeros(n_eval, dtype=np.int8),
            "eval/ts": np.full(n_eval, 1.5e9),
            "eval/is_holdout": np.ones(n_eval, dtype=bool),
        }
    )
    return arrays


def _embeddings(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.1)


def write_synthetic_bundle(root: Path, n_items: int, pool: int, dim: int, seed: int) -> Path:
    """Write the bundle under ``root``; returns its version directory."""
    arrays = bundle_arrays(n_items, pool, dim, seed=seed)
    manifest = {
        "source": {"format": "synthetic", "generator": "loadtest.bundle_memory"},
        "parameters": {"items": n_items, "pool_size": pool, "dim": dim, "seed": seed},
    }
    return write_bundle(root, arrays, manifest)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory(process: psutil.Process) -> dict[str, float]:
    """RSS, PSS and USS of ``process`` in MiB, and (Linux) the part of RSS that is heap
    (``anon``) against pages of mapped files such as the bundle (``file``)."""
    info = process.memory_full_info()
    out = {name: round(getattr(info, name) / MIB, 1) for name in ("rss", "pss", "uss")}
    rollup = Path(f"/proc/{process.pid}/smaps_rollup")
    if rollup.is_file():
        fields = {}
        for line in rollup.read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024 if rest.split() else 0
        out["anon"] = round(fields.get("Anonymous", 0) / MIB, 1)
        out["file"] = round((fields.get("Rss", 0) - fields.get("Anonymous", 0)) / MIB, 1)
    return out


async def _write_session(redis_url: str, user: str, items: list[str]) -> None:
    store = RedisSessionStore(redis_url, length=20)
    now = time.time()
    events = [
        Event(uuid.uuid4().hex, user, item, "click", now - len(items) + i)
        for i, item in enumerate(items)
    ]
    try:
        await store.append(events)
    finally:
        await store.aclose()


async def _delete_session(redis_url: str, user: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        await client.delete(KEY_PREFIX + user)
    finally:
        await client.aclose()


def measure(version: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start ``recsvc serve`` on ``version``, call it, and read its memory."""
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "recsvc.cli", "serve", "--bundle", str(version)]
    command += ["--port", str(port), "--metrics-port", str(metrics_port)]
    command += ["--redis-url", args.redis_url, "--watch-interval-s", "0", "--log-level", "warning"]
    log = (args.workdir / "serve.log").open("w")
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    user = f"bundle-memory-{uuid.uuid4().hex[:8]}"
    try:
        if not wait_serving(target, args.startup_timeout):
            raise RecsvcError(f"server not SERVING after {args.startup_timeout}s; see {log.name}")
        startup_s = time.perf_counter() - started
        process = psutil.Process(server.pid)
        idle = memory(process)
        item_ids = np.asarray(load_bundle(version, verify=False)["item_ids"])
        rng = np.random.default_rng(args.seed)
        picks = item_ids[rng.integers(0, len(item_ids), args.calls + WINDOW)].astype(str)
        asyncio.run(_write_session(args.redis_url, user, picks[:WINDOW].tolist()))
        personalized = 0
        for i, item in enumerate(picks[WINDOW:]):
            response = recommend(target, user if i % 2 else "", str(item), k=30, timeout_s=5.0)
            personalized += bool(response.personalized)
        after = memory(process)
    except grpc.RpcError as exc:
        raise RecsvcError(f"Recommend failed: {exc.code().name}: {exc.details()}") from exc
    finally:
        stop_process(server, 30)
        log.close()
        asyncio.run(_delete_session(args.redis_url, user))
    return {
        "startup_s": round(startup_s, 1),
        "idle_mib": idle,
        "after_calls_mib": after,
        "calls": args.calls,
        "personalized_answers": personalized,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bundle_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--items", type=int, default=700_000, help="items (default 700000)")
    parser.add_argument("--pool", type=int, default=200, help="candidates per item (200)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dims (64, as Taobao)")
    parser.add_argument("--calls", type=int, default=20, help="Recommend calls (default 20)")
    parser.add_argument("--workdir", type=Path, default=Path(".local/bundle_memory"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the bundle afterwards")
    parser.add_argument(
        "--bundle", type=Path, help="measure this existing bundle instead of writing one"
    )
    args = parser.parse_args(argv)
    if args.items < 1 or args.pool < 1 or args.dim < 1 or args.calls < 1:
        parser.error("--items, --pool, --dim and --calls must be >= 1")
    root = args.workdir / "bundle"
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        if args.bundle is not None:
            version = load_bundle(args.bundle, verify=False).path
        else:
            started = time.perf_counter()
            version = write_synthetic_bundle(root, args.items, args.pool, args.dim, args.seed)
            print(f"bundle {version} written in {time.perf_counter() - started:.0f}s")
        on_disk = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
        shape = load_bundle(version, verify=False)["models/personalized/input_embeddings"].shape
        figures = measure(version, args)
    except (RecsvcError, OSError) as exc:
        print(f"bundle_memory: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep and args.bundle is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "items": shape[0],
        "pool": args.pool,
        "dim": shape[1],
        "bundle_mib": round(on_disk / MIB, 1),
        **figures,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

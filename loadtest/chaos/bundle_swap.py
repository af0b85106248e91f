"""``bundle-swap``: a tampered and a truncated bundle published under a stream of requests.

The version of ``--bundle`` in service (its ``current``) is copied into a bundle root of the
run's own under ``--workdir`` (removed at the end; the original is never touched), and a
real ``recsvc serve`` of that root (``--watch-interval-s`` ``--swap-watch-s``, metrics on;
``--redis-url`` only read, for shoppers who have no session) answers ``--swap-clients``
client threads that call Recommend without pause. Four versions are then published in turn,
each as a writer does (built in a hidden directory, renamed into place, ``current``
switched by an atomic rename), each a copy of the first (files hard-linked; a changed file
is written anew) with a version of its own in its manifest:

1. ``good-1``, unchanged: the watch must take it;
2. ``tampered``: the first float32 array with one bit flipped (a value still finite and
   plausible), the manifest kept: only its sha256 can tell;
3. ``truncated``: ``pools.npy`` cut to half its data, its sha256 in the manifest recomputed
   for the cut file so that the checksum cannot be what catches it: the load must;
4. ``good-2``, unchanged again: the watch must take it.

Each bad version must be refused twice, when the watch finds it and again on a SIGHUP
(which reloads even a path that failed), with the version before it still answering.
Figures: ``calls`` and ``failed_calls`` of the stream; ``versions_served``, the versions
the stream's replies came from, in the order they first appeared (by label: ``base`` is
the copied one); ``publishes``, for each, whether it was taken and the version in service
once the server was done with it (a fresh call's answer), the refusals it drew, and how
long each load took to be counted (``load_s``: the watch's, then the SIGHUP's);
``p50_ms``, ``p99_ms`` and ``max_ms``, the stream's latencies over the whole run;
``swaps_taken`` and ``swaps_refused`` (the server's ``recsvc_bundle_swaps_total``) and
``refusals_logged`` (its "bundle reload failed" log lines, whose errors ``refusal_errors``
lists). It fails on any failed call, a bad version served or left in service, a good one
not taken, or a refusal missing from the counter or the log.

    python -m loadtest.chaos --scenario bundle-swap
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.chaos.common import serve, wait
from loadtest.ingest_bench import free_port
from recsvc.bundle import CURRENT, MANIFEST, resolve, sha256_file
from recsvc.client import popular_items
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

#: What each publish changes in its copy (None: nothing, a good version).
Change = Callable[[Path, dict[str, Any]], None] | None
CALL_TIMEOUT_S = 5.0
#: Most calls one client thread makes (it stops sooner, when the publishes are done).
MAX_CALLS_PER_CLIENT = 2_000_000
#: Refusals each bad version must draw: when the watch finds it, and on SIGHUP.
REFUSALS_PER_BAD = 2
#: How the server's log says it refused a bundle (recsvc.reloader).
RELOAD_FAILED = "bundle reload failed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--swap-clients", type=int, default=4, help="client threads calling")
    parser.add_argument(
        "--swap-watch-s", type=float, default=0.5, help="the server's --watch-interval-s"
    )
    parser.add_argument(
        "--swap-settle-s",
        type=float,
        default=2.0,
        help="how long the calls go on after each publish is taken or refused",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.swap_clients < 1 or args.swap_watch_s <= 0 or args.swap_settle_s < 0:
        return "--swap-clients must be >= 1, --swap-watch-s > 0 and --swap-settle-s >= 0"
    return None


def data_offset(path: Path) -> int:
    """Where the array's bytes start in an .npy file (after its header)."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)
        return handle.tell()


def rewrite(path: Path, data: bytes) -> None:
    """Write ``path`` anew: it may be a hard link to the base version's file."""
    path.unlink()
    path.write_bytes(data)


def tamper(directory: Path, manifest: dict[str, Any]) -> None:
    """Flip the lowest bit of the first value of the first float32 array: still finite,
    so that only the checksum the manifest keeps for it can tell."""
    name = next(n for n, meta in sorted(manifest["files"].items()) if meta["dtype"] == "<f4")
    path = directory / name
    data = bytearray(path.read_bytes())
    data[data_offset(path)] ^= 1  # little-endian: the mantissa's lowest byte
    rewrite(path, bytes(data))


def truncate(directory: Path, manifest: dict[str, Any]) -> None:
    """Cut ``pools.npy`` to half its data, and give the manifest the cut file's sha256."""
    path = directory / "pools.npy"
    data = path.read_bytes()
    start = data_offset(path)
    rewrite(path, data[: start + (len(data) - start) // 2])
    manifest["files"]["pools.npy"]["sha256"] = sha256_file(path)


#: What is published, in turn: label -> change.
PUBLISHES: list[tuple[str, Change]] = [
    ("good-1", None),
    ("tampered", tamper),
    ("truncated", truncate),
    ("good-2", None),
]


def publish(root: Path, base: Path, change: Change) -> str:
    """A copy of the version ``base`` with a version of its own (and ``change`` made),
    published as ``write_bundle`` does: renamed into place, then ``current`` switched."""
    version = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    hidden = root / f".tmp-{version}"
    shutil.copytree(base, hidden, copy_function=os.link)
    manifest = json.loads((hidden / MANIFEST).read_text())
    manifest["version"] = version
    if change is not None:
        change(hidden, manifest)
    rewrite(hidden / MANIFEST, json.dumps(manifest, indent=2).encode())
    hidden.rename(root / version)
    link = root / f".{CURRENT}-{version}"
    link.symlink_to(version)
    link.replace(root / CURRENT)
    return version


class Stream:
    """Client threads calling Recommend without pause, each reply's version recorded."""

    def __init__(self, target: str, requests: list[pb.RecommendRequest], clients: int) -> None:
        self.versions: list[tuple[float, str]] = []  # (sent at, version of the reply)
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._calls, args=(target, requests[n::clients]))
            for n in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _calls(self, target: str, requests: list[pb.RecommendRequest]) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for n in range(MAX_CALLS_PER_CLIENT):
                if self._stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    reply = stub.Recommend(requests[n % len(requests)], timeout=CALL_TIMEOUT_S)
                    self.versions.append((sent, reply.bundle_version))
                    self.latencies_ms.append((time.monotonic() - sent) * 1000)
                except grpc.RpcError as exc:
                    self.errors.append(exc.code().name)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT_S * 2)


def swaps(metrics_url: str) -> tuple[dict[str, float], str | None]:
    """The server's bundle loads by result, and the version its metrics say it serves."""
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {"swapped": 0.0, "failed": 0.0}
    serving = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "recsvc_bundle_swaps_total":
                counts[sample.labels["result"]] = sample.value
            elif sample.name == "recsvc_bundle_info" and sample.value == 1:
                serving = sample.labels["version"]
    return counts, serving


def in_service(target: str, request: pb.RecommendRequest) -> str:
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.RecommenderStub(channel).Recommend(request, timeout=CALL_TIMEOUT_S)
        return str(reply.bundle_version)


def waited(check: Callable[[], bool], timeout_s: float, what: str) -> float | None:
    """Seconds until ``check()`` came true, or None if it did not within ``timeout_s``."""
    try:
        return round(wait(check, timeout_s, what), 2)
    except SystemExit:
        return None


def refusal_errors(log: Path) -> list[str]:
    """The errors of the server's "bundle reload failed" lines (JSON), without the path."""
    lines = [json.loads(line) for line in log.read_text(errors="replace").splitlines()
             if line.startswith("{") and RELOAD_FAILED in line]  # fmt: skip
    return [str(entry.get("error", "")).split(": ", 1)[-1] for entry in lines
            if entry.get("msg", "").startswith(RELOAD_FAILED)]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"chaos-{uuid.uuid4().hex[:8]}"
    workdir = Path(args.workdir)
    root = workdir / f"{tag}-bundles"
    source = resolve(args.bundle)
    base = root / source.name
    labels = {base.name: "base"}
    requests = [
        pb.RecommendRequest(user_id=f"{tag}-u{n}", item_id=item)
        for n, item in enumerate(popular_items(str(source), 50))
    ]
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    flags = ("--watch-interval-s", str(args.swap_watch_s), "--metrics-port", str(metrics_port))
    server = stream = None
    published: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        root.mkdir(parents=True)
        shutil.copytree(source, base)  # only the version in service, not the whole root
        (root / CURRENT).symlink_to(base.name)
        bundle_mib = sum(f.stat().st_size for f in base.rglob("*") if f.is_file()) / 2**20
        own = argparse.Namespace(**{**vars(args), "bundle": str(root)})
        server, target = serve(own, args.redis_url, workdir / f"{tag}-serve.log", *flags)
        stream = Stream(target, requests, args.swap_clients)
        replied = stream.versions
        wait(lambda: bool(replied), args.timeout_s, "the first replies")  # base is served
        for label, change in PUBLISHES:
            before, _ = swaps(metrics_url)
            version = publish(root, base, change)
            labels[version] = label

            def done(b: dict[str, float] = before, at_least: int = 1) -> bool:
                now, _ = swaps(metrics_url)
                return sum(now.values()) - sum(b.values()) >= at_least

            loads_s = [waited(done, args.timeout_s, f"the server loading {label}")]
            if change is not None:  # a bad one: refused again when a SIGHUP forces a reload
                server.proc.send_signal(signal.SIGHUP)
                loads_s.append(waited(lambda: done(at_least=2), args.timeout_s, "SIGHUP"))
            time.sleep(args.swap_settle_s)
            after, serving = swaps(metrics_url)
            now_serving = in_service(target, requests[0])
            published.append({
                "publish": label,
                "version": version,
                "load_s": loads_s,
                "taken": now_serving == version,
                "in_service": labels.get(now_serving, now_serving),
                "metrics_in_service": labels.get(serving or "", serving),
                "refusals": int(after["failed"] - before["failed"]),
            })  # fmt: skip
        stream.stop()
        final, _ = swaps(metrics_url)
    finally:
        if stream is not None:
            stream.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    replies = sorted(stream.versions)
    served_versions = Counter(labels.get(version, version) for _, version in replies)
    first_seen = dict.fromkeys(labels.get(version, version) for _, version in replies)
    refusals = refusal_errors(workdir / f"{tag}-serve.log")
    return {
        "scenario": "bundle-swap",
        "bundle_mib": round(bundle_mib, 1),
        "clients": args.swap_clients,
        "calls": len(replies) + len(stream.errors),
        "failed_calls": len(stream.errors),
        "errors": dict(Counter(stream.errors)),
        "versions_served": list(first_seen),
        "calls_by_version": dict(served_versions),
        **latency_figures(stream.latencies_ms),
        "publishes": published,
        "swaps_taken": int(final["swapped"]),
        "swaps_refused": int(final["failed"]),
        "refusals_logged": len(refusals),
        "refusal_errors": list(dict.fromkeys(refusals)),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def latency_figures(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50, p99 and the slowest of the answered calls (None when none was answered)."""
    if not latencies_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
        "max_ms": round(max(latencies_ms), 1),
    }


def failures(figures: dict[str, Any]) -> list[str]:
    found = []
    if figures["failed_calls"] or not figures["calls"]:
        found.append(f"calls: {figures['failed_calls']} of {figures['calls']} failed")
    good = [p for p in figures["publishes"] if p["publish"].startswith("good")]
    bad = [p for p in figures["publishes"] if not p["publish"].startswith("good")]
    before = "base"
    for publish in figures["publishes"]:
        label = publish["publish"]
        expected = label if publish in good else before
        if publish["in_service"] != expected or publish["metrics_in_service"] != expected:
            found.append(f"after {label}: {publish['in_service']} in service, not {expected}")
        if publish in bad and publish["refusals"] != REFUSALS_PER_BAD:
            found.append(f"{label}: refused {publish['refusals']} times, not {REFUSALS_PER_BAD}")
        before = expected
    served_bad = [p["publish"] for p in bad if p["publish"] in figures["versions_served"]]
    found += [f"{label} served" for label in served_bad]
    found += [f"{p['publish']} never served" for p in good
              if p["publish"] not in figures["versions_served"]]  # fmt: skip
    refusals = REFUSALS_PER_BAD * len(bad)
    if figures["swaps_taken"] != len(good) or figures["swaps_refused"] != refusals:
        found.append(f"swaps: {figures['swaps_taken']} taken, {figures['swaps_refused']} refused")
    if figures["refusals_logged"] != figures["swaps_refused"]:
        found.append(f"refusals_logged: {figures['refusals_logged']}")
    return found

"""``grpc-fuzz``: fuzzed calls, typed and raw, to a real server; none may get INTERNAL or UNKNOWN.

A real ``recsvc serve`` of ``--bundle`` (live co-visits on; sessions of a few shoppers, some
with odd ids, written first to ``--redis-url``, emptied at the end) gets ``--fuzz-calls``
calls over real gRPC, one at a time, in a shuffled order. They are drawn with hypothesis
from the strategies tests/unit/test_server_fuzz.py also uses
(:mod:`loadtest.chaos.fuzz_requests`), seeded by ``--seed``: the same flags give the same
calls. Kinds (``calls``, and ``statuses``: each kind's count of each status code):

- ``typed``: ``RecommendRequest`` messages, half the bundle can answer (its popular items,
  the shoppers, k up to the pool size), half adversarial: ids and categories empty, of any
  character (NUL, control characters, non-ASCII) or past the length limit up to a
  megabyte, k past the pool size up to 2^32 - 1 (the request has no enum field);
- ``raw``: bytes through a raw ``unary_unary`` method: arbitrary bytes; serializations with
  bytes added or cut off; strings of invalid UTF-8; and mutated serializations: bits
  flipped, wrong wire types, length prefixes up to 2^64 - 1, varints past ten bytes, a
  negative k (its 10-byte varint), ``exclude_seen`` of 2 and more, unknown fields, field
  number 0, groups nested too deep; and a request past the 4 MiB limit;
- ``health``: the health service's ``Check`` and ``Watch`` (its first reply, then
  cancelled), typed (any service name) and raw;
- ``reflection``: ``ServerReflectionInfo`` streams of one to three requests, typed (every
  kind of request, known and random names) and raw;
- ``unknown_method``: paths no service has (random, unknown methods of the real services,
  the real ones in the wrong case), unary and streaming.

It fails on any INTERNAL or UNKNOWN, fewer calls made than asked, error details over 300
characters (``long_details``), a Recommend answer that does not parse or is longer than
asked (``bad_answers``), an error the server logged (``server_errors_logged``), or a
server that no longer answers a good call and its health check at the end
(``still_serving``). ``personalized`` counts the answers that used a session read from
Redis.

    python -m loadtest.chaos --scenario grpc-fuzz --fuzz-calls 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from hypothesis import strategies as st

from loadtest.chaos.common import empty_database, serve
from loadtest.chaos.fuzz_requests import (
    chars,
    drawn,
    huge_text,
    length_delimited,
    mutated_payloads,
    raw_payloads,
    typed_requests,
)
from recsvc.bundle import load_bundle
from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.live import LiveSettings
from recsvc.sessions import RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb

RECOMMEND = "/recsvc.v1.Recommender/Recommend"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
METHODS = (RECOMMEND, HEALTH_CHECK, HEALTH_WATCH, REFLECTION)
SERVICES = ("recsvc.v1.Recommender", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection")  # fmt: skip
#: Each kind's share of the calls (the rest of the rounding goes to ``typed``).
SHARES = {"typed": 0.45, "raw": 0.35, "health": 0.08, "reflection": 0.08, "unknown_method": 0.04}
#: Paths near the real ones: in another case, cut short, or with a slash added.
ODD_PATHS = [
    *(m.lower() for m in METHODS),
    *(m.upper() for m in METHODS),
    *("/", "//", "", RECOMMEND + "/", RECOMMEND[1:], "/recsvc.v1.Recommender"),
]
NEVER = ("INTERNAL", "UNKNOWN")
SHORT_DETAILS = 300
CALL_TIMEOUT_S = 10.0
#: The server's receive limit (grpc's default): a request past it is RESOURCE_EXHAUSTED.
MAX_MESSAGE = 4 << 20
DEFAULT_K = 30
#: Shoppers with sessions in Redis, by the suffix of their ids (odd characters included).
SHOPPER_SUFFIXES = [*(f"u{n}" for n in range(20)), "\x00é\U0001f600", " \t\n", "ü" * 40]


@dataclass(frozen=True)
class Call:
    """One fuzzed call: ``payloads`` as bytes to ``method``, with the call's ``shape``."""

    kind: str
    method: str
    shape: str  # "unary_unary", "unary_stream" (first reply, then cancelled), "stream_stream"
    payloads: tuple[bytes, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fuzz-calls", type=int, default=10_000, help="fuzzed calls in all")


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.fuzz_calls < len(SHARES) * 10:
        return f"--fuzz-calls must be >= {len(SHARES) * 10}"
    return None


def health_calls() -> st.SearchStrategy[Call]:
    known = st.sampled_from(["", *SERVICES, "recsvc.sessions", "nope"])
    names = st.one_of(known, st.text(chars, max_size=40), huge_text)
    typed = names.map(lambda n: health_pb2.HealthCheckRequest(service=n).SerializeToString())
    raw = st.one_of(
        st.binary(max_size=100), st.binary(max_size=40).map(lambda b: length_delimited(1, b))
    )
    return st.builds(
        lambda method, payload: Call(
            "health",
            method,
            "unary_unary" if method == HEALTH_CHECK else "unary_stream",
            (payload,),
        ),
        st.sampled_from([HEALTH_CHECK, HEALTH_WATCH]),
        typed | raw,
    )


def reflection_calls() -> st.SearchStrategy[Call]:
    symbols = st.one_of(
        st.sampled_from([*SERVICES, "recsvc.v1.RecommendRequest", "recsvc.v1.Source",
                         "recsvc.v1.Recommender.Recommend", "grpc.health.v1.HealthCheckRequest"]),
        st.text(chars, max_size=40),
        huge_text,
    )  # fmt: skip
    files = st.one_of(
        st.sampled_from(["recsvc/v1/recommender.proto", "grpc_health/v1/health.proto"]),
        st.text(chars, max_size=40),
    )
    extension = st.builds(
        rpb.ExtensionRequest,
        containing_type=symbols,
        extension_number=st.integers(-(2**31), 2**31 - 1),
    )
    request = st.one_of(
        st.builds(rpb.ServerReflectionRequest, list_services=st.text(chars, max_size=10)),
        st.builds(rpb.ServerReflectionRequest, file_by_filename=files),
        st.builds(rpb.ServerReflectionRequest, file_containing_symbol=symbols),
        st.builds(rpb.ServerReflectionRequest, file_containing_extension=extension),
        st.builds(rpb.ServerReflectionRequest, all_extension_numbers_of_type=symbols),
        st.builds(rpb.ServerReflectionRequest, host=st.text(chars, max_size=20)),  # none set
    )
    raw = st.one_of(
        st.binary(max_size=100),
        st.builds(length_delimited, st.integers(1, 8), st.binary(max_size=40)),
    )
    messages = st.lists(request.map(rpb.ServerReflectionRequest.SerializeToString) | raw,
                        min_size=1, max_size=3)  # fmt: skip
    return messages.map(lambda ms: Call("reflection", REFLECTION, "stream_stream", tuple(ms)))


def unknown_method_calls() -> st.SearchStrategy[Call]:
    name = st.text(chars, max_size=30)
    paths = st.one_of(
        st.builds("/{}/{}".format, name, name),
        st.builds("/{}/{}".format, st.sampled_from(SERVICES), name),
        st.sampled_from(ODD_PATHS),
        st.text(chars, max_size=60),
    ).filter(lambda path: path not in METHODS)
    shapes = st.sampled_from(["unary_unary", "unary_stream", "stream_stream"])
    return st.builds(
        lambda path, shape, payload: Call("unknown_method", path, shape, (payload,)),
        paths, shapes, st.binary(max_size=40),
    )  # fmt: skip


def planned_calls(
    total: int, items: list[str], users: list[str], categories: list[str], pool_size: int,
    seed: int,
) -> list[Call]:  # fmt: skip
    """``total`` calls of every kind in their shares, shuffled."""
    counts = {kind: int(share * total) for kind, share in SHARES.items()}
    counts["typed"] += total - sum(counts.values())
    typed = typed_requests(items, users, categories, pool_size)
    oversized = Call("raw", RECOMMEND, "unary_unary", (length_delimited(1, b"u" * MAX_MESSAGE),))
    calls = [oversized]
    calls += [
        Call("typed", RECOMMEND, "unary_unary", (r.SerializeToString(),))
        for r in drawn(typed, counts["typed"], seed)
    ]
    raw = raw_payloads(typed) | mutated_payloads(typed)
    calls += [
        Call("raw", RECOMMEND, "unary_unary", (p,)) for p in drawn(raw, counts["raw"] - 1, seed)
    ]
    calls += drawn(health_calls(), counts["health"], seed)
    calls += drawn(reflection_calls(), counts["reflection"], seed)
    calls += drawn(unknown_method_calls(), counts["unknown_method"], seed)
    random.Random(seed).shuffle(calls)
    return calls


def outcome(channel: grpc.Channel, call: Call) -> tuple[str, str, bytes | None]:
    """(status code name, details, the first reply or None) of ``call`` on ``channel``."""
    try:
        if call.shape == "unary_unary":
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(call.method)
            return "OK", "", unary(call.payloads[0], timeout=CALL_TIMEOUT_S)
        if call.shape == "unary_stream":
            streaming: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                call.method
            )
            replies = streaming(call.payloads[0], timeout=CALL_TIMEOUT_S)
            first = next(replies, None)  # Watch goes on until cancelled
            replies.cancel()
            if first is None:  # the stream ended without a reply
                return replies.code().name, replies.details() or "", None
            return "OK", "", first
        both: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(call.method)
        answers = list(both(iter(call.payloads), timeout=CALL_TIMEOUT_S))
        return "OK", "", answers[0] if answers else None
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", None


def answer_kind(call: Call, reply: bytes | None) -> str:
    """What a Recommend reply was: "bad" (it does not parse, or has more items than were
    asked for), "personalized" or "" (not personalized, or no Recommend answer)."""
    if call.method != RECOMMEND or reply is None:
        return ""
    try:
        answer = pb.RecommendResponse.FromString(reply)
        k = pb.RecommendRequest.FromString(call.payloads[0]).k
    except Exception:  # a reply that is not a RecommendResponse
        return "bad"
    if len(answer.items) > (k or DEFAULT_K):
        return "bad"
    return "personalized" if answer.personalized else ""


def write_sessions(url: str, users: list[str], items: list[str], seed: int) -> None:
    """Eight visits each of ``users``, to the bundle's items and one it does not know."""
    rng = np.random.default_rng(seed)
    now = time.time()
    events = [
        Event(f"{user}-{n}", user, str(item), "click" if n % 3 else "cart", now - 60 + n)
        for user in users
        for n, item in enumerate([*rng.choice(items, 7), "not-in-the-bundle"])
    ]
    store = RedisSessionStore(url, live=LiveSettings())

    async def append() -> None:
        try:
            await store.append(events)
        finally:
            await store.aclose()

    asyncio.run(append())


def still_serving(target: str, item: str) -> bool:
    """The server answers a good Recommend and its health check says SERVING."""
    with grpc.insecure_channel(target) as channel:
        request = pb.RecommendRequest(user_id="fuzz-final", item_id=item)
        status, _, reply = outcome(
            channel, Call("final", RECOMMEND, "unary_unary", (request.SerializeToString(),))
        )
        health = outcome(channel, Call("final", HEALTH_CHECK, "unary_unary", (b"",)))
    serving = health[2] is not None and health_pb2.HealthCheckResponse.FromString(health[2]).status
    return (
        status == "OK"
        and reply is not None
        and len(pb.RecommendResponse.FromString(reply).items) > 0
        and serving == health_pb2.HealthCheckResponse.SERVING
    )


def bundle_facts(path: str) -> tuple[list[str], list[str], int]:
    """The bundle's 200 most popular items, their categories' names, and its pool size."""
    bundle = load_bundle(path, verify=False)
    items = popular_items(path, 200)
    index = bundle.item_index()
    names = np.asarray(bundle["category_names"]).astype(str)
    categories = {str(names[bundle["item_category"][index[item]]]) for item in items}
    return items, sorted(categories), int(bundle["pools"].shape[1])


def logged_error(line: str) -> bool:
    """Whether a line of the server's log (JSON lines, ``common.serve``) is an error."""
    return any(f'"level": "{level}"' in line for level in ("error", "critical")) or (
        line.startswith("Traceback")
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = empty_database(args.redis_url)
    tag = f"chaos-{uuid.uuid4().hex[:8]}"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    items, categories, pool_size = bundle_facts(args.bundle)
    users = [f"{tag}-{suffix}" for suffix in SHOPPER_SUFFIXES]
    begun = time.monotonic()
    calls = planned_calls(args.fuzz_calls, items, ["", "nobody", *users], categories, pool_size,
                          args.seed)  # fmt: skip
    generated_s = time.monotonic() - begun
    log = workdir / f"{tag}-serve.log"
    server = None
    statuses: dict[str, Counter[str]] = {kind: Counter() for kind in SHARES}
    long_details = 0
    answers: Counter[str] = Counter()
    try:
        write_sessions(args.redis_url, users, items, args.seed)
        server, target = serve(args, args.redis_url, log)
        started = time.monotonic()
        with grpc.insecure_channel(target) as channel:
            for call in calls:
                status, details, reply = outcome(channel, call)
                statuses[call.kind][status] += 1
                long_details += len(details) >= SHORT_DETAILS
                answers[answer_kind(call, reply)] += 1
        fuzz_s = time.monotonic() - started
        serving = still_serving(target, items[0]) and server.proc.poll() is None
    finally:
        client.flushdb()
        client.close()
        if server is not None:
            server.stop()
    logged = log.read_text(errors="replace").splitlines() if log.exists() else []
    made = sum(sum(c.values()) for c in statuses.values())
    return {
        "scenario": "grpc-fuzz",
        "asked": args.fuzz_calls,
        "calls": made,
        "calls_by_kind": {kind: sum(c.values()) for kind, c in statuses.items()},
        "statuses": {kind: dict(c.most_common()) for kind, c in statuses.items()},
        "long_details": long_details,
        "bad_answers": answers["bad"],
        "personalized": answers["personalized"],
        "server_errors_logged": sum(map(logged_error, logged)),
        "still_serving": serving,
        "generate_s": round(generated_s, 1),
        "calls_per_s": round(made / max(fuzz_s, 1e-9), 1),
        "elapsed_s": round(time.monotonic() - begun, 1),
    }


def failures(figures: dict[str, Any]) -> list[str]:
    found = [
        f"{kind}: {count} {status}"
        for kind, counts in figures["statuses"].items()
        for status, count in counts.items()
        if status in NEVER
    ]
    if figures["calls"] < figures["asked"]:
        found.append(f"calls: {figures['calls']} of {figures['asked']}")
    found += [k for k in ("long_details", "bad_answers", "server_errors_logged") if figures[k]]
    if not figures["still_serving"]:
        found.append("still_serving")
    return found

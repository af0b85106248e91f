"""Two A/B variants in a real ``recsvc serve`` with the real Redis: a stable 50/50 deal of
10,000 users, and the server's metrics split by variant."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
from conftest import free_port, wait_for
from helpers import tiny_bundle_arrays
from test_workers import samples

from recsvc.bundle import write_bundle
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.variants import VariantPicker, load_variants

USERS = 10_000


async def variants_of(port: int, users: list[str], concurrency: int = 64) -> list[str]:
    """The variant that answered each user's Recommend."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        limit = asyncio.Semaphore(concurrency)

        async def ask(user: str) -> str:
            async with limit:
                request = pb.RecommendRequest(user_id=user, item_id="a", k=2)
                return (await stub.Recommend(request, timeout=10)).variant

        return list(await asyncio.gather(*(ask(u) for u in users)))


def test_two_variants_deal_users_stably_and_split_the_metrics(
    redis_url: str, processes, tmp_path: Path
) -> None:
    control, treatment = tmp_path / "control", tmp_path / "treatment"
    write_bundle(control, tiny_bundle_arrays(), {"source": "tests"})
    write_bundle(treatment, tiny_bundle_arrays(weights=(1.0,)), {"source": "tests"})
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"salt": "ab-test", "variants": {
        "control": {"bundle": str(control), "weight": 50},
        "treatment": {"bundle": str(treatment), "weight": 50},
    }}))  # fmt: skip
    port, metrics_port = free_port(), free_port()
    server = processes(
        ["serve", "--variants", str(variants), "--redis-url", redis_url, "--port", str(port),
         "--metrics-port", str(metrics_port), "--watch-interval-s", "0", "--live", "0"],
        tmp_path / "serve.log",
    )  # fmt: skip
    wait_for(lambda: "serving" in server.output(), what="the server")

    users = [f"ab-{n}" for n in range(USERS)]
    dealt = asyncio.run(variants_of(port, users))
    share = dealt.count("control") / USERS
    assert abs(share - 0.5) < 0.02, share
    assert set(dealt) == {"control", "treatment"}
    # The same users again, in another order: each keeps their variant ...
    again = asyncio.run(variants_of(port, users[::-1][:2000]))
    assert again == dealt[::-1][:2000]
    # ... which is the one the file's salt deals them anywhere (another server, a restart).
    picker = VariantPicker(*load_variants(variants, "personalized", True))
    assert [picker.pick(u) for u in users] == dealt

    calls = {
        labels["variant"]: value
        for labels, value in samples(metrics_port, "recsvc_request_latency_seconds_count")
        if labels["outcome"] == "personalized"
    }
    asked = dealt + again
    assert calls == {"control": asked.count("control"), "treatment": asked.count("treatment")}
    serving = {
        labels["variant"] for labels, value in samples(metrics_port, "recsvc_bundle_info") if value
    }
    assert serving == {"control", "treatment"}

"""A/B variants: the settings file, the stable deal of users, and serving side by side."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers import serving, tiny_bundle_arrays

from recsvc.bundle import write_bundle
from recsvc.events import Event
from recsvc.exceptions import ConfigError
from recsvc.sessions import InMemorySessionStore
from recsvc.v1 import recommender_pb2 as pb
from recsvc.variants import Variant, VariantPicker, load_variants


def variant(name: str, weight: float) -> Variant:
    return Variant(name, Path("b"), weight, "personalized", True)


def test_users_keep_their_variant_and_the_shares_follow_the_weights() -> None:
    users = [f"user-{n}" for n in range(10_000)]
    picker = VariantPicker([variant("a", 50), variant("b", 50)], "salt-1")
    dealt = [picker.pick(u) for u in users]
    assert abs(dealt.count("a") / len(users) - 0.5) < 0.02
    again = VariantPicker([variant("a", 50), variant("b", 50)], "salt-1")  # a restart
    assert [again.pick(u) for u in users] == dealt
    other_salt = VariantPicker([variant("a", 50), variant("b", 50)], "salt-2")
    moved = sum(other_salt.pick(u) != d for u, d in zip(users, dealt, strict=True))
    assert 0.4 < moved / len(users) < 0.6  # a new salt deals the users again
    skewed = VariantPicker([variant("a", 9), variant("b", 1)], "salt-1")
    assert abs([skewed.pick(u) for u in users].count("b") / len(users) - 0.1) < 0.02
    assert VariantPicker([variant("only", 3)], "s").pick("anyone") == "only"


def write(path: Path, body: object) -> Path:
    path.write_text(json.dumps(body))
    return path


def test_the_variants_file(tmp_path: Path) -> None:
    path = write(tmp_path / "v.json", {"salt": "x", "variants": {
        "control": {"bundle": "/b1", "weight": 70},
        "first_stage": {"bundle": "/b1", "weight": 30, "second_stage": 0},
        "cart": {"bundle": "/b2", "model": "personalized_cart"},
    }})  # fmt: skip
    variants, salt = load_variants(path, "personalized", True)
    assert salt == "x"
    assert variants == [
        Variant("control", Path("/b1"), 70.0, "personalized", True),
        Variant("first_stage", Path("/b1"), 30.0, "personalized", False),
        Variant("cart", Path("/b2"), 1.0, "personalized_cart", True),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"variants": {}}, "no variants"),
        ({"variants": []}, "expected"),
        ({"variants": {"a": {"weight": 1}}}, "needs a bundle"),
        ({"variants": {"a": {"bundle": "/b", "weight": 0}}}, "positive number"),
        ({"variants": {"a": {"bundle": "/b", "weight": "5"}}}, "positive number"),
        ({"variants": {"a": {"bundle": "/b", "weight": True}}}, "positive number"),
        ({"variants": {"a": {"bundle": "/b", "wieght": 5}}}, "unknown field(s) wieght"),
        ({"variants": {"a b": {"bundle": "/b"}}}, "names are"),
        ({"variants": {"a": {"bundle": "/b", "model": "nope"}}}, "model 'nope'"),
        ({"variants": {"a": {"bundle": "/b", "second_stage": 2}}}, "second_stage"),
        ({"salt": 5, "variants": {"a": {"bundle": "/b"}}}, "salt"),
    ],
)
def test_bad_variants_files_are_clear_errors(tmp_path: Path, body: object, message: str) -> None:
    with pytest.raises(ConfigError, match="--variants") as error:
        load_variants(write(tmp_path / "v.json", body), "personalized", True)
    assert message in str(error.value)


def test_unreadable_variants_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_variants(tmp_path / "none.json", "personalized", True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_variants(tmp_path / "bad.json", "personalized", True)


def test_two_bundles_served_side_by_side_each_swapped_on_its_own(tmp_path: Path) -> None:
    """Variant "session" is the tiny bundle; "item_only" weighs only the viewed item, so
    with the session [b] it ranks a's pool as a alone does: e, c, b, d, not e, b, c, d."""
    session_root = tmp_path / "session"
    write_bundle(session_root, tiny_bundle_arrays(), {"source": "tests"})
    item_only_root = tmp_path / "item_only"
    write_bundle(item_only_root, tiny_bundle_arrays(weights=(1.0,)), {"source": "tests"})
    path = write(tmp_path / "variants.json", {"salt": "t", "variants": {
        "session": {"bundle": str(session_root), "weight": 1},
        "item_only": {"bundle": str(item_only_root), "weight": 1},
    }})  # fmt: skip
    picker = VariantPicker(load_variants(path, "personalized", True)[0], "t")
    users = [f"u{n}" for n in range(40)]

    async def scenario() -> None:
        store = InMemorySessionStore()
        await store.append([Event(f"{u}-1", u, "b", "click", 10.0) for u in users])
        async with serving(session_root, store, variants=str(path)) as (stub, server):
            replies = {
                u: await stub.Recommend(pb.RecommendRequest(user_id=u, item_id="a", k=4))
                for u in users
            }
            for user, reply in replies.items():
                assert reply.variant == picker.pick(user)
                expected = (
                    ["e", "b", "c", "d"] if reply.variant == "session" else ["e", "c", "b", "d"]
                )
                assert [i.item_id for i in reply.items] == expected
            assert {r.variant for r in replies.values()} == {"session", "item_only"}

            named = pb.RecommendRequest(user_id=users[0], item_id="a", k=4, variant="item_only")
            assert (await stub.Recommend(named)).variant == "item_only"
            with pytest.raises(Exception, match="variant 'nope' is not served here"):
                await stub.Recommend(pb.RecommendRequest(item_id="a", k=4, variant="nope"))

            latency = server.metrics.request_latency
            counts = {
                v: latency.labels(outcome="personalized", variant=v)._sum.get() > 0
                for v in ("session", "item_only")
            }
            assert counts == {"session": True, "item_only": True}
            dealt = [r.variant for r in replies.values()]
            for name in ("session", "item_only"):
                observed = server.metrics.registry.get_sample_value(
                    "recsvc_request_latency_seconds_count",
                    {"outcome": "personalized", "variant": name},
                )
                assert observed == dealt.count(name) + (name == "item_only")

            before = {n: r.ranker.version for n, r in server.variants.items()}
            write_bundle(item_only_root, tiny_bundle_arrays(weights=(1.0,)), {"source": "new"})
            assert await server.variants["item_only"].reload()
            assert not await server.variants["session"].reload()
            assert server.variants["session"].ranker.version == before["session"]
            assert server.variants["item_only"].ranker.version != before["item_only"]
            info = {
                labels["variant"]: labels["version"]
                for metric in server.metrics.registry.collect()
                if metric.name == "recsvc_bundle_info"
                for labels, value in ((s.labels, s.value) for s in metric.samples)
                if value == 1
            }
            assert info == {n: r.ranker.version for n, r in server.variants.items()}

    asyncio.run(scenario())


def test_a_server_without_variants_answers_as_default(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (stub, _):
            reply = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=2))
            assert reply.variant == "default"
            named = pb.RecommendRequest(user_id="u", item_id="a", k=2, variant="default")
            assert (await stub.Recommend(named)).variant == "default"

    asyncio.run(scenario())

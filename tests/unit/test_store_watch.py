"""The emptied-store watch: a sudden fall of the session hit ratio, and the way back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import serving

from recsvc.events import Event
from recsvc.server import SESSIONS_HEALTH
from recsvc.sessions import InMemorySessionStore
from recsvc.store_watch import EmptiedStoreWatch
from recsvc.v1 import recommender_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(watch: EmptiedStoreWatch, clock: Clock, reads: int, hits: int) -> None:
    """One window's reads, then the clock past its end."""
    for n in range(reads):
        watch.record(n < hits)
    clock.now += watch.window_s


def test_a_sudden_fall_of_the_hit_ratio_says_emptied_until_it_recovers() -> None:
    clock, changes, ratios = Clock(), [], []
    watch = EmptiedStoreWatch(
        lambda emptied, ratio: changes.append((emptied, ratio)), ratios.append,
        window_s=60, min_reads=100, drop=0.2, clock=clock,
    )  # fmt: skip
    window(watch, clock, 200, 120)  # 0.6
    window(watch, clock, 200, 110)  # 0.55: a normal change
    window(watch, clock, 200, 4)  # 0.02: Redis lost its data
    watch.record(True)  # the next read closes that window
    assert changes == [(True, 0.02)] and watch.emptied
    assert ratios == [0.6, 0.55, 0.02]
    window(watch, clock, 199, 40)  # 0.2 (with the read above): not back yet
    window(watch, clock, 200, 80)  # 0.4, above half of the 0.55 it fell from
    watch.record(True)
    assert changes == [(True, 0.02), (False, 0.4)] and not watch.emptied


def test_quiet_windows_and_a_store_that_was_never_full_say_nothing() -> None:
    clock, changes = Clock(), []
    watch = EmptiedStoreWatch(lambda *change: changes.append(change), clock=clock)
    window(watch, clock, 500, 300)
    window(watch, clock, 20, 0)  # too few reads to compare: the comparison starts again
    window(watch, clock, 500, 0)
    window(watch, clock, 500, 0)  # nothing to fall from
    watch.record(False)
    assert changes == []


@pytest.mark.parametrize("bad", [{"window_s": 0}, {"min_reads": 0}, {"drop": 1.0}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="window_s"):
        EmptiedStoreWatch(lambda *change: None, **bad)  # type: ignore[arg-type]


def test_the_server_says_so_in_a_metric_and_the_sessions_health(tiny_bundle: Path) -> None:
    store = InMemorySessionStore()
    store.append_now([Event(f"e{n}", f"u{n}", "b", "click", 1000.0 + n) for n in range(10)])

    async def scenario() -> None:
        async with serving(tiny_bundle, store) as (stub, server):
            # The server's own callbacks, on a clock of the test's.
            clock = Clock()
            server.service.store_watch = EmptiedStoreWatch(
                server._store_emptied, server.metrics.session_hit_ratio.set,
                window_s=60, min_reads=5, clock=clock,
            )  # fmt: skip
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            health = health_pb2_grpc.HealthStub(channel)
            question = health_pb2.HealthCheckRequest(service=SESSIONS_HEALTH)
            assert (await health.Check(question)).status == SERVING
            for users in ([f"u{n}" for n in range(10)], [f"gone{n}" for n in range(10)]):
                for user in users:  # sessions found, then none: the store was emptied
                    await stub.Recommend(pb.RecommendRequest(user_id=user, item_id="a"))
                clock.now += 60
            await stub.Recommend(pb.RecommendRequest(user_id="u1", item_id="a"))
            await asyncio.sleep(0.05)  # the health update is a task of the server's loop
            assert (await health.Check(question)).status == NOT_SERVING
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
            value = server.metrics.registry.get_sample_value
            assert value("recsvc_session_store_emptied") == 1
            assert value("recsvc_session_hit_ratio") == 0.0
            await channel.close()

    asyncio.run(scenario())


def test_after_an_idle_spell_the_old_window_is_not_compared_with() -> None:
    clock, changes = Clock(), []
    watch = EmptiedStoreWatch(lambda *change: changes.append(change), clock=clock)
    window(watch, clock, 500, 400)
    clock.now += 3600  # an idle night, then a different crowd
    window(watch, clock, 500, 10)
    watch.record(False)
    assert changes == []

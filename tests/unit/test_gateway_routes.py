"""The HTTP gateway's routes over in-memory stand-ins of the gRPC server and the topic."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import tiny_bundle_arrays

from recsvc.bundle import write_bundle
from recsvc.catalogue import Catalogue
from recsvc.event_producer import EventsUnavailable, Sent
from recsvc.events import Event
from recsvc.gateway import GatewayMetrics, create_app, why
from recsvc.http_status import HTTP_STATUS
from recsvc.v1 import recommender_pb2 as pb

FAIL_PREFIX = "fail-"


class FakeRecommender:
    """Answers two items for any item, or fails with the code named after ``fail-``."""

    def __init__(self) -> None:
        self.calls: list[tuple[pb.RecommendRequest, str | None]] = []
        self.up = True

    async def recommend(
        self, request: pb.RecommendRequest, authorization: str | None
    ) -> pb.RecommendResponse:
        self.calls.append((request, authorization))
        if request.item_id == "crash":
            raise RuntimeError("a bug")
        if request.item_id.startswith(FAIL_PREFIX):
            code = grpc.StatusCode[request.item_id.removeprefix(FAIL_PREFIX)]
            raise grpc.aio.AioRpcError(
                code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"said {code.name}"
            )
        reply = pb.RecommendResponse(
            bundle_version="v7",
            personalized=request.user_id != "",
            session_events_used=2,
            ranked_by=pb.RANKED_BY_SECOND_STAGE,
            variant=request.variant or "control",
        )
        if not request.user_id:
            reply.fallback_reason = pb.FALLBACK_REASON_NO_USER
            reply.ranked_by = pb.RANKED_BY_POOL_ORDER
        reply.items.add(item_id="b", score=0.5, sources=[pb.SOURCE_ITEMCF, pb.SOURCE_LIVE])
        reply.items.add(item_id="c", score=0.25, sources=[pb.SOURCE_NEW], unscored=True)
        if request.explain:
            reply.items[0].because.add(item_id="x", clicks_ago=2, weight=0.5)
        return reply

    async def serving(self) -> bool:
        return self.up


class FakeSink:
    def __init__(self) -> None:
        self.sent: list[Event] = []
        self.failure: str | None = None

    async def send(self, event: Event) -> Sent:
        if self.failure:
            raise EventsUnavailable(self.failure)
        self.sent.append(event)
        return Sent("recsvc.events", 2, len(self.sent) - 1)

    async def ready(self) -> bool:
        return self.failure is None


@pytest.fixture
def parts() -> tuple[FakeRecommender, FakeSink, GatewayMetrics]:
    return FakeRecommender(), FakeSink(), GatewayMetrics()


@pytest.fixture
def client(parts) -> TestClient:
    return TestClient(create_app(*parts))


def test_an_answer_is_the_servers_reply_as_json(client: TestClient, parts) -> None:
    reply = client.get(
        "/v1/recommend",
        params={"user_id": "u1", "item_id": "a", "k": 2, "exclude_seen": "true"},
        headers={"Authorization": "Bearer t0ken"},
    )
    assert reply.status_code == 200
    assert reply.json() == {
        "items": [
            {"item_id": "b", "score": 0.5, "sources": ["itemcf", "live"], "unscored": False},
            {"item_id": "c", "score": 0.25, "sources": ["new"], "unscored": True},
        ],
        "bundle_version": "v7",
        "personalized": True,
        "fallback_reason": None,
        "session_events_used": 2,
        "ranked_by": "second_stage",
        "variant": "control",
    }
    request, authorization = parts[0].calls[-1]
    assert (request.user_id, request.item_id, request.k) == ("u1", "a", 2)
    assert request.HasField("exclude_seen") and request.exclude_seen
    assert not request.HasField("category")
    assert authorization == "Bearer t0ken"  # passed on to the server's token check
    anonymous = client.get("/v1/recommend", params={"item_id": "a"}).json()
    assert anonymous["fallback_reason"] == "no_user" and anonymous["ranked_by"] == "pool_order"
    assert not parts[0].calls[-1][0].HasField("variant")
    named = client.get("/v1/recommend", params={"item_id": "a", "variant": "b"}).json()
    assert named["variant"] == "b" and parts[0].calls[-1][0].variant == "b"


def test_explanations_only_when_asked(client: TestClient, parts) -> None:
    params = {"user_id": "u1", "item_id": "a", "explain": "true"}
    items = client.get("/v1/recommend", params=params).json()["items"]
    assert parts[0].calls[-1][0].explain
    assert items[0]["because"] == [{"item_id": "x", "clicks_ago": 2, "weight": 0.5}]
    assert items[0]["why"] == "because you viewed x two clicks ago"
    assert items[1]["because"] == [] and items[1]["why"] == "new in the catalogue"
    plain = client.get("/v1/recommend", params={"user_id": "u1", "item_id": "a"}).json()
    assert not parts[0].calls[-1][0].explain
    assert "because" not in plain["items"][0] and "why" not in plain["items"][0]


def test_reasons_in_words() -> None:
    one = {"item_id": "7", "clicks_ago": 1, "weight": 0.2}
    three = {"item_id": "9", "clicks_ago": 3, "weight": 0.1}
    assert (
        why([one, three], ["itemcf"]) == "because you viewed 7 one click ago and 9 three clicks ago"
    )
    assert why([{**one, "clicks_ago": 12}], []) == "because you viewed 7 12 clicks ago"
    assert why([], ["live", "itemcf"]) == "viewed with it in the last minutes"
    assert why([], ["unheard_of"]) == "unheard_of"
    assert why([], []) == "from the item's candidates"


@pytest.mark.parametrize("code", sorted(HTTP_STATUS, key=lambda c: c.name), ids=lambda c: c.name)
def test_every_grpc_status_has_its_http_status_and_a_json_error(
    client: TestClient, code: grpc.StatusCode
) -> None:
    reply = client.get("/v1/recommend", params={"user_id": "u", "item_id": FAIL_PREFIX + code.name})
    assert reply.status_code == HTTP_STATUS[code]
    assert reply.json() == {
        "error": {"code": HTTP_STATUS[code], "status": code.name, "message": f"said {code.name}"}
    }


def test_the_usual_mapping() -> None:
    expected = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401,
                "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
                "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "UNIMPLEMENTED": 501}  # fmt: skip
    assert {c.name: HTTP_STATUS[c] for c in HTTP_STATUS if c.name in expected} == expected
    assert grpc.StatusCode.OK not in HTTP_STATUS


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"user_id": "u"}, "item_id"),
        ({"item_id": ""}, "item_id"),
        ({"item_id": "a", "k": "ten"}, "k"),
        ({"item_id": "a", "k": -1}, "k"),
        ({"item_id": "a", "k": 100_000}, "k"),
        ({"item_id": "a", "exclude_seen": "maybe"}, "exclude_seen"),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(
    client: TestClient, parts, params: dict, problem: str
) -> None:
    reply = client.get("/v1/recommend", params=params)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and problem in error["message"]
    assert parts[0].calls == []  # never reached the server


def test_unknown_routes_and_methods_get_json_errors(client: TestClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    wrong = client.delete("/v1/recommend")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == 405


def test_an_event_goes_to_the_sink_once_acknowledged(client: TestClient, parts) -> None:
    body = {"event_id": "e1", "user_id": "u1", "item_id": "a", "type": "click", "ts": 1000}
    reply = client.post("/v1/events", json=body)
    assert reply.status_code == 202
    assert reply.json() == {"event_id": "e1", "topic": "recsvc.events", "partition": 2, "offset": 0}
    assert parts[1].sent == [Event("e1", "u1", "a", "click", 1000.0)]
    # Without an id and a time, the gateway gives it a fresh id and the current time.
    filled = client.post("/v1/events", json={"user_id": "u1", "item_id": "b", "type": "cart"})
    assert filled.status_code == 202
    event = parts[1].sent[-1]
    assert event.event_id == filled.json()["event_id"] and len(event.event_id) == 32
    assert event.ts > 1.7e9 and event.type == "cart"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"user_id": "u", "item_id": "a", "type": "view"}, "unknown_type"),
        ({"user_id": "u", "item_id": "a", "type": "click", "ts": -5}, "bad_ts"),
        ({"user_id": "u", "item_id": "a", "type": "click", "ts": 1.7e12}, "bad_ts"),
        ({"user_id": "u", "item_id": "a\n", "type": "click"}, "bad_id"),
        ({"user_id": 7, "item_id": "a", "type": "click"}, "user_id"),
        ({"user_id": "u", "item_id": "a", "type": "click", "ts": "now"}, "ts"),
        ({"user_id": "u", "item_id": "a", "type": "click", "ts": True}, "ts"),
        ({"user_id": "u", "type": "click"}, "item_id"),
        ({"user_id": "u", "item_id": "a", "type": "click", "extra": 1}, "extra"),
        ({"user_id": "u", "item_id": "x" * 300, "type": "click"}, "item_id"),
        ([1, 2], "body"),
    ],
)
def test_bad_events_are_400_and_never_sent(
    client: TestClient, parts, body: object, problem: str
) -> None:
    reply = client.post("/v1/events", json=body)
    assert reply.status_code == 400
    assert problem in reply.json()["error"]["message"]
    assert parts[1].sent == []


def test_a_body_that_is_not_json_is_400(client: TestClient, parts) -> None:
    reply = client.post(
        "/v1/events", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert parts[1].sent == []


def test_kafka_unavailable_is_503_and_not_ready(client: TestClient, parts) -> None:
    parts[1].failure = "no Kafka broker: NoBrokersAvailable"
    body = {"user_id": "u", "item_id": "a", "type": "click"}
    reply = client.post("/v1/events", json=body)
    assert reply.status_code == 503
    assert reply.json()["error"] == {
        "code": 503, "status": "UNAVAILABLE", "message": "no Kafka broker: NoBrokersAvailable"
    }  # fmt: skip
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["kafka"] == "not connected"


def test_ready_only_when_the_server_serves_and_kafka_is_connected(
    client: TestClient, parts
) -> None:
    assert client.get("/readyz").json() == {"grpc": "serving", "kafka": "connected"}
    parts[0].up = False
    reply = client.get("/readyz")
    assert reply.status_code == 503 and reply.json()["grpc"] == "not serving"


def test_metrics_count_requests_by_route_and_status(client: TestClient, parts) -> None:
    client.get("/v1/recommend", params={"item_id": "a"})
    client.get("/v1/recommend", params={"item_id": FAIL_PREFIX + "NOT_FOUND"})
    client.get("/v1/recommend", params={"item_id": FAIL_PREFIX + "NOT_FOUND"})
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'recsvc_gateway_requests_total{code="200",route="/v1/recommend"} 1.0' in text
    assert 'recsvc_gateway_requests_total{code="404",route="/v1/recommend"} 2.0' in text
    assert 'recsvc_gateway_requests_total{code="404",route="other"} 1.0' in text
    assert 'recsvc_gateway_request_seconds_count{route="/v1/recommend"} 3.0' in text


def test_the_openapi_schema_describes_both_routes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/events", "/healthz", "/readyz"} <= set(schema["paths"])
    recommend = schema["paths"]["/v1/recommend"]["get"]
    assert {p["name"] for p in recommend["parameters"]} >= {"item_id", "user_id", "k"}
    assert {"200", "400", "404", "503"} <= set(recommend["responses"])
    assert "202" in schema["paths"]["/v1/events"]["post"]["responses"]
    assert client.get("/docs").status_code == 404  # its pages would load scripts from a CDN
    json.dumps(schema)


def test_the_stand_ins_match_the_real_clients_signatures() -> None:
    """The fakes above answer what GrpcRecommender and EventProducer answer."""
    import inspect

    from recsvc.event_producer import EventProducer
    from recsvc.grpc_recommender import GrpcRecommender

    for fake, real in ((FakeRecommender, GrpcRecommender), (FakeSink, EventProducer)):
        for name in ("recommend", "serving") if fake is FakeRecommender else ("send", "ready"):
            assert inspect.signature(getattr(fake, name)) == inspect.signature(getattr(real, name))


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


@pytest.fixture
def shop(tiny_bundle: Path, tmp_path: Path, parts) -> TestClient:
    """The gateway with the tiny bundle's catalogue and a photo of item b."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "b.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    return TestClient(create_app(*parts, catalogue=Catalogue(tiny_bundle, photos)))


def test_items_say_their_category_and_photo(shop: TestClient) -> None:
    reply = shop.get("/v1/items", params={"ids": "a,b,zz"})
    assert reply.status_code == 200
    assert reply.json()["items"] == [
        {"item_id": "a", "category": "x", "in_bundle": True, "has_image": False},
        {"item_id": "b", "category": "x", "in_bundle": True, "has_image": True},
        {"item_id": "zz", "category": None, "in_bundle": False, "has_image": False},
    ]
    photo = shop.get("/v1/items/b/image")
    assert photo.status_code == 200 and photo.content == PNG
    assert photo.headers["content-type"] == "image/png"
    assert shop.get("/v1/items/a/image").status_code == 404
    too_many = shop.get("/v1/items", params={"ids": ",".join(["a"] * 201)})
    assert too_many.status_code == 400 and "1..200" in too_many.json()["error"]["message"]
    assert shop.get("/v1/items/popular", params={"n": 3}).json() == {"items": ["a", "b", "c"]}


def test_the_catalogue_follows_the_bundle_the_server_swaps_to(tiny_bundle: Path) -> None:
    catalogue = Catalogue(tiny_bundle)
    assert catalogue.describe(["c"])[0].category == "y"
    arrays = tiny_bundle_arrays()
    arrays["category_names"] = np.array(["x", "shoes"])
    write_bundle(tiny_bundle, arrays, {"source": "tests"})  # moves `current`
    assert catalogue.describe(["c"])[0].category == "shoes"


def test_the_demo_page_starts_on_the_most_popular_item(shop: TestClient) -> None:
    start = shop.get("/demo", follow_redirects=False)
    assert start.status_code == 302 and start.headers["location"] == "/demo?item=a"
    assert shop.get("/", follow_redirects=False).headers["location"] == "/demo"
    page = shop.get("/demo", params={"item": "a"})
    assert page.status_code == 200 and "recsvc demo storefront" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere


def test_without_a_catalogue_the_item_routes_are_unavailable(client: TestClient) -> None:
    reply = client.get("/v1/items", params={"ids": "a"})
    assert reply.status_code == 503 and reply.json()["error"]["status"] == "UNAVAILABLE"
    missing = Catalogue(Path("/nonexistent/bundles"))
    app = TestClient(create_app(FakeRecommender(), FakeSink(), catalogue=missing))
    reply = app.get("/v1/items", params={"ids": "a"})
    assert reply.status_code == 503 and "no bundle at" in reply.json()["error"]["message"]


def test_photos_come_only_from_the_folder(
    tiny_bundle: Path, tmp_path: Path, shop: TestClient
) -> None:
    """tmp_path/secret.png exists beside the photo folder: no id reaches it."""
    catalogue = Catalogue(tiny_bundle, tmp_path / "photos")
    assert catalogue.image("b") is not None
    (tmp_path / "photos" / "x").mkdir()  # so that x/../../secret would resolve
    for sneaky in ("x/../../secret", "../secret", "..\\secret", ".", "", "b\0", "x" * 300):
        assert catalogue.image(sneaky) is None, sneaky
    reply = shop.get("/v1/items", params={"ids": "../secret,b"})
    assert [i["has_image"] for i in reply.json()["items"]] == [False, True]
    too_long = shop.get("/v1/items", params={"ids": "x" * 300})
    assert too_long.status_code == 400 and "at most 256" in too_long.json()["error"]["message"]


def test_events_need_a_token_when_the_gateway_has_tokens(parts) -> None:
    guarded = TestClient(create_app(*parts, tokens=frozenset({"s3cret"})))
    body = {"user_id": "u", "item_id": "a", "type": "click"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        reply = guarded.post("/v1/events", json=body, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.json()["error"]["status"] == "UNAUTHENTICATED"
    assert parts[1].sent == []
    ok = guarded.post("/v1/events", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202 and len(parts[1].sent) == 1


def test_a_malformed_authorization_header_is_401_not_a_crash(client: TestClient, parts) -> None:
    for value in (b"Bearer a\tb", "Bearer caf\u00e9".encode()):
        reply = client.get(
            "/v1/recommend", params={"item_id": "a"}, headers={"Authorization": value}
        )
        assert reply.status_code == 401 and "malformed" in reply.json()["error"]["message"]
    assert parts[0].calls == []


def test_an_unexpected_error_is_a_counted_json_500(parts) -> None:
    client = TestClient(create_app(*parts), raise_server_exceptions=False)
    reply = client.get("/v1/recommend", params={"item_id": "crash"})
    assert reply.status_code == 500
    assert reply.json() == {
        "error": {
            "code": 500,
            "status": "INTERNAL",
            "message": "internal error; see the gateway log",
        }
    }
    text = client.get("/metrics").text
    assert 'recsvc_gateway_requests_total{code="500",route="/v1/recommend"} 1.0' in text


def test_an_empty_variant_is_no_variant_and_405_says_what_is_allowed(
    client: TestClient, parts
) -> None:
    client.get("/v1/recommend", params={"item_id": "a", "variant": ""})
    assert not parts[0].calls[-1][0].HasField("variant")
    assert client.delete("/v1/recommend").headers["allow"] == "GET"

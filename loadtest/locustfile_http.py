"""The shoppers of ``loadtest/locustfile.py``, through the HTTP gateway as a browser page.

Run from the repository root against ``make run`` plus ``recsvc gateway``::

    .venv/bin/locust -f loadtest/locustfile_http.py --headless -u 50 -r 10 -t 60s \\
        -H http://127.0.0.1:8080 --csv .local/locust/http --html .local/locust/http.html

The visit is the same (same options, same personalized-share report); the page calls
``GET /v1/recommend`` for the items to show and ``POST /v1/events`` for its view and cart
beacons, so both go through the gateway, which sends the events to Kafka. Statistics:
``GET /v1/recommend`` (a reply without items fails) and ``POST /v1/events click`` and
``... cart``, each timed until the gateway answered (after Kafka's acknowledgement).
``python -m loadtest.locustfile --help`` lists the options.
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser

# The module, not its names: Locust runs every User class it finds in this namespace.
from loadtest import locustfile as shoppers

DEFAULT_HOST = "http://127.0.0.1:8080"


class HttpShopperUser(shoppers.Shopper, FastHttpUser):
    """A browser tab whose page calls the gateway (see ``loadtest.locustfile.Visit``)."""

    host = DEFAULT_HOST
    sends_to_kafka = False  # the gateway does

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if self.shop is None:
            raise RuntimeError("Shopper.shop is not set (run through locust -f)")

    def recommend(self, user_id: str, item: str) -> shoppers.Reply | None:
        assert self.shop is not None
        params: dict[str, Any] = {"user_id": user_id, "item_id": item, "k": self.shop.options.k}
        if self.shop.options.exclude_seen:
            params["exclude_seen"] = "true"
        with self.client.get(
            "/v1/recommend", params=params, name="/v1/recommend", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return None
            body = response.json()
            if not body["items"]:
                response.failure("empty reply")
                return None
        used = int(body["session_events_used"])
        fallback = (body["fallback_reason"] or "unspecified").upper()
        return shoppers.Reply(
            [ranked["item_id"] for ranked in body["items"]],
            used,
            shoppers.reply_reason(bool(body["personalized"]), used, fallback),
        )

    def send_event(self, user_id: str, item: str, kind: str) -> None:
        self.client.post(
            "/v1/events",
            json={"user_id": user_id, "item_id": item, "type": kind},
            name=f"/v1/events {kind}",
        )

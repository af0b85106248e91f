"""A Recommender server that answers every call with an empty response: the floor that gRPC,
Python and the loopback network set, to compare the real server against in the same run.
``--workers`` runs it as ``recsvc serve --workers`` runs the real one.

    python -m loadtest.empty_server --port 50061 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import suppress

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.workers import supervise


class EmptyRecommender(pb_grpc.RecommenderServicer):
    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        return pb.RecommendResponse()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(EmptyRecommender(), server)
    checks = health.aio.HealthServicer()  # as the real server has, and for start-up checks
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise SystemExit(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"empty Recommender on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def run(port: int) -> None:
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args()
    if args.workers < 1 or not 0 < args.port < 65536:
        parser.error("--workers must be at least 1 and --port a usable port")
    if args.workers == 1:
        run(args.port)
    else:
        sys.exit(supervise(args.workers, run, (args.port,)))


if __name__ == "__main__":
    main()

"""A Recommender server that answers every call with an empty response: the floor that gRPC,
Python and the loopback network set, to compare the real server against in the same run.

    python -m loadtest.empty_server --port 50061
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


class EmptyRecommender(pb_grpc.RecommenderServicer):
    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        return pb.RecommendResponse()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(EmptyRecommender(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"empty Recommender on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=50061)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

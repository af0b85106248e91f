"""Bytes that are not a request, sent to the health and reflection services, get
INVALID_ARGUMENT (recsvc.request_decoding.tolerant), not grpc's UNKNOWN with a traceback logged."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from helpers import serving_in_thread

from recsvc.sessions import InMemorySessionStore

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
GARBAGE = b"\xff\xff\xff"  # a varint that never ends
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1, a string, of bytes that are not UTF-8
SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def status_of(call: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return call.code(), call.details() or ""


def test_undecodable_requests_to_health_and_reflection_are_invalid_argument(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    list_services = rpb.ServerReflectionRequest(list_services="").SerializeToString()
    with (
        caplog.at_level(logging.WARNING),
        serving_in_thread(tiny_bundle, InMemorySessionStore()) as target,
        grpc.insecure_channel(target) as channel,
    ):
        check = channel.unary_unary(CHECK)
        for payload in (GARBAGE, BAD_UTF8):
            with pytest.raises(grpc.RpcError) as refused:
                check(payload, timeout=5)
            code, details = status_of(refused.value)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert details.startswith(f"request is not a valid message ({len(payload)} bytes)")
        with pytest.raises(grpc.RpcError) as refused:
            next(channel.unary_stream(WATCH)(GARBAGE, timeout=5))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A stream is answered up to the first undecodable message, then ended.
        answers = channel.stream_stream(REFLECTION)(iter([list_services, BAD_UTF8]), timeout=5)
        first = rpb.ServerReflectionResponse.FromString(next(answers))
        with pytest.raises(grpc.RpcError) as refused:
            next(answers)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Requests that decode are answered as before.
        assert health_pb2.HealthCheckResponse.FromString(check(b"", timeout=5)) == SERVING
        watch = channel.unary_stream(WATCH)(b"", timeout=5)
        assert health_pb2.HealthCheckResponse.FromString(next(watch)) == SERVING
        watch.cancel()
    assert "recsvc.v1.Recommender" in {s.name for s in first.list_services_response.service}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

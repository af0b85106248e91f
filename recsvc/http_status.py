"""gRPC status codes as HTTP statuses, and the gateway's JSON error body.

The mapping is the one Google's HTTP/JSON transcoding uses (``google.rpc.Code``), so that a
client sees the same status from recsvc's gateway as from any transcoding proxy.
"""

from __future__ import annotations

from typing import Any

import grpc

#: HTTP status for each gRPC status code other than OK.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a failed call's gRPC code (500 for one not in the table)."""
    return HTTP_STATUS.get(code, 500)


def error_body(http: int, status: str, message: str) -> dict[str, Any]:
    """``{"error": {"code": <http>, "status": <gRPC code name>, "message": ...}}``."""
    return {"error": {"code": http, "status": status, "message": message}}

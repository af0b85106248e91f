"""A Locust user for any unary gRPC service: every call is a Locust request.

``GrpcClient`` wraps a generated stub; calling ``client.Method(request)`` (or
``client.call("Method", request)``) times the call and fires Locust's ``request`` event with
the response time, the response size in bytes and the failure, if any, so the call shows up
in Locust's statistics, CSV and HTML reports like an HTTP request would. ``GrpcUser`` is the
Locust ``User`` that owns one channel to ``--host`` (``host:port``) and one client::

    class MyUser(GrpcUser):
        stub_class = my_pb2_grpc.MyServiceStub

        @task
        def ask(self) -> None:
            self.client.MyMethod(my_pb2.MyRequest(...))

grpcio does its I/O in C, which gevent cannot patch; importing this module switches grpcio
to gevent (``grpc.experimental.gevent.init_gevent``), which must happen before the first
channel is made, so import it before creating any channel.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events
from locust.event import EventHook
from locust.exception import StopTest

grpc_gevent.init_gevent()

#: A check of a successful response; it raises (any ``Exception``) to fail the request.
ResponseCheck = Callable[[Any], None]


class GrpcCallError(Exception):
    """A failed call, with a short message so Locust groups failures by status code."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def parse_target(host: str | None) -> str:
    """``host:port`` from Locust's ``--host``; a ``grpc://`` prefix is allowed.

    Raises
    ------
    ValueError
        No host, another scheme, or no numeric port.
    """
    if not host:
        raise ValueError("no target: give --host host:port (or set host on the User class)")
    target = host.removeprefix("grpc://").rstrip("/")
    if "://" in target:
        raise ValueError(f"--host {host!r}: a gRPC target is host:port, not a URL")
    name, _, port = target.rpartition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--host {host!r}: expected host:port, e.g. 127.0.0.1:50051")
    return target


@events.init.add_listener
def check_targets(environment: Any, **_kwargs: Any) -> None:
    """Stop with a clear message when a ``GrpcUser``'s target is not ``host:port``."""
    for user_class in environment.user_classes or ():
        if issubclass(user_class, GrpcUser) and not user_class.abstract:
            try:
                parse_target(environment.host or user_class.host)
            except ValueError as exc:
                sys.stderr.write(f"{user_class.__name__}: {exc}\n")
                sys.exit(2)


class GrpcClient:
    """A stub whose unary calls fire Locust ``request`` events.

    Parameters
    ----------
    stub : a generated ``...Stub`` instance
    request_event : ``environment.events.request``
    request_type : the "Type" column of Locust's statistics
    timeout_s : deadline of each call unless the call gives one
    metadata : sent with every call (e.g. an authorization header)
    """

    def __init__(
        self,
        stub: object,
        request_event: EventHook,
        *,
        request_type: str = "grpc",
        timeout_s: float | None = 1.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._stub = stub
        self._event = request_event
        self.request_type = request_type
        self.timeout_s = timeout_s
        self.metadata = tuple(metadata)

    def call(
        self,
        method: str,
        request: Any,
        *,
        name: str | None = None,
        timeout_s: float | None = None,
        check: ResponseCheck | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Any | None:
        """Call ``method`` of the stub with ``request`` and report it.

        Parameters
        ----------
        method : the RPC's name on the stub, e.g. ``"Recommend"``
        name : the "Name" column of the statistics (default: ``method``)
        check : called with the response; an exception it raises fails the request
        context : passed to the event's listeners

        Returns
        -------
        The response, or None when the call (or ``check``) failed; the failure is in the
        statistics, not raised.
        """
        rpc = getattr(self._stub, method, None)
        if rpc is None:
            raise AttributeError(f"{type(self._stub).__name__} has no method {method!r}")
        response = None
        exception: Exception | None = None
        started_wall = time.time()
        started = time.perf_counter()
        try:
            response = rpc(
                request,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
                metadata=self.metadata or None,
            )
            if check is not None:
                check(response)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            exception = GrpcCallError(code.name if code else "UNKNOWN", details or "")
        except Exception as exc:  # a failed check: reported as this request's failure
            exception = exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._event.fire(
            request_type=self.request_type,
            name=name or method,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            exception=exception,
            context=dict(context or {}),
            start_time=started_wall,
        )
        return None if exception is not None else response

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        if not callable(getattr(self._stub, method, None)):
            raise AttributeError(f"{type(self._stub).__name__} has no method {method!r}")

        def rpc(request: Any, **kwargs: Any) -> Any | None:
            return self.call(method, request, **kwargs)

        return rpc


class GrpcUser(User):
    """A Locust user with one gRPC channel to ``host`` and a reporting ``client``.

    Subclasses set ``stub_class`` (the generated ``...Stub``) and write tasks that call
    ``self.client.<Method>(request)``. ``make_client`` wraps further stubs on the same
    channel. A subclass that overrides ``on_stop`` calls ``super().on_stop()``, which closes
    the channel.
    """

    abstract = True
    #: The generated stub class the ``client`` wraps.
    stub_class: type | None = None
    #: The "Type" column of the statistics for this user's calls.
    request_type = "grpc"
    #: Deadline of each call, seconds.
    timeout_s: float | None = 1.0
    #: Metadata sent with every call.
    metadata: Sequence[tuple[str, str]] = ()

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if self.stub_class is None:
            raise StopTest(f"{type(self).__name__} must set stub_class")
        try:
            self.target = parse_target(self.host)
        except ValueError as exc:
            raise StopTest(str(exc)) from None
        self.channel = grpc.insecure_channel(self.target)
        self.client = self.make_client(self.stub_class)

    def make_client(self, stub_class: type) -> GrpcClient:
        """A reporting client for another stub on this user's channel."""
        return GrpcClient(
            stub_class(self.channel),
            self.environment.events.request,
            request_type=self.request_type,
            timeout_s=self.timeout_s,
            metadata=self.metadata,
        )

    def on_stop(self) -> None:
        self.channel.close()

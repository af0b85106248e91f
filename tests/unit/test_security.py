"""TLS, mutual TLS and bearer tokens on the gRPC port, with certificates made at test time."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsvc.exceptions import ConfigError
from recsvc.security import read_tokens
from recsvc.server import RecommendServer
from recsvc.sessions import InMemorySessionStore
from recsvc.settings import Settings
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

TOKEN = "s3cret-token-0123456789"
REQUEST = pb.RecommendRequest(user_id="u", item_id="a", k=2)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pem_files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    """The server's certificate and key, and the CA, as files."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "tls_cert": tmp_path / "server.pem",
        "tls_key": tmp_path / "server.key",
        "tls_client_ca": tmp_path / "ca.pem",
    }
    cert.private_key_pem.write_to_path(str(files["tls_key"]))
    cert.cert_chain_pems[0].write_to_path(str(files["tls_cert"]))
    ca.cert_pem.write_to_path(str(files["tls_client_ca"]))
    return {name: str(path) for name, path in files.items()}


async def started(bundle: Path, **settings: str) -> RecommendServer:
    config = Settings(bundle=bundle, port=0, metrics_port=0, watch_interval_s=0, **settings)
    server = RecommendServer(config, InMemorySessionStore())
    await server.start()
    return server


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(
    tiny_bundle: Path, tmp_path: Path, ca: trustme.CA
) -> None:
    files = pem_files(tmp_path, ca)
    del files["tls_client_ca"]

    async def scenario() -> None:
        server = await started(tiny_bundle, **files)
        target = f"127.0.0.1:{server.port}"
        try:
            trusted = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
            async with grpc.aio.secure_channel(target, trusted) as channel:
                answer = await pb_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=5)
                assert answer.items
            async with grpc.aio.insecure_channel(target) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await pb_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(
    tiny_bundle: Path, tmp_path: Path, ca: trustme.CA
) -> None:
    files = pem_files(tmp_path, ca)
    client = ca.issue_cert("client@recsvc.test")
    stranger = trustme.CA().issue_cert("client@recsvc.test")  # signed by another CA

    def credentials(cert: trustme.LeafCert | None) -> grpc.ChannelCredentials:
        if cert is None:
            return grpc.ssl_channel_credentials(ca.cert_pem.bytes())
        return grpc.ssl_channel_credentials(
            ca.cert_pem.bytes(), cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes()
        )

    async def call(target: str, cert: trustme.LeafCert | None) -> grpc.StatusCode:
        async with grpc.aio.secure_channel(target, credentials(cert)) as channel:
            try:
                await pb_grpc.RecommenderStub(channel).Recommend(REQUEST, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    async def scenario() -> None:
        server = await started(tiny_bundle, **files)
        target = f"127.0.0.1:{server.port}"
        try:
            assert await call(target, client) == grpc.StatusCode.OK
            assert await call(target, None) == grpc.StatusCode.UNAVAILABLE
            assert await call(target, stranger) == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_bearer_tokens_guard_the_service_and_reflection_not_health(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call\n{TOKEN}\n\n")
    other = "another-token-abcdefghij"
    monkeypatch.setenv("RECSVC_AUTH_TOKENS", f" {other} ,")
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        server = await started(tiny_bundle, auth_tokens_file=str(tokens))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                for token in (TOKEN, other):
                    metadata = (("authorization", f"Bearer {token}"),)
                    assert (await stub.Recommend(REQUEST, metadata=metadata, timeout=5)).items
                for metadata in (
                    (),
                    (("authorization", "Bearer wrong-token-0123456789"),),
                    (("authorization", f"Basic {TOKEN}"),),
                    (("authorization", f"Bearer {TOKEN}x"),),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.Recommend(REQUEST, metadata=metadata, timeout=5)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert TOKEN not in (refused.value.details() or "")
                # A request that is not even a RecommendRequest is refused for its token
                # first, by the same rule.
                raw = channel.unary_unary("/recsvc.v1.Recommender/Recommend")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await raw(b"\xff\xff", timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                health = health_pb2_grpc.HealthStub(channel)
                checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert checked.status == health_pb2.HealthCheckResponse.SERVING
                reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
                question = reflection_pb2.ServerReflectionRequest(list_services="")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in reflect.ServerReflectionInfo(iter([question]), timeout=5):
                        pass
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                metadata = (("authorization", f"Bearer {TOKEN}"),)
                replies = reflect.ServerReflectionInfo(iter([question]), metadata=metadata)
                names = [s.name async for r in replies for s in r.list_services_response.service]
                assert "recsvc.v1.Recommender" in names
            value = server.metrics.registry.get_sample_value
            assert value("recsvc_unauthenticated_calls_total") == 6
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    assert TOKEN not in caplog.text and other not in caplog.text


def test_bad_token_sources_are_configuration_errors(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="line 1: a token must have at least 16") as error:
        read_tokens(str(short), {})
    assert "abc" not in str(error.value)
    with pytest.raises(ConfigError, match=r"RECSVC_AUTH_TOKENS, token 2: .*whitespace"):
        read_tokens("", {"RECSVC_AUTH_TOKENS": f"{TOKEN},{TOKEN} {TOKEN}"})
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_tokens(str(empty), {})
    with pytest.raises(ConfigError, match="cannot read"):
        read_tokens(str(tmp_path / "missing"), {})
    assert read_tokens("", {}) == frozenset()
    for empty in ("", " , ,"):  # set, but to nothing: an unset variable in a script, say
        with pytest.raises(ConfigError, match="RECSVC_AUTH_TOKENS is set but holds no token"):
            read_tokens("", {"RECSVC_AUTH_TOKENS": empty})


def test_tls_settings_come_together_and_files_must_hold_pem(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key come together"):
        Settings(tls_cert="cert.pem")
    with pytest.raises(ConfigError, match="client certificates need TLS"):
        Settings(tls_client_ca="ca.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"--tls-cert: .* holds no PEM block"):
        RecommendServer(
            Settings(bundle=tiny_bundle, tls_cert=str(junk), tls_key=str(junk)),
            InMemorySessionStore(),
        )

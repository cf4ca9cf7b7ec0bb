# One place for the setup and the checks; README's two commands and CI call it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OPENCODE_PREFIX := .cache/opencode
# The coverage gate of CI; subprocesses (agent, CLI, kernels) are measured too.
PYTEST_ARGS ?= --cov=nexus_ops --cov-report=term --cov-fail-under=80

.PHONY: setup system-deps opencode console test check lint typecheck pytest clean

# The packages are installed again only when pyproject.toml changed (or the venv is new).
INSTALLED := $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(INSTALLED)

# Chromium (console tests) and Prometheus/promtool (metrics tests) from Debian.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null \
		|| ! [ -x /usr/sbin/nginx ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium prometheus nginx >/dev/null; \
	fi
	@# Debian starts a system nginx on :80; the tests run their own.
	@if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO systemctl stop nginx || true; fi
	@# Debian starts a system Prometheus on :9090; the tests run their own.
	@if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO systemctl stop prometheus || true; fi

opencode: setup
	$(BIN)/nexus-ops opencode install --prefix $(OPENCODE_PREFIX)

# OpenCode is installed when no binary is found; a console already running is shown.
console: setup
	@$(BIN)/nexus-ops opencode path >/dev/null 2>&1 || $(BIN)/nexus-ops opencode install
	$(BIN)/nexus-ops console

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nexus_ops tests benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup system-deps opencode
	NXOPS_TEST_OPENCODE_PREFIX=$(OPENCODE_PREFIX) $(BIN)/pytest $(PYTEST_ARGS)

check: lint typecheck pytest

test: check

clean:
	rm -rf $(VENV) .cache build dist *.egg-info

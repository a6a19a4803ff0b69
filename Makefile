# The README's two commands: `make demo` and `make test`. Both install what they need, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian's interpreter, not a per-user one under /root: the guest agent runs from this venv as an
# unprivileged user, who must be able to execute it.
BASE_PYTHON := $(firstword $(wildcard /usr/bin/python3) $(shell command -v python3))
STAMPS := .stamps
APT_PACKAGES := mariadb-server mariadb-client mariadb-backup postgresql-15 postgresql-contrib-15 \
	redis-server zstd memcached e2fsprogs util-linux iproute2 python3-venv
export PATH := /usr/lib/postgresql/15/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit bench deps clean-venv

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing:$$missing"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@if [ -x $(PY) ] && [ "$$(readlink -f $(PY))" != "$$(readlink -f $(BASE_PYTHON))" ]; then \
	  echo "recreating $(VENV) on $(BASE_PYTHON)"; rm -rf $(VENV); fi
	@test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q -U pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

# The OpenStack servers the contract suites run against, each in a venv of its own (their pins
# clash with ours): Swift all-in-one and Zaqar. tests/servers/ starts them on loopback.
SERVER_VENVS := .venvs
SWIFT_VERSION := 2.38.3
ZAQAR_VERSION := 23.0.1
$(STAMPS)/servers: $(STAMPS)/apt
	@mkdir -p $(STAMPS) $(SERVER_VENVS)
	@test -x $(SERVER_VENVS)/swift/bin/python || $(BASE_PYTHON) -m venv $(SERVER_VENVS)/swift
	@$(SERVER_VENVS)/swift/bin/python -m pip install -q -U pip
	@$(SERVER_VENVS)/swift/bin/python -m pip install -q 'swift==$(SWIFT_VERSION)'
	@test -x $(SERVER_VENVS)/zaqar/bin/python || $(BASE_PYTHON) -m venv $(SERVER_VENVS)/zaqar
	@$(SERVER_VENVS)/zaqar/bin/python -m pip install -q -U pip
	@$(SERVER_VENVS)/zaqar/bin/python -m pip install -q 'zaqar==$(ZAQAR_VERSION)' redis
	@touch $@

deps: $(STAMPS)/apt $(STAMPS)/venv $(STAMPS)/servers

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMPS)/venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: deps lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" || exit $$rc; }

unit: $(STAMPS)/venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: deps
	TROVELESS_LOG_LEVEL=WARNING $(PY) -m infra.local.demo

bench: deps
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV) $(STAMPS) $(SERVER_VENVS)

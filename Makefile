# Two commands from a fresh clone: each sets up .venv when it is absent (scripts/setup-venv), then runs.
#   make quickstart   the embedded quickstart cell (offline, CPU)
#   make test         the fast test suite (the README's test command)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test setup setup-dev

setup:
	VENV=$(VENV) scripts/setup-venv

setup-dev:
	VENV=$(VENV) scripts/setup-venv dev

quickstart: setup
	$(PY) -m benchmark experiment=quickstart

test: setup-dev
	$(PY) -m pytest -q

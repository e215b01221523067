# The two commands a newcomer runs (README): `make train` and `make test`.
PY ?= python3

.PHONY: install install-dev train test lint

install:
	bash scripts/install.sh

install-dev:
	bash scripts/install.sh --dev

train: install
	lhdist train

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(PY) -m ruff check lhdist tests benchmarks

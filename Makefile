# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Starts the embedded stack (broker + PostgreSQL, left running) and runs the main job on it.
demo: $(STAMP)
	$(BIN)/ledger up
	$(BIN)/ledger smoke

test: $(STAMP)
	bash .ci/ensure-chromium
	$(BIN)/pytest

down: $(STAMP)
	$(BIN)/ledger down

clean: down
	rm -rf .ledger

# dmp developer commands. Everything installs into ./.venv; only python3 and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit bench clean demo node

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/domain.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

node: $(STAMP)
	DMP_RECEIVER_CLAIM_NOTIFICATIONS=1 $(BIN)/dmp-node --dev --served-zone mesh.test --node-hostname mesh.test --auth-mode multi-tenant --dns-update --registration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# dmp developer commands. Everything installs into ./.venv; only python3 and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit bench clean demo node interop bench-node

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

# Opt-in: the reference dnsmesh 0.7.5 in its own venv, driven against dmp inside a
# loopback-only network namespace (needs root for `ip netns`).
REF_VENV ?= $(abspath ../refvenv)

$(REF_VENV)/bin/dnsmesh:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet dnsmesh==0.7.5

interop: $(STAMP) $(REF_VENV)/bin/dnsmesh
	DMP_NETNS=dmpinterop sh bench/netns.sh
	ip netns exec dmpinterop env DMP_INTEROP=1 DMP_REF_VENV=$(REF_VENV) DMP_INTEROP_TARGETS=dmp,ref $(BIN)/pytest -q -rxX -p no:cacheprovider tests/interop

bench-node: $(STAMP) $(REF_VENV)/bin/dnsmesh
	command -v dnsperf >/dev/null || (apt-get update -q && apt-get install -y -q dnsperf knot)
	DMP_NETNS=dmpbench sh bench/netns.sh
	ip netns exec dmpbench env DMP_REF_VENV=$(REF_VENV) $(BIN)/python bench/node.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

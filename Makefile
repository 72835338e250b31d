# Everything a fresh machine needs is installed by these targets themselves:
# Debian packages and the Docker engine (lab/host-deps.sh), the lab image (lab/image/build.sh),
# and the Python tools in .venv/.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
LAB := cli/mayday/lab
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := false
export PY_COLORS := 0

.PHONY: demo test venv host image eda lint unit molecule integration bench clean

## make demo: deploy a broken release on the lab, roll it back with `mayday level1`, print the report
demo: venv host image
	$(BIN)/mayday lab up
	$(BIN)/mayday lab deploy --release v1
	$(BIN)/mayday lab deploy --release v2 --broken
	@echo "--- before: the health check of the broken release"
	@/usr/bin/docker exec mayday-lab-web1 curl -s -w ' HTTP %{http_code}\n' http://127.0.0.1/health-check
	$(BIN)/mayday level1 || true
	@echo "--- after"
	@/usr/bin/docker exec mayday-lab-web1 curl -s -w ' HTTP %{http_code}\n' http://127.0.0.1/health-check
	@echo "--- incident report"
	@cat "$$(ls -d .mayday/incidents/INC-* | tail -1)/report.md"

## make test: lint, unit tests, Molecule scenarios, CLI tests against the lab
test: venv host image lint unit molecule integration

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(PY_STAMP)

# ansible-rulebook (Event-Driven Ansible) runs on Java: installed only where a Java runtime is, else
# tests/integration/test_eda.py skips and says what is missing.
EDA_STAMP := $(VENV)/.eda-installed-1.3.2
eda: venv
	@if command -v java >/dev/null 2>&1; then \
	  test -e $(EDA_STAMP) || { $(BIN)/pip install -q 'ansible-rulebook==1.3.2' && touch $(EDA_STAMP); }; \
	else echo "eda: no java on PATH: ansible-rulebook not installed; tests/integration/test_eda.py will skip"; fi

host:
	bash $(LAB)/host-deps.sh

image: host
	bash $(LAB)/image/build.sh

lint: venv image
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production -q
	$(BIN)/ruff check cli plugins tests bench molecule
	$(BIN)/mypy
	/usr/bin/docker run --rm --network none -v $(CURDIR)/monitoring:/m/monitoring:ro -w /m --entrypoint promtool \
	  mayday-lab-mon:latest check rules $(wildcard monitoring/rules/*.yml)
	/usr/bin/docker run --rm --network none -v $(CURDIR)/monitoring:/m/monitoring:ro -w /m --entrypoint promtool \
	  mayday-lab-mon:latest test rules $(wildcard monitoring/tests/*.yml)

unit: venv eda
	$(BIN)/pytest -q -n 2 tests/unit

molecule: venv host image
	$(BIN)/molecule test --all

integration: venv host image eda
	$(BIN)/pytest -q -n 3 --dist loadfile --durations=25 tests/integration

bench: venv host image
	$(BIN)/python bench/level1/run.py --sizes 1,10,25

clean:
	-$(BIN)/mayday lab down
	rm -rf .mayday

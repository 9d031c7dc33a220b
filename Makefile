# mailflow-harness: `make scenarios` and `make test` do all the set-up they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILD := build
TOOLS_LOG := /var/log/mailflow-harness-tools.log
export TESTCONTAINERS_RYUK_DISABLED := true

.DEFAULT_GOAL := help
.PHONY: help venv images tools scenarios test unit lint docs down clean soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (python dependencies)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pip's output goes to a log, shown only when it fails: its warnings would bury what matters.
	@$(BIN)/python -m pip install -q -e '.[dev]' > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

venv: $(STAMP) ## create .venv with the harness and its dependencies

images: $(STAMP) ## start a Docker engine if none answers, then build the images (only what changed)
	@$(BIN)/harness images

scenarios: images ## run every scenario on Postfix, Exim and OpenSMTPD (build/results.json, build/junit.xml)
	@$(BIN)/harness run --matrix scenarios --json $(BUILD)/results.json --junit $(BUILD)/junit.xml

test: images tools ## run the project's tests (unit and real-container integration tests)
	@$(BIN)/harness images --tools >/dev/null
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP) tools ## run only the unit tests (no Docker)
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: images ## the warm matrix (shared+parallel, fresh) against its floor, as ratios -> build/bench.json (bench/README.md)
	@$(BIN)/python bench/bench.py $(BENCH_ARGS)

soak: images ## runs of `harness run`, 3 at once, some sent SIGINT/SIGTERM/SIGKILL: nothing may be left (build/soak.json)
	@$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Tools the tests use and fail without (never skip): headless Chromium renders the HTML report;
# swaks replays a failed client step as the harness prints it.
tools: ## install chromium and swaks for the tests when missing (as root, with apt-get)
	@missing=""; [ -x /usr/bin/chromium ] || missing="chromium"; command -v swaks >/dev/null 2>&1 || missing="$$missing swaks"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing with apt-get (the tests use them; log: $(TOOLS_LOG))"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				$$missing; } > $(TOOLS_LOG) 2>&1 || { cat $(TOOLS_LOG); exit 1; }; \
		else \
			echo "missing:$$missing, and it cannot be installed here (not root on Debian): tests that need it will fail"; \
		fi; \
	fi

lint: $(STAMP) ## ruff and mypy --strict on harness/
	@$(BIN)/ruff check harness tests
	@$(BIN)/mypy harness

docs: images ## regenerate docs/compatibility.md from a run of the bundled scenarios on all three MTAs
	@$(BIN)/harness matrix scenarios --markdown docs/compatibility.md --json $(BUILD)/matrix.json

down: $(STAMP) ## remove topologies kept by `harness up` or --keep, and what killed runs left
	@$(BIN)/harness down

clean: ## remove build output and the virtual environment
	rm -rf $(BUILD) $(VENV)

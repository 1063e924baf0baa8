# The README's two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
CHECKED := src integrations tests examples benchmarks

.PHONY: install browser demo test test-fast lint typecheck bench bench-large clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The web UI's tests drive Debian's Chromium headless (Playwright's own browser download cannot
# be reached): install it when missing, as root with apt-get, or say how.
browser:
	@if [ -n "$$MODELSHELF_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || \
		command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the web UI tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || exit 1; \
	else \
		echo "The web UI tests need Chromium: run 'sudo apt-get install chromium'," \
			"or set MODELSHELF_CHROMIUM to a Chromium binary."; exit 1; \
	fi

test: lint typecheck browser
	$(BIN)/python -m pytest --durations=10

# The edit loop: everything but the tests marked slow (real training, subprocess crash tests).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -q

# The benchmarks, each against its baseline in the same run, and MLflow in a venv of its own
# (it sees the test venv's torch and modelshelf; MLflow never enters the test install).
BENCH := .venv-bench
$(BENCH)/.stamp: $(STAMP)
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python benchmarks/bench_venv.py $(VENV)
	$(BENCH)/bin/python -m pip install -q "mlflow==3.17.2"
	touch $@

bench: install $(BENCH)/.stamp
	for b in store models dedup callbacks callbacks_frameworks request_counts peers ui_pages; do \
		$(BENCH)/bin/python benchmarks/$$b.py || exit 1; done
	$(BENCH)/bin/python benchmarks/summary.py

# The same de-duplication and MLflow figures at 1 GiB, 10 checkpoints (about 7 minutes here):
# results/dedup_1024mib.json and peers_1024mib.json.
bench-large: install $(BENCH)/.stamp
	$(BENCH)/bin/python benchmarks/dedup.py --mib 1024 --checkpoints 10 --repeat 1
	$(BENCH)/bin/python benchmarks/peers.py --mib 1024 --checkpoints 10 --repeat 1

clean:
	rm -rf $(VENV) $(BENCH) build dist .pytest_cache .mypy_cache .ruff_cache

# Two entry points: `make demo` (the main job) and `make test` (the test suite). Both create and reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test test-slow lint clean

# Every downloaded file must match a hash in the locks (requirements-test.lock is requirements.lock plus the
# test tools). The package itself, editable, has no hash: --no-deps and --no-build-isolation let it bring
# nothing more, its build backend (setuptools) coming from the locks.
$(BIN)/.installed: pyproject.toml requirements.lock requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock -r requirements-test.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --check-build-dependencies -e .
	touch $@

demo: $(BIN)/.installed
	rm -rf $(DEMO_DIR)
	$(BIN)/mtl demo --model=mmoe --model_dir=$(DEMO_DIR)

test: $(BIN)/.installed
	$(BIN)/ruff check mtl pipeline serving tests benchmarks
	$(BIN)/pytest -n 2 -q

test-slow: $(BIN)/.installed
	$(BIN)/pytest -q -m slow

clean:
	rm -rf $(VENV) runs

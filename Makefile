# Two entry points: `make demo` (the main job) and `make test` (the test suite). Both create and reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test test-slow lint clean

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
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

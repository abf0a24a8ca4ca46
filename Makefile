# bayes_lora — two commands: `make demo` (the main job on the default model) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the CLI's order: $BAYES_LORA_DATA_DIR before ../shared/data
DATA   ?= $(firstword $(BAYES_LORA_DATA_DIR) $(wildcard ../shared/data))
CONFIG ?= configs/default.toml
OUT    ?= runs/default

.PHONY: demo test test-all lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo]'
	@touch $@

demo: $(VENV)/.installed
	$(PY) -m bayes_lora run $(CONFIG) --out $(OUT) $(if $(DATA),--data-dir $(DATA),)

# the tests run one thread each, so one worker per core (at most 4: each holds torch and a model);
# --dist loadfile keeps a file's tests, and its module fixtures, in one worker
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(XDIST) --durations=15 tests

test-all: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bayes_lora tests benchmarks

bench: $(VENV)/.installed   # needs a finished `make demo` (re-uses its stages)
	$(PY) benchmarks/compare_methods.py --out $(OUT) $(if $(DATA),--data-dir $(DATA),)
	$(PY) benchmarks/curve_valley.py $(if $(DATA),--data-dir $(DATA),)
	$(PY) benchmarks/prefix_cache.py
	$(PY) benchmarks/perf.py --run $(OUT) $(if $(DATA),--data-dir $(DATA),)

clean-venv:
	rm -rf $(VENV)

# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use and install the pinned torch before the project.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench cost clean-venv

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev,postgres]"
	@touch $(STAMP)

# The quickstart runs as two single-threaded workers on one store (each cell exactly once): on 2
# cores that is about twice the throughput of one two-threaded worker for its small network.
demo: $(STAMP)
	$(PY) -m studies validate quickstart.yaml
	OMP_NUM_THREADS=1 $(PY) -m studies run quickstart.yaml --quiet & worker=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m studies run quickstart.yaml; status=$$?; \
	wait $$worker || status=1; exit $$status
	$(PY) -m reports render quickstart

# Every test, the slow and e2e ones included (a plain `pytest` leaves those out: see pyproject.toml).
test: $(STAMP)
	$(PY) -m pytest -q -m "" --durations=15

lint: $(STAMP)
	$(PY) -m ruff check bnn studies analysis reports tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/features.py
	$(PY) benchmarks/training.py

cost: $(STAMP)
	$(PY) -m bnn cost

clean-venv:
	rm -rf $(VENV)

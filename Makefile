# tomolive: `make demo` runs the main job, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
LINTED := src plans callbacks tests bench scripts examples tiled_config
# Extra wheels (torch's CPU build) may live in /opt/wheels; pip's own config already points there.

.PHONY: demo test lint bench serve venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(PIP) install -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import tomolive.plans, tomolive.callbacks, torch, tiled, bluesky"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tomolive demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

test: lint
	TMPDIR=$${TMPDIR:-/tmp} MPLBACKEND=Agg $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/recon.py --quick

serve: $(STAMP)
	$(BIN)/tomolive serve

clean:
	rm -rf $(VENV) build dist *.egg-info

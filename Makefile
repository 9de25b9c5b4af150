# Two entry points for a fresh machine (see README):  make cockpit   and   make test
# Everything installs into .venv from this repository's own files.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CPU wheel of torch goes in first: a plain `torch` requirement would pull a multi-GB CUDA
# build. requirements/gpu.txt (the resolved GPU set) then pins every other package, so CPU and GPU
# boxes run the same versions.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-gpu cockpit run test test-extended bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/gpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c requirements/gpu.txt -e ".[test]"
	touch $@

# GPU box (Linux x86_64 + CUDA): the full pinned set, vllm and deepspeed included.
setup-gpu:
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/gpu.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The cockpit on the tiny recipe: starts a supervised run in the background and opens tina-tui on it.
cockpit: setup
	$(VENV)/bin/tina run recipes/tiny.yaml --detach --name tiny
	$(VENV)/bin/tina-tui --run tiny

# The same job headless, in the foreground.
run: setup
	$(VENV)/bin/tina run recipes/tiny.yaml --name tiny

# The README's test command: the whole suite but the long end-to-end checks (under 5 minutes on 2 cores).
test: setup
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not extended" $(PYTEST_ARGS)

# CI's second lane: the long end-to-end checks (several real trainings, ranks, kills).
test-extended: setup
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m extended $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: none collected

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

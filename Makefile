# neva-prep: the two commands of the README are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
NEMO_IMAGE ?= nvcr.io/nvidia/nemo:24.05
IMAGE ?= neva-prep:latest
PLAN ?= $(OUT)/sample/plan.yaml
OUT ?= build

.PHONY: install run test lint typecheck unit bench bench-model bench-data docker-build docker-run k8s slurm clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' torch==$(TORCH_VERSION)
	touch $@

run: install
	$(BIN)/neva-prep sample $(OUT)/sample
	$(BIN)/neva-prep launch local $(OUT)/sample/plan.yaml

lint: install
	$(BIN)/ruff check job tests bench
	$(BIN)/ruff format --check job tests bench
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

bench: bench-model bench-data

bench-model: install
	$(BIN)/python bench/bench_model.py

bench-data: install
	$(BIN)/python bench/bench_data.py

docker-build:
	docker build --build-arg NEMO_IMAGE=$(NEMO_IMAGE) -t $(IMAGE) .

# The plan's local paths must mean the same inside the container: the repo (where `neva-prep sample` and
# relative plan paths point) and the plan's folder are mounted at their own absolute paths; object-storage
# credentials pass as environment only. DOCKER_GPUS= runs it without a GPU.
DOCKER_GPUS ?= --gpus all
docker-run:
	docker run --rm $(DOCKER_GPUS) --user $$(id -u):$$(id -g) \
	  -v $(CURDIR):$(CURDIR) -v $(abspath $(dir $(PLAN))):$(abspath $(dir $(PLAN))) -w $(CURDIR) \
	  --env-file <(env | grep -E '^(AWS_|FSSPEC_|GOOGLE_)' || true) \
	  $(IMAGE) launch local $(abspath $(PLAN))

k8s: install
	$(BIN)/neva-prep launch k8s $(PLAN) --out $(OUT)/k8s

slurm: install
	$(BIN)/neva-prep launch slurm $(PLAN) --out $(OUT)/slurm

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache

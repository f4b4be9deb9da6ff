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

.PHONY: install run test lint typecheck unit bench bench-model bench-data docker-build docker-run image-test k8s \
	slurm clean

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

# docker, else podman: the first that can run containers here (a docker client without a daemon does not
# count); CONTAINER=podman to choose. CONTAINER_BUILD_FLAGS / CONTAINER_RUN_FLAGS add engine options.
CONTAINER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null; then echo podman; else echo docker; fi)
CONTAINER_BUILD_FLAGS ?=
CONTAINER_RUN_FLAGS ?=

# --format docker: in OCI format podman drops the Dockerfile's SHELL, and RUN lines would lose pipefail.
docker-build:
	$(CONTAINER) build $(if $(filter podman,$(CONTAINER)),--format docker) $(CONTAINER_BUILD_FLAGS) \
	  --build-arg NEMO_IMAGE=$(NEMO_IMAGE) -t $(IMAGE) .

# The job runs as the Kubernetes manifests run it: never as root (root gets the image's uid 1000:1000, so the
# plan's output folders must be writable by it; anyone else runs as themselves and owns what is written),
# read-only root filesystem, a tmpfs at /tmp, no capabilities, no privilege escalation. The plan's local paths
# must mean the same inside the container: the repo (where `neva-prep sample` and relative plan paths point)
# and the plan's folder are mounted at their own absolute paths; object-storage credentials pass as environment
# only. DOCKER_GPUS= runs it without a GPU.
CONTAINER_USER ?= $(if $(filter 0,$(shell id -u)),1000:1000,$(shell id -u):$(shell id -g))
DOCKER_GPUS ?= $(if $(filter podman,$(CONTAINER)),--device nvidia.com/gpu=all,--gpus all)
docker-run:
	@case "$(CONTAINER_USER)" in 0|0:*|root|root:*) echo "docker-run: the job never runs as root" \
	  "(CONTAINER_USER=$(CONTAINER_USER)); pick another user" >&2; exit 2;; esac
	$(CONTAINER) run --rm $(DOCKER_GPUS) --user $(CONTAINER_USER) \
	  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges $(CONTAINER_RUN_FLAGS) \
	  -v $(CURDIR):$(CURDIR) -v $(abspath $(dir $(PLAN))):$(abspath $(dir $(PLAN))) -w $(CURDIR) \
	  --env-file <(env | grep -E '^(AWS_|FSSPEC_|GOOGLE_)' || true) \
	  $(IMAGE) launch local $(abspath $(PLAN))

# The Dockerfile built with podman on a locally made stand-in for the NeMo image, then `--help` and the sample
# job run in the image as the manifests run it, the .nemo compared with `make run`'s (.ci/image-test.sh says
# what it proves). Root on Debian 12: it installs podman and mmdebstrap when missing. `.ci/run` runs it.
image-test: install
	VENV=$(VENV) bash .ci/image-test.sh

k8s: install
	$(BIN)/neva-prep launch k8s $(PLAN) --out $(OUT)/k8s

slurm: install
	$(BIN)/neva-prep launch slurm $(PLAN) --out $(OUT)/slurm

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache

#!/usr/bin/env bash
# make image-test: build the project's Dockerfile, unchanged, and run the sample job in the image as the
# Kubernetes manifests run it. For a fresh Debian 12 machine, as root; .ci/run calls it after `make test`.
#
#  1. podman (rootful, no daemon), runc and mmdebstrap from Debian, when missing.
#  2. A stand-in for the NeMo image (the real one is ~20 GB and needs a registry login): Debian 12 made by
#     mmdebstrap from this host's apt sources, plus the CPU torch and the numpy the NeMo image pins, installed
#     by pip as this host's pip reaches its index. Kept between runs (remove the two images to remake them).
#  3. `make docker-build` of the Dockerfile on the stand-in (no layer cache), and on the bare Debian base,
#     where it must stop with the message that the base has no torch.
#  4. The image: `--help` (as its default user, which must not be root), then `neva-prep sample` and
#     `make docker-run` of the sample plan (uid 1000, read-only root, tmpfs /tmp, no capabilities, no
#     privilege escalation, no network).
#  5. The outputs: every file written by uid 1000, and the .nemo, tokenizer and dataset JSON byte-identical to
#     what the host's `make run` writes.
#
# Facts of these machines that the flags below encode: crun refuses their hybrid cgroup layout (--runtime
# runc); root lacks CAP_SYS_RESOURCE, so the containers' ulimits must stay within root's hard limits, and
# nproc within kernel.pid_max; in OCI format podman drops the Dockerfile's SHELL (make docker-build passes
# --format docker). Builds use the host's network, containers none: no bridge or firewall rule is created.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
NUMPY_VERSION=${STANDIN_NUMPY_VERSION:-1.24.4}    # the 1.x release NGC's 24.x images (NeMo 24.05) ship
DEBIAN_IMAGE=localhost/neva-prep-debian:bookworm
STANDIN_IMAGE=localhost/neva-prep-nemo-standin:bookworm-torch${TORCH_VERSION}-numpy${NUMPY_VERSION}
IMAGE=localhost/neva-prep:image-test

if [ "$(id -u)" != "0" ]; then
  echo "image-test: needs root (rootful podman, apt-get, mmdebstrap); run it as root or with sudo -E" >&2
  exit 1
fi

fail() { echo "image-test: $*" >&2; exit 1; }
timings=()
phase_start=$SECONDS
phase() {  # phase NAME: closes the previous phase's clock and starts the next
  echo "== image-test: $1"
  phase_name=$1
  phase_start=$SECONDS
}
phase_done() { timings+=("$(printf '%-54s %4ss' "$phase_name" $((SECONDS - phase_start)))"); phase_name=; }
report() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    timings+=("$(printf '%-54s %4ss  FAILED' "$phase_name" $((SECONDS - phase_start)))")
  fi
  printf 'image-test wall times:\n'; printf '  %s\n' "${timings[@]}"
  [ -n "${work:-}" ] && rm -rf "$work"
  command -v podman >/dev/null && podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  command -v podman >/dev/null && podman image prune -f >/dev/null 2>&1 || true   # the failed build's layers
  if [ "$rc" != 0 ]; then echo "image-test: FAILED (exit $rc) in: ${phase_name:-setup}" >&2; fi
}
trap report EXIT
work=$(mktemp -d /tmp/neva-image-test.XXXXXX)
chmod 755 "$work"

# ---------------------------------------------------------------------------------------------------------
phase "install podman, runc, mmdebstrap"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman runc mmdebstrap >/dev/null
fi
podman --version
phase_done

hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$hard_nproc" = unlimited ] || [ "$hard_nproc" -gt "$pid_max" ]; then hard_nproc=$pid_max; fi
ENGINE=(--runtime runc --ulimit "nofile=$hard_nofile:$hard_nofile" --ulimit "nproc=$hard_nproc:$hard_nproc")
# pip inside the builds: this host's pip configuration and the local files it names, mounted read-only.
mapfile -t PIP_MOUNTS < <("$VENV/bin/python" .ci/pip-for-build.py "$work/pip.conf")
BUILD=(--pull=never --network host "${ENGINE[@]}" "${PIP_MOUNTS[@]}")

# ---------------------------------------------------------------------------------------------------------
phase "stand-in NeMo image (mmdebstrap + torch, numpy)"
if podman image exists "$STANDIN_IMAGE" && podman image exists "$DEBIAN_IMAGE"; then
  echo "kept from an earlier run: $STANDIN_IMAGE"
else
  # This host's Debian sources and apt network settings (proxy, CA, validity checks), no others.
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  apt-config dump | grep -E '^Acquire::((https?|ftp)::|Check-Valid-Until|Check-Date)' \
    > "$work/apt.conf" || true
  mmdebstrap --variant=minbase --aptopt="$work/apt.conf" \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$work/debian.tar" "$sources"
  podman import --change 'CMD ["/bin/bash"]' "$work/debian.tar" "$DEBIAN_IMAGE"
  rm -f "$work/debian.tar"
  podman build --format docker --layers=false "${BUILD[@]}" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg NUMPY_VERSION="$NUMPY_VERSION" \
    -f .ci/nemo-standin.Containerfile -t "$STANDIN_IMAGE" .ci
fi
phase_done

# ---------------------------------------------------------------------------------------------------------
phase "make docker-build on the stand-in"
make --no-print-directory docker-build CONTAINER=podman NEMO_IMAGE="$STANDIN_IMAGE" IMAGE="$IMAGE" \
  CONTAINER_BUILD_FLAGS="--no-cache ${BUILD[*]}"
podman image inspect --format 'image size: {{.Size}} bytes' "$IMAGE"
phase_done

phase "make docker-build on a base without torch (must fail)"
if make --no-print-directory docker-build CONTAINER=podman NEMO_IMAGE="$DEBIAN_IMAGE" IMAGE="$IMAGE-notorch" \
     CONTAINER_BUILD_FLAGS="--no-cache ${BUILD[*]}" > "$work/notorch.log" 2>&1; then
  fail "the build on $DEBIAN_IMAGE (no torch) succeeded; it must be refused"
fi
grep -F "the base image $DEBIAN_IMAGE has no torch" "$work/notorch.log" \
  || { tail -20 "$work/notorch.log"; fail "no 'has no torch' message in the failed build"; }
phase_done

# ---------------------------------------------------------------------------------------------------------
AS_MANIFESTS=(--rm "${ENGINE[@]}" --network none --user 1000:1000 --read-only --read-only-tmpfs=false
              --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

phase "run the image: --help, sample, make docker-run"
podman run --rm "${ENGINE[@]}" --network none "$IMAGE" --help > "$work/help.txt"
grep -q 'launch' "$work/help.txt" || { cat "$work/help.txt"; fail "--help lists no commands"; }
user=$(podman run --rm "${ENGINE[@]}" --network none --entrypoint id "$IMAGE" -u)
[ "$user" != 0 ] || fail "the image runs as root by default"
# a CPU limit is a quota, not a mask: worker counts must see it (neva_prep.cpus)
cpus=$(podman run --rm "${ENGINE[@]}" --network none --cpus 1 --entrypoint python "$IMAGE" \
  -c 'from neva_prep.cpus import usable_cpus; print(usable_cpus())')
[ "$cpus" = 1 ] || fail "a container limited to one CPU (--cpus 1) counts $cpus usable CPUs"

mkdir "$work/image" && chown 1000:1000 "$work/image"
podman run "${AS_MANIFESTS[@]}" -v "$work/image:$work/image" "$IMAGE" sample "$work/image/sample"
# make docker-run as root: it must hand the job uid 1000, never root.
make --no-print-directory docker-run CONTAINER=podman IMAGE="$IMAGE" PLAN="$work/image/sample/plan.yaml" \
  DOCKER_GPUS= CONTAINER_RUN_FLAGS="${ENGINE[*]} --network none --read-only-tmpfs=false"
phase_done

phase "host make run (reference outputs)"
make --no-print-directory run OUT="$work/host" > "$work/host-run.log" 2>&1 \
  || { cat "$work/host-run.log"; fail "the host's make run failed"; }
phase_done

# ---------------------------------------------------------------------------------------------------------
phase "compare outputs"
not_ours=$(find "$work/image" \( ! -uid 1000 -o ! -gid 1000 \) -print)
[ -z "$not_ours" ] || fail "written by another user than 1000:1000:"$'\n'"$not_ours"
host_out=$work/host/sample/output image_out=$work/image/sample/output
compared=0
while IFS= read -r -d '' ref; do
  rel=${ref#"$host_out"/}
  cmp "$ref" "$image_out/$rel" || fail "$rel differs from the host's make run"
  echo "identical: $rel ($(stat -c %s "$ref") bytes)"
  compared=$((compared + 1))
done < <(find "$host_out/checkpoints" "$host_out/tokenizers" -type f -print0; \
         find "$host_out/datasets" -mindepth 2 -maxdepth 2 -type f -name '*.json' \
           ! -name stats.json -print0)
ls "$host_out"/checkpoints/*.nemo >/dev/null && [ "$compared" -ge 3 ] \
  || fail "the host's make run wrote no .nemo / datasets to compare"
for rejects in "$host_out"/datasets/*/rejects.jsonl; do
  rel=${rejects#"$host_out"/}
  [ "$(wc -l < "$rejects")" = "$(wc -l < "$image_out/$rel")" ] \
    || fail "$rel: another number of rejects than the host's"
done
phase_done
echo "image-test: OK"

# neva-prep on top of the NeMo container whose NeVA / VideoNeVA loader we target.
# Build: make docker-build (NEMO_IMAGE=... to change the release; docker or podman). `make image-test` (run by
# .ci/run) builds this file unchanged on a locally made stand-in for the NeMo image (Debian 12, Python, CPU
# torch, numpy 1.x) and runs the sample job in it as the Kubernetes manifests do; the NeMo image is not pulled.
ARG NEMO_IMAGE=nvcr.io/nvidia/nemo:24.05
FROM ${NEMO_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Install only what the image lacks. The image's CUDA build of torch (and what is compiled against it) is
# pinned to the image's own version through a constraints file, so pip can never replace it; pip's default
# "only if needed" strategy leaves every other package that already satisfies us alone. A base without torch
# is refused with a message: pip would otherwise fetch a multi-GB torch that is not the image's. The
# project's constraints.txt stops pip's resolver backtracking through boto3 / botocore releases. pyarrow 26
# needs numpy 2 (its wheels declare no numpy requirement, so pip cannot see it): NeMo images keep numpy 1.x.
# The energon extra (Megatron-Energon, for `data export energon --finalize`) is in the image so that a plan
# with an `energon:` block runs in it like every other step.
ARG NEMO_IMAGE
COPY pyproject.toml README.md constraints.txt /src/neva-prep/
COPY job/ /src/neva-prep/job/
RUN python -m pip list --format=freeze > /tmp/image-packages.txt \
    && if ! grep -qiE '^torch==' /tmp/image-packages.txt; then \
         echo "error: the base image ${NEMO_IMAGE} has no torch (pip list shows none); neva-prep installs" \
              "on a NeMo container and uses its torch: set NEMO_IMAGE to one (nvcr.io/nvidia/nemo:24.05)" >&2; \
         exit 1; \
       fi \
    && grep -iE '^(torch|torchvision|torchaudio|triton|numpy|apex|transformer[-_]engine|nvidia-[a-z0-9-]+)==' \
         /tmp/image-packages.txt > /tmp/image-constraints.txt \
    && if grep -qiE '^numpy==1\.' /tmp/image-packages.txt; then \
         echo 'pyarrow<26' >> /tmp/image-constraints.txt; \
       fi \
    && python -m pip install --no-cache-dir --constraint /tmp/image-constraints.txt \
         --constraint /src/neva-prep/constraints.txt '/src/neva-prep[energon]' \
    && python -c "import torch, pyarrow, megatron.energon, neva_prep.cli; print('torch', torch.__version__, pyarrow.__version__)" \
    && rm -rf /src/neva-prep /tmp/image-packages.txt /tmp/image-constraints.txt

# Run as a non-root user (uid 1000, as the Kubernetes manifests require); HOME and TMPDIR are writable
# scratch so that a read-only root filesystem works.
RUN if ! getent passwd 1000 >/dev/null; then useradd --uid 1000 --user-group --create-home neva; fi \
    && mkdir -p /workspace/neva-prep && chown 1000:1000 /workspace/neva-prep
ENV HOME=/tmp TMPDIR=/tmp PYTHONUNBUFFERED=1
WORKDIR /workspace/neva-prep
USER 1000

ENTRYPOINT ["neva-prep"]
CMD ["--help"]

# mixtune for cloud GPUs: CUDA + cuDNN (devel, so DeepSpeed can JIT-compile its CUDA ops), a CUDA build of torch,
# DeepSpeed and mixtune, installed by .ci/install -- the same script CI runs, so CI tests what this image installs.
#   docker build -t mixtune:latest .
#   docker run --gpus all --ipc=host -v "$PWD/runs:/opt/mixtune/runs" -v mixtune-cache:/cache \
#       mixtune:latest train recipes/tk_instruct_3b.yaml
# Details, volumes and multi-node use: docs/container.md.

# The CUDA of the base image and of the torch wheel (TORCH_SPEC) must match in major version.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch build: any pip arguments, word-split by .ci/install (an index URL picks the CUDA build).
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# pip extras of mixtune (dev = pytest, ruff, hypothesis: the test suite can run inside the image).
ARG MIXTUNE_EXTRAS=dev
# GPU architectures DeepSpeed compiles its ops for (A100, H100); override for other cards.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG UID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

# python3-dev, ninja and libaio: DeepSpeed compiles its ops (fused Adam, CPU Adam, async I/O) on first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv \
        ninja-build git ca-certificates libaio-dev \
    && rm -rf /var/lib/apt/lists/*

# A non-root user (numeric, so the host can resolve it) owning the venv, the source tree and the mount points.
RUN (userdel -r ubuntu 2>/dev/null || true) \
    && (groupdel ubuntu 2>/dev/null || true) \
    && groupadd --gid "${UID}" mixtune \
    && useradd --create-home --uid "${UID}" --gid "${UID}" --shell /bin/bash mixtune \
    && mkdir -p /opt/venv /opt/mixtune/runs /cache/huggingface /cache/mixtune \
    && chown -R "${UID}:${UID}" /opt/venv /opt/mixtune /cache

USER ${UID}:${UID}
WORKDIR /opt/mixtune
RUN python3 -m venv /opt/venv

# Source, recipes and mixtures (see .dockerignore for what stays out), then the one install script.
COPY --chown=${UID}:${UID} . /opt/mixtune
RUN TORCH_SPEC="${TORCH_SPEC}" MIXTUNE_EXTRAS="${MIXTUNE_EXTRAS}" bash .ci/install \
    && python -c "import torch, deepspeed, mixtune; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"

# Caches and outputs live on mounted volumes, not in the image layers. Weights & Biases logs offline unless the
# run is given WANDB_API_KEY and WANDB_MODE=online at `docker run` time; no key is ever baked into the image.
ENV HF_HOME=/cache/huggingface \
    MIXTUNE_CACHE=/cache/mixtune \
    WANDB_MODE=offline \
    WANDB_DIR=/opt/mixtune/runs
VOLUME ["/cache", "/opt/mixtune/runs"]

ENTRYPOINT ["mixtune"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# The generation image: vLLM's official image plus the spinrun runtime. It runs
# `spin generate` (one pod per shard). vLLM pins its own torch and transformers
# (vLLM 0.31.0: torch 2.13.0, transformers <5.18), so spinrun is installed with everything
# the base image already has frozen as constraints: nothing of vLLM's stack is replaced, and
# spinrun's `train` extra (which wants a newer transformers) is not installed here.
# Build from the repository root:
#   docker buildx build -f images/generator.Dockerfile -t REG/spinrun-generator:0.1.0 .
# The default tag is built for CUDA 13.0 (NVIDIA driver >= 580); vLLM also publishes
# `-cu129` tags: --build-arg VLLM_IMAGE=vllm/vllm-openai:v0.31.0-cu129
ARG VLLM_IMAGE=vllm/vllm-openai:v0.31.0
FROM ${VLLM_IMAGE}

LABEL org.opencontainers.image.title="spinrun-generator" \
      org.opencontainers.image.description="vLLM + spinrun: the generation step of SPIN" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /opt/spinrun/src
COPY pyproject.toml README.md ./
COPY spin_runtime/ spin_runtime/
COPY operator/ operator/
# Freeze the base image's packages as constraints, then add spinrun (base dependencies only)
# and the data libraries the generation step reads prompts with.
RUN python3 -m pip list --format=freeze > /opt/spinrun/base-constraints.txt \
 && python3 -m pip install --no-cache-dir -c /opt/spinrun/base-constraints.txt \
      . \
      "datasets==5.2.0" \
 && python3 -c "import vllm, spin_runtime; print('vllm', vllm.__version__)" \
 && spin --help > /dev/null

# Non-root user 65532 (the UID the operator's pods should run as). Caches (Hugging Face,
# vLLM, Triton, torch) follow HOME / XDG_CACHE_HOME, which the operator points at writable
# volumes because step pods run with a read-only root filesystem. USER/LOGNAME let
# getpass.getuser() (torch's compile caches) work under any runAsUser.
RUN groupadd --gid 65532 spin \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/spin --shell /bin/bash spin
ENV HOME=/home/spin \
    USER=spin \
    LOGNAME=spin
USER 65532:65532
WORKDIR /home/spin

# The base image's entrypoint is `vllm serve`; the operator gives each Job its `spin ...` command.
ENTRYPOINT ["spin"]
CMD ["--help"]

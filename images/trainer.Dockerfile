# syntax=docker/dockerfile:1
# The training image: CUDA PyTorch + DeepSpeed + FlashAttention-2 + the spinrun runtime.
# It runs `spin convert`, `spin train` (torchrun, one pod per node) and `spin evaluate` (with
# lm-evaluation-harness in /opt/lm-eval for evaluation.lmEval).
# Build from the repository root:
#   docker buildx build -f images/trainer.Dockerfile -t REG/spinrun-trainer:0.1.0 .
# FlashAttention is compiled from source unless a prebuilt wheel matches (this can take an
# hour; MAX_JOBS bounds its memory use). Skip it with --build-arg INSTALL_FLASH_ATTN=false:
# training then uses PyTorch's sdpa attention (spec.training.attnImplementation: auto).
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-devel
FROM ${PYTORCH_IMAGE}

ARG INSTALL_FLASH_ATTN=true
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG MAX_JOBS=8

LABEL org.opencontainers.image.title="spinrun-trainer" \
      org.opencontainers.image.description="PyTorch + DeepSpeed + spinrun: the convert, train and evaluate steps of SPIN" \
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
# Keep the base image's CUDA build of torch (a constraint), and pin the training stack to
# the versions the test suite ran with.
RUN python -m pip list --format=freeze | grep -E '^(torch|triton)==' > /opt/spinrun/torch-constraints.txt \
 && python -m pip install --no-cache-dir -c /opt/spinrun/torch-constraints.txt \
      ".[train,deepspeed]" \
      "transformers==5.24.0" \
      "trl==1.16.0" \
      "datasets==5.2.0" \
      "accelerate==1.15.0" \
      "peft==0.21.2" \
      "deepspeed==0.19.8" \
      "gguf==0.19.0" \
      "pyarrow==26.0.1" \
      "pandas==3.1.1" \
      "matplotlib==3.11.2" \
      "tensorboard==2.21.0" \
      "pydantic==2.14.4" \
      "pyyaml==6.0.4" \
      "tqdm==4.70.1" \
 && python -c "import torch, deepspeed, trl, spin_runtime; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && spin --help > /dev/null

# FlashAttention-2 needs torch at build time, hence no build isolation (its other build
# requirements, packaging and psutil, came with accelerate above; ninja makes it compile in
# parallel).
RUN if [ "${INSTALL_FLASH_ATTN}" = "true" ]; then \
      python -m pip install --no-cache-dir -c /opt/spinrun/torch-constraints.txt "ninja==1.13.2" \
   && MAX_JOBS="${MAX_JOBS}" python -m pip install --no-cache-dir --no-build-isolation \
        -c /opt/spinrun/torch-constraints.txt "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi

# lm-evaluation-harness (evaluation.lmEval) in its own environment, as `make lmeval` makes it: its
# dependencies conflict with the kubernetes client's. It sees the base image's CUDA torch (system
# site packages, the same constraint), and the evaluate step finds it through SPIN_LM_EVAL. The
# default is the version the test suite runs; the paper's scores came from v0.4.0
# (--build-arg LM_EVAL_VERSION=0.4.0; it fetches its exact_match metric from the Hub when it starts),
# and the evaluate step warns when the harness differs from evaluation.lmEval.version.
ARG LM_EVAL_VERSION=0.4.13
RUN python -m venv --system-site-packages /opt/lm-eval \
 && /opt/lm-eval/bin/python -m pip install --no-cache-dir -c /opt/spinrun/torch-constraints.txt \
      "lm-eval[hf]==${LM_EVAL_VERSION}" \
 && /opt/lm-eval/bin/python -c "import importlib.metadata as m; print('lm-eval', m.version('lm_eval'))" \
 && /opt/lm-eval/bin/lm_eval --help > /dev/null
ENV SPIN_LM_EVAL=/opt/lm-eval/bin/lm_eval

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

ENTRYPOINT ["spin"]
CMD ["--help"]

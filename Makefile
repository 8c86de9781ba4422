# The two commands the README gives: `make demo` and `make test`. Everything else is a step of theirs.
# Every target runs in the project's virtual environment, .venv/ (created from $(BASE_PYTHON) when missing;
# its bin/ first on PATH, as `activate` would): nothing is installed into the system Python.
BASE_PYTHON ?= python3
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
# Reinstalled (editable) only when what it installs from changes.
INSTALLED := $(VENV)/.installed
# The node: containerd + runc + CNI plugins run the Pods, buildah + mmdebstrap build the images;
# prometheus-alertmanager: amtool (tests/monitoring/test_routing.py checks the documented alert routes);
# python3-venv: Debian's python3 creates no virtual environment without it; dnsmasq-base: the test bed's cluster DNS.
APT_PACKAGES = prometheus prometheus-alertmanager etcd-server iproute2 openssl procps util-linux iptables \
	containerd runc containernetworking-plugins buildah mmdebstrap python3-venv postgresql dnsmasq-base
# `$(call timed,stage,command)`: run a stage and print how long it took (CI keeps these lines).
timed = @start=$$(date +%s); $(2); rc=$$?; echo "stage $(1): $$(( $$(date +%s) - start ))s"; exit $$rc

.PHONY: run test test-tiers deps system-deps python-deps control-plane images lint unit e2e crd release bench demo

run: python-deps  ## install, then run the operator against the current kubeconfig
	$(VENV)/bin/mfl-operator

test: deps lint  ## install what the tests need, build (or reuse) Kubernetes and the images, lint, run every test
	@# Two runs: the tests off the cluster on both cores (pytest-xdist, a file per worker: 5.5 min instead of
	@# 11.6 in one process), then the cluster tier alone (its waits and timeouts assume a machine of its own).
	@# Both always run; either failing fails the target.
	@start=$$(date +%s); $(PYTHON) -m pytest -ra -m "not e2e" -n 2 --dist loadfile; rest=$$?; \
	echo "stage tests off the cluster: $$(( $$(date +%s) - start ))s"; start=$$(date +%s); \
	$(PYTHON) -m pytest -ra -m e2e; cluster=$$?; echo "stage cluster tests: $$(( $$(date +%s) - start ))s"; \
	[ $$rest -eq 0 ] && [ $$cluster -eq 0 ]

test-tiers: deps lint  ## as `test`, the cluster tier and the rest side by side (mfl_testbed/tiers.py; not CI's: see there)
	$(call timed,tests,$(PYTHON) -m mfl_testbed.tiers -ra)

lint: python-deps  ## ruff (lint + format), mypy --strict on the whole operator package ([tool.mypy]) and on the test fakes against the API they stand for and the import contracts of pyproject.toml's [tool.importlinter]
	$(call timed,lint,$(PYTHON) -m ruff check . && $(PYTHON) -m mypy && $(PYTHON) -m mypy tests/operator/fake_kube.py && $(PYTHON) -m ruff format --check . && $(VENV)/bin/lint-imports)

deps: system-deps python-deps control-plane images

system-deps:
	$(call timed,debian packages,missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || \
	  missing="$$missing $$p"; done; if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi)

python-deps: $(INSTALLED)

$(PYTHON):
	@$(BASE_PYTHON) -m venv $(VENV) || { echo "make: '$(BASE_PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	@echo "created the project's virtual environment $(VENV) ($$($(PYTHON) --version))"

$(INSTALLED): $(PYTHON) pyproject.toml testbed/pyproject.toml $(wildcard requirements/*.txt)
	$(call timed,python packages,$(PIP) install -q --upgrade pip && $(PIP) install -q -e '.[test]' -e ./testbed && touch $@)

control-plane:  ## Kubernetes 1.20 from Debian's source: control plane, kubelet, kube-proxy (cached)
	$(call timed,kubernetes build,bash testbed/mfl_testbed/build-control-plane.sh)

images:  ## the operator, server and trainer images from ./Dockerfile as OCI archives (cached by content)
	$(call timed,images,bash testbed/mfl_testbed/build-images.sh)

unit: python-deps  ## every test but the cluster tier (about 6 minutes on 2 cores)
	$(PYTHON) -m pytest -q -m "not e2e" -n 2 --dist loadfile

e2e: python-deps
	$(PYTHON) -m pytest -q -m e2e

crd: python-deps  ## regenerate crds/ from the pydantic models
	$(PYTHON) -m feedbackloop.crdgen > crds/modelfeedbackloops.feedbackloop.dev.yaml

release: python-deps  ## check that everything names pyproject.toml's version (CHANGELOG entry included), then git tag v<version>; pushes nothing
	$(PYTHON) -m tests.release.release check && $(PYTHON) -m tests.release.release tag

bench: deps
	$(PIP) install -q river
	$(VENV)/bin/mfl bench

demo: deps  ## install, then run the whole loop on this machine (a real one-node cluster, Prometheus)
	$(VENV)/bin/mfl demo


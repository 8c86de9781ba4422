# The two commands the README gives: `make demo` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES = prometheus etcd-server iproute2 openssl procps util-linux

.PHONY: run test deps system-deps python-deps control-plane unit e2e crd bench demo

run: python-deps  ## install, then run the operator against the current kubeconfig
	mfl-operator

test: deps  ## install what the tests need, build (or reuse) the control plane, run every test
	$(PYTHON) -m pytest -ra

deps: system-deps python-deps control-plane

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

python-deps:
	$(PIP) install -q -e '.[test]'

control-plane:
	bash operator/feedbackloop/localdev/build-control-plane.sh

unit:
	$(PYTHON) -m pytest -q tests/unit

e2e:
	$(PYTHON) -m pytest -q -m e2e

crd:  ## regenerate crds/ from the pydantic models
	$(PYTHON) -m feedbackloop.crdgen > crds/modelfeedbackloops.feedbackloop.dev.yaml

bench: deps
	$(PIP) install -q river
	mfl bench

demo: deps  ## install, then run the whole loop on this machine (local control plane, pods, Prometheus)
	mfl demo

.PHONY: images
images:  ## the operator, server and trainer images (one Dockerfile, buildah) + pause, as OCI archives in ~/.cache/mfl/images; cached by input hash
	bash operator/feedbackloop/localdev/build-images.sh

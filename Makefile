# The two commands the README gives: `make demo` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The node: containerd + runc + CNI plugins run the Pods, buildah + mmdebstrap build the images.
APT_PACKAGES = prometheus etcd-server iproute2 openssl procps util-linux iptables \
	containerd runc containernetworking-plugins buildah mmdebstrap
# `$(call timed,stage,command)`: run a stage and print how long it took (CI keeps these lines).
timed = @start=$$(date +%s); $(2); rc=$$?; echo "stage $(1): $$(( $$(date +%s) - start ))s"; exit $$rc

.PHONY: run test deps system-deps python-deps control-plane images lint unit e2e crd bench demo

run: python-deps  ## install, then run the operator against the current kubeconfig
	mfl-operator

test: deps lint  ## install what the tests need, build (or reuse) Kubernetes and the images, lint, run every test
	$(call timed,tests,$(PYTHON) -m pytest -ra)

lint:  ## ruff (lint + format), mypy --strict on the pure core ([tool.mypy]) and the import contracts of pyproject.toml's [tool.importlinter]
	$(call timed,lint,$(PYTHON) -m ruff check . && $(PYTHON) -m mypy && $(PYTHON) -m ruff format --check . && "$$($(PYTHON) -c 'import sys, os; print(os.path.dirname(sys.executable))')/lint-imports")

deps: system-deps python-deps control-plane images

system-deps:
	$(call timed,debian packages,missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || \
	  missing="$$missing $$p"; done; if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi)

python-deps:
	$(call timed,python packages,$(PIP) install -q -e '.[test]' -e ./testbed)

control-plane:  ## Kubernetes 1.20 from Debian's source: control plane, kubelet, kube-proxy (cached)
	$(call timed,kubernetes build,bash testbed/mfl_testbed/build-control-plane.sh)

images:  ## the operator, server and trainer images from ./Dockerfile as OCI archives (cached by content)
	$(call timed,images,bash testbed/mfl_testbed/build-images.sh)

unit:  ## every test but the cluster tier (seconds)
	$(PYTHON) -m pytest -q -m "not e2e"

e2e:
	$(PYTHON) -m pytest -q -m e2e

crd:  ## regenerate crds/ from the pydantic models
	$(PYTHON) -m feedbackloop.crdgen > crds/modelfeedbackloops.feedbackloop.dev.yaml

bench: deps
	$(PIP) install -q river
	mfl bench

demo: deps  ## install, then run the whole loop on this machine (a real one-node cluster, Prometheus)
	mfl demo


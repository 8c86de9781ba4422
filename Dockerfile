# syntax=docker/dockerfile:1
# The project's three images from one file, the repository root as the context; one target each:
#   ghcr.io/feedbackloop/mfl-operator   --target operator   entry point mfl-operator   (feedbackloop.main)
#   ghcr.io/feedbackloop/mfl-server     --target server     entry point mfl-server     (mfl_server.app)
#   ghcr.io/feedbackloop/mfl-trainer    --target trainer    entry point mfl-trainer    (mfl_trainer.main)
#
#   docker build --target server -t ghcr.io/feedbackloop/mfl-server:0.1.0 .
#   make images    # all three with buildah, cached by input hash (testbed/mfl_testbed/build-images.sh)
#
# Every image holds the one project wheel (all three packages, pure Python) installed --no-deps, plus
# only its own component's requirements (requirements/<component>.txt) in a venv, /opt/mfl. Both are
# built in stages of their own and copied in as two layers, the dependencies (changed only by the
# requirements file) and the project (a few hundred KB, changed by every code change): nothing of the
# build (wheels, pip, the build backend) reaches a final image. Stages pass files only by COPY --from,
# which buildah checksums, so `buildah bud --layers` caching stays correct (no RUN --mount=from=...).
# Run as uid/gid 65532 (`mfl`, home /nonexistent), numeric so that runAsNonRoot can check it; the root
# filesystem may be read-only.
ARG PYTHON_IMAGE=python:3.11-slim

# --- base: the interpreter, pip's settings and the user every image runs as --------------------
FROM ${PYTHON_IMAGE} AS base
LABEL org.opencontainers.image.source="https://github.com/feedbackloop/model-feedback-loop" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A real passwd/group entry: kopf's peering calls getpass.getuser(), which raises KeyError for a uid
# that /etc/passwd does not know.
RUN groupadd --system --gid 65532 mfl \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mfl

# --- wheel: the project distribution (no dependencies) -----------------------------------------
FROM base AS wheel
# The build backend in a venv of its own, in its own layer: a code change rebuilds the wheel without
# downloading it again. Keep in step with [build-system] in pyproject.toml.
RUN python -m venv --without-pip /opt/build \
 && pip --python /opt/build/bin/python install -q 'setuptools>=68' wheel
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/ requirements/
COPY operator/feedbackloop/ operator/feedbackloop/
COPY server_image/mfl_server/ server_image/mfl_server/
COPY trainer_image/mfl_trainer/ trainer_image/mfl_trainer/
COPY cli/mfl_cli/ cli/mfl_cli/
COPY contracts/mfl_contracts/ contracts/mfl_contracts/
# pyproject names README.md as the long description; the images do not need it, and leaving it out of
# the context keeps README edits from rebuilding the images.
RUN : > README.md \
 && pip --python /opt/build/bin/python wheel -q --no-deps --no-build-isolation --wheel-dir /wheel . \
 && ls /wheel/model_feedback_loop-*.whl

# --- project: the wheel alone, installed in an otherwise empty venv at the images' venv path -------
# The images copy its site-packages and console scripts over their dependencies' venv: the project is
# a small layer of its own, the same in all three images, and a code change replaces only that.
FROM base AS project
RUN python -m venv --without-pip /opt/mfl
COPY --from=wheel /wheel/ /tmp/wheel/
RUN pip --python /opt/mfl/bin/python install -q --no-deps /tmp/wheel/*.whl

# --- one dependencies venv per component, from its requirements file only ------------------------
# No pip inside the venvs: the base's pip installs into them (`pip --python`). Then, in a step of its
# own (the install stays cached), what no image runs goes: the unit tests numpy, scipy, scikit-learn
# and matplotlib ship (50-70 MB), and kubernetes' asyncio client copy, kubernetes.aio (68 MB in
# kubernetes >= 37; the operator uses the synchronous client). Each image imports its entry point at
# build time, and tests/e2e/test_images.py checks the images.
FROM base AS operator-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/operator.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/operator.txt
RUN cd /opt/mfl/lib/python3.*/site-packages \
 && for p in numpy scipy sklearn matplotlib; do [ ! -d $p ] || find $p -depth -type d -name tests -exec rm -rf {} +; done \
 && rm -rf kubernetes/aio

FROM base AS server-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/server.txt requirements/fast.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/server.txt -r /tmp/requirements/fast.txt
RUN cd /opt/mfl/lib/python3.*/site-packages \
 && for p in numpy scipy sklearn matplotlib; do [ ! -d $p ] || find $p -depth -type d -name tests -exec rm -rf {} +; done

FROM base AS trainer-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/trainer.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/trainer.txt
RUN cd /opt/mfl/lib/python3.*/site-packages \
 && for p in numpy scipy sklearn matplotlib; do [ ! -d $p ] || find $p -depth -type d -name tests -exec rm -rf {} +; done
# matplotlib's font cache, built here: the trainer may run with a read-only root filesystem.
RUN mkdir -p /opt/matplotlib \
 && MPLCONFIGDIR=/opt/matplotlib MPLBACKEND=Agg /opt/mfl/bin/python -c "import matplotlib.pyplot" \
 && chmod -R a+rX /opt/matplotlib

# --- the images ----------------------------------------------------------------------------------
FROM base AS operator
LABEL org.opencontainers.image.title="mfl-operator" \
      org.opencontainers.image.description="model-feedback-loop: the operator (kopf)"
COPY --from=operator-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import feedbackloop.main, feedbackloop.handlers"
USER 65532:65532
# 8000: the operator's metrics; 8080: kopf's liveness endpoint.
EXPOSE 8000 8080
ENTRYPOINT ["mfl-operator"]

FROM base AS server
LABEL org.opencontainers.image.title="mfl-server" \
      org.opencontainers.image.description="model-feedback-loop: the reference model server (docs/contracts.md)"
ENV MFL_PORT=8080 \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts
# The artifact store is mounted here; the folder is the user's for a run without a volume.
RUN mkdir -p /var/lib/mfl/artifacts && chown 65532:65532 /var/lib/mfl/artifacts
COPY --from=server-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import mfl_server.app"
USER 65532:65532
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["mfl-server"]

FROM base AS trainer
ARG CODE_VERSION=""
LABEL org.opencontainers.image.title="mfl-trainer" \
      org.opencontainers.image.description="model-feedback-loop: the trainer, one training Job (docs/contracts.md)"
ENV MPLBACKEND=Agg \
    MPLCONFIGDIR=/opt/matplotlib \
    OMP_WAIT_POLICY=PASSIVE \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts
COPY --from=trainer-deps /opt/matplotlib /opt/matplotlib
COPY --from=trainer-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH \
    MFL_CODE_VERSION=${CODE_VERSION}
RUN python -c "import mfl_trainer.main"
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["mfl-trainer"]

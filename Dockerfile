# syntax=docker/dockerfile:1
# The project's images from one file, the repository root as the context; one target each:
#   ghcr.io/feedbackloop/mfl-operator   --target operator   entry point mfl-operator   (feedbackloop.main)
#   ghcr.io/feedbackloop/mfl-server     --target server     entry point mfl-server     (mfl_server.app)
#   ghcr.io/feedbackloop/mfl-trainer    --target trainer    entry point mfl-trainer    (mfl_trainer.main)
#   ghcr.io/feedbackloop/mfl-sidecar    --target sidecar    entry point mfl-sidecar    (mfl_server.sidecar)
#   ghcr.io/feedbackloop/mfl-trainer-keras  --target trainer-keras  entry point mfl-trainer  the trainer with
#                                                           Keras on JAX (requirements/keras.txt), for keras_dense
#   ghcr.io/feedbackloop/mfl-server-keras   --target server-keras   entry point mfl-server   the server with
#                                                           Keras on JAX, for versions of format keras
#   ghcr.io/feedbackloop/mlserver       --target mlserver   MLServer from PyPI (requirements/mlserver.txt), tagged
#                                                           with MLServer's version; no code of ours
#   ghcr.io/feedbackloop/mfl-trainer-dask   --target trainer-dask   entry point mfl-trainer  the trainer with Dask
#                                                           (requirements/dask.txt); also runs `dask scheduler`/`dask worker`
#   ghcr.io/feedbackloop/dask-kubernetes-operator  --target dask-operator  the dask-kubernetes operator from PyPI
#                                                           (requirements/dask-operator.txt), tagged with its version
#
#   docker build --target server -t ghcr.io/feedbackloop/mfl-server:0.1.0 .
#   make images    # all of them with buildah, cached by input hash (testbed/mfl_testbed/build-images.sh)
#
# Every mfl-* image holds the one project wheel (all packages, pure Python) installed --no-deps, plus
# only its own component's requirements (requirements/<component>.txt) in a venv, /opt/mfl. Both are
# built in stages of their own and copied in as two layers, the dependencies (changed only by the
# requirements file) and the project (a few hundred KB, changed by every code change): nothing of the
# build (wheels, pip, the build backend, binutils) reaches a final image. The final images start FROM
# `runtime`, the base without pip, setuptools, perl, apt and documentation, flattened into one layer.
# Stages pass files only by COPY --from, which buildah checksums, so `buildah bud --layers` caching
# stays correct (no RUN --mount=from=...).
# Run as uid/gid 65532 (`mfl`, home /nonexistent), numeric so that runAsNonRoot can check it; the root
# filesystem may be read-only.
ARG PYTHON_IMAGE=python:3.11-slim

# --- base: the interpreter, pip's settings and the user every image runs as --------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A real passwd/group entry: kopf's peering calls getpass.getuser(), which raises KeyError for a uid
# that /etc/passwd does not know.
RUN groupadd --system --gid 65532 mfl \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mfl

# --- runtime: what the entry points need of the base, one layer ---------------------------------
# The base (202 MB) carries what builds the venvs (pip, setuptools, wheel, venv, distutils), perl (28 MB
# of libperl and 18 MB of modules, which usrmerge pulls in), apt with its crypto libraries, e2fsprogs,
# debconf, glibc's iconv modules and manuals: ~105 MB that no image runs. Removing them in a later layer
# would not make an image smaller, so this stage removes them and `runtime` copies what is left as one
# layer (~97 MB). dpkg stays, its database telling a scanner what is left; so do the shell, coreutils
# and the license texts. Packages no longer installed are skipped (a python:3.11-slim base has fewer).
# Added first: libgomp1, the OpenMP runtime LightGBM's wheel (trainer, mlserver) loads from the system
# (0.3 MB; without it `import lightgbm` fails: "libgomp.so.1: cannot open shared object file").
FROM base AS runtime-root
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN set -eu; \
    purge=""; \
    for p in python3-pip python3-pip-whl python3-setuptools python3-setuptools-whl python3-wheel \
             python3-pkg-resources python3-venv python3.11-venv python3-distutils python3-lib2to3 \
             usrmerge perl libperl5.36 perl-modules-5.36 libfile-find-rule-perl libnumber-compare-perl \
             libtext-glob-perl apt libapt-pkg6.0 gpgv debian-archive-keyring libgnutls30 libhogweed6 \
             libnettle8 libp11-kit0 libtasn1-6 libseccomp2 libxxhash0 e2fsprogs libext2fs2 libss2 logsave \
             debconf perl-base; do \
      if dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then purge="$purge $p"; fi; \
    done; \
    if [ -n "$purge" ]; then \
      dpkg --purge --force-depends --force-remove-essential --force-remove-protected $purge >/dev/null 2>&1; \
    fi; \
    site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/_distutils_hack \
      "$site"/pkg_resources "$site"/wheel "$site"/wheel-* "$site"/distutils-precedence.pth \
      /usr/lib/python3/dist-packages/* /usr/local/bin/pip /usr/local/bin/pip3 \
      /var/lib/apt /var/cache/apt /var/cache/debconf /var/log/* /usr/share/man /usr/share/info \
      /usr/share/locale /usr/share/lintian /usr/lib/x86_64-linux-gnu/gconv \
      /usr/lib/python3.11/ensurepip /usr/lib/python3.11/idlelib /usr/lib/python3.11/turtledemo \
      /usr/local/lib/python3.11/ensurepip /usr/local/lib/python3.11/idlelib; \
    python -c "import ssl, sqlite3, ctypes, zoneinfo, lzma, bz2, uuid, decimal, json, getpass; ctypes.CDLL('libgomp.so.1')" \
      && ! command -v pip && ! command -v perl && ! command -v apt-get

FROM scratch AS runtime
COPY --from=runtime-root / /
LABEL org.opencontainers.image.source="https://github.com/feedbackloop/model-feedback-loop" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
CMD ["python3"]

# --- build: the base and binutils, for the stages that build the venvs -------------------------
# `slim-venv <venv>` removes from a venv's site-packages what no image runs: the test suites numpy,
# scipy, scikit-learn, matplotlib and pandas ship (50-70 MB), and debug sections: aiohttp, uvloop,
# multidict, frozenlist and propcache ship their C extensions with them (uvloop's loop.so: 13.6 MB,
# 1.9 MB without; 18 MB in the sidecar's and the server's venvs). Only files carrying .debug_* sections
# and no RPATH are stripped: an RPATH means auditwheel patched the file (numpy's, scipy's), and strip
# may corrupt a patched file. libgomp1 as in `runtime`: the deps stages import what they installed.
FROM base AS build
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends binutils libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN printf '%s\n' '#!/bin/sh' 'set -eu' 'cd "$1"/lib/python3.*/site-packages' \
      'for p in numpy scipy sklearn matplotlib pandas; do [ ! -d $p ] || find $p -depth -type d -name tests -exec rm -rf {} +; done' \
      'find . -name "*.so*" -type f | while read -r f; do' \
      '  readelf -S "$f" 2>/dev/null | grep -q "\.debug_" || continue' \
      '  readelf -d "$f" 2>/dev/null | grep -q -e RPATH -e RUNPATH && continue' \
      '  strip --strip-debug "$f"' \
      'done' > /usr/local/bin/slim-venv \
 && chmod +x /usr/local/bin/slim-venv

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
COPY keras_model/mfl_keras/ keras_model/mfl_keras/
# pyproject names README.md as the long description; the images do not need it, and leaving it out of
# the context keeps README edits from rebuilding the images.
RUN : > README.md \
 && pip --python /opt/build/bin/python wheel -q --no-deps --no-build-isolation --wheel-dir /wheel . \
 && ls /wheel/model_feedback_loop-*.whl

# --- project: the wheel alone, installed in an otherwise empty venv at the images' venv path -------
# The images copy its site-packages and console scripts over their dependencies' venv: the project is
# a small layer of its own, the same in all images, and a code change replaces only that.
FROM base AS project
RUN python -m venv --without-pip /opt/mfl
COPY --from=wheel /wheel/ /tmp/wheel/
RUN pip --python /opt/mfl/bin/python install -q --no-deps /tmp/wheel/*.whl

# --- one dependencies venv per component, from its requirements file only ------------------------
# No pip inside the venvs: the base's pip installs into them (`pip --python`). Then, in a step of its
# own (the install stays cached), what no image runs goes (slim-venv, above), and for the operator
# kubernetes' asyncio client copy, kubernetes.aio (68 MB in kubernetes >= 37; the operator uses the synchronous client).
# Each image imports its entry point at build time, and tests/e2e/test_images.py checks the images.
FROM build AS operator-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/operator.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/operator.txt
RUN slim-venv /opt/mfl && rm -rf /opt/mfl/lib/python3.*/site-packages/kubernetes/aio

FROM build AS server-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/server.txt requirements/fast.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/server.txt -r /tmp/requirements/fast.txt
RUN slim-venv /opt/mfl

FROM build AS trainer-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/trainer.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/trainer.txt
RUN slim-venv /opt/mfl
# matplotlib's font cache, built here: the trainer may run with a read-only root filesystem.
RUN mkdir -p /opt/matplotlib \
 && MPLCONFIGDIR=/opt/matplotlib MPLBACKEND=Agg /opt/mfl/bin/python -c "import matplotlib.pyplot" \
 && chmod -R a+rX /opt/matplotlib

# The feedback sidecar: aiohttp, prometheus-client, orjson and uvloop, nothing numeric; for s3 mode minio
# and psycopg (the labels' ledger), as the server.
FROM build AS sidecar-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/sidecar.txt requirements/fast.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/sidecar.txt -r /tmp/requirements/fast.txt
RUN slim-venv /opt/mfl

# MLServer and its sklearn, lightgbm and xgboost runtimes (requirements/mlserver.txt), in /opt/mlserver.
# mlserver-xgboost goes in --no-deps: it requires `xgboost`, whose manylinux wheel requires
# nvidia-nccl-cu12 (~300 MB of CUDA collective-communication library that a CPU Pod never loads);
# xgboost-cpu, listed in the file, is the same `xgboost` module built without it. mlserver-xgboost
# imports only mlserver, xgboost (and its scikit-learn API) and numpy/pandas, all installed by the
# first step. The check fails the build if CUDA came in after all.
FROM build AS mlserver-deps
RUN python -m venv --without-pip /opt/mlserver
COPY requirements/mlserver.txt /tmp/requirements/
RUN cd /tmp/requirements \
 && grep -v '^mlserver-xgboost' mlserver.txt > mlserver-main.txt \
 && pip --python /opt/mlserver/bin/python install -q -r mlserver-main.txt \
 && pip --python /opt/mlserver/bin/python install -q --no-deps $(grep '^mlserver-xgboost' mlserver.txt) \
 && ! pip --python /opt/mlserver/bin/python list 2>/dev/null | grep -i -e nvidia -e '^xgboost ' \
 && /opt/mlserver/bin/python -c "import mlserver_sklearn, mlserver_lightgbm, mlserver_xgboost"
RUN slim-venv /opt/mlserver

# --- the images ----------------------------------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="mfl-operator" \
      org.opencontainers.image.description="model-feedback-loop: the operator (kopf)"
COPY --from=operator-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import feedbackloop.main, feedbackloop.runtime.handlers"
USER 65532:65532
# 8000: the operator's metrics; 8080: kopf's liveness endpoint.
EXPOSE 8000 8080
ENTRYPOINT ["mfl-operator"]

FROM runtime AS server
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
# s3 mode imports its clients lazily: check here that the image has them, and the init container's mfl-fetch.
RUN python -c "import mfl_server.app; import psycopg, psycopg_pool, minio, mfl_server.fetch, mfl_server.ledger_labels" \
 && command -v mfl-fetch
USER 65532:65532
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["mfl-server"]

FROM runtime AS trainer
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

FROM runtime AS mlserver
LABEL org.opencontainers.image.title="mlserver" \
      org.opencontainers.image.description="MLServer from PyPI with its sklearn, lightgbm and xgboost runtimes (requirements/mlserver.txt), built for model-feedback-loop"
# No ENTRYPOINT: the operator runs `mlserver start <version folder>` as the container's args. MLServer
# writes nothing but its metrics (MLSERVER_METRICS_DIR) and temporary files (TMPDIR); on a read-only
# root filesystem the operator points both at the Pod's scratch emptyDir.
COPY --from=mlserver-deps /opt/mlserver /opt/mlserver
ENV PATH=/opt/mlserver/bin:$PATH
RUN mlserver --version && python -c "import mlserver_sklearn, mlserver_lightgbm, mlserver_xgboost"
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 8082
CMD ["mlserver", "start", "/mnt/models"]

# Last, as the other images do not need it: the feedback sidecar beside any V2 server.
FROM runtime AS sidecar
LABEL org.opencontainers.image.title="mfl-sidecar" \
      org.opencontainers.image.description="model-feedback-loop: the feedback sidecar beside a V2 model server (docs/contracts.md)"
ENV MFL_PORT=8080 \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts
RUN mkdir -p /var/lib/mfl/artifacts && chown 65532:65532 /var/lib/mfl/artifacts
COPY --from=sidecar-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import mfl_server.sidecar; import psycopg, psycopg_pool, minio, mfl_server.fetch, mfl_server.ledger_labels" \
 && command -v mfl-fetch
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["mfl-sidecar"]

# --- the Keras images: the seed's dense -> dropout -> sigmoid network (estimator keras_dense) -----------
# Last, and only here: the default trainer and server carry neither Keras nor JAX (~460 MB: jaxlib alone
# is 349 MB; docs/contracts.md, "Keras models", for the backend's choice). The deps stages start from the
# default ones (their layers are shared and cached) and add requirements/keras.txt, resolved together with
# the component's file. keras.json is written here: the root filesystem is read-only at run time and
# HOME is /nonexistent, so KERAS_HOME names this folder, which holds the config Keras would otherwise try
# to write on import. Saving and unpickling a network goes through a temporary .keras file (TMPDIR: the
# operator points it at the Pod's scratch emptyDir).
FROM trainer-deps AS trainer-keras-deps
COPY requirements/trainer.txt requirements/keras.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/trainer.txt -r /tmp/requirements/keras.txt
RUN slim-venv /opt/mfl
RUN mkdir -p /opt/keras \
 && printf '{"backend": "jax", "floatx": "float32", "epsilon": 1e-07, "image_data_format": "channels_last"}\n' \
      > /opt/keras/keras.json \
 && chmod -R a+rX /opt/keras

FROM server-deps AS server-keras-deps
COPY requirements/server.txt requirements/fast.txt requirements/keras.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/server.txt -r /tmp/requirements/fast.txt \
      -r /tmp/requirements/keras.txt
RUN slim-venv /opt/mfl
RUN mkdir -p /opt/keras \
 && printf '{"backend": "jax", "floatx": "float32", "epsilon": 1e-07, "image_data_format": "channels_last"}\n' \
      > /opt/keras/keras.json \
 && chmod -R a+rX /opt/keras

# Like `trainer` and `server`, from the Keras deps stages, with KERAS_BACKEND and KERAS_HOME; the build
# imports Keras through mfl_keras and fails if the backend is not JAX. (mfl_keras defaults KERAS_BACKEND
# to jax and XLA_FLAGS to one CPU thread itself: the ENV states the backend for anyone reading the image.)
FROM runtime AS trainer-keras
ARG CODE_VERSION=""
LABEL org.opencontainers.image.title="mfl-trainer-keras" \
      org.opencontainers.image.description="model-feedback-loop: the trainer with Keras (JAX backend), for estimator keras_dense"
ENV MPLBACKEND=Agg \
    MPLCONFIGDIR=/opt/matplotlib \
    OMP_WAIT_POLICY=PASSIVE \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts \
    KERAS_BACKEND=jax \
    KERAS_HOME=/opt/keras
COPY --from=trainer-deps /opt/matplotlib /opt/matplotlib
COPY --from=trainer-keras-deps /opt/keras /opt/keras
COPY --from=trainer-keras-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH \
    MFL_CODE_VERSION=${CODE_VERSION}
RUN python -c "import mfl_trainer.main, mfl_keras.classifier as k; assert k.keras_module().backend.backend() == 'jax'"
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["mfl-trainer"]

FROM runtime AS server-keras
LABEL org.opencontainers.image.title="mfl-server-keras" \
      org.opencontainers.image.description="model-feedback-loop: the reference model server with Keras (JAX backend), for versions of format keras"
ENV MFL_PORT=8080 \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts \
    KERAS_BACKEND=jax \
    KERAS_HOME=/opt/keras
RUN mkdir -p /var/lib/mfl/artifacts && chown 65532:65532 /var/lib/mfl/artifacts
COPY --from=server-keras-deps /opt/keras /opt/keras
COPY --from=server-keras-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import mfl_server.app, mfl_keras.classifier as k; assert k.keras_module().backend.backend() == 'jax'; import psycopg, psycopg_pool, minio, mfl_server.fetch, mfl_server.ledger_labels" \
 && command -v mfl-fetch
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["mfl-server"]

# --- the Dask engine (retraining.engine: Dask): the dask-kubernetes operator and the trainer with Dask ---------
# Last, as no other image needs them. The operator is upstream's kopf controller from PyPI, no code of ours (as
# mlserver): its image's hash covers only this file and requirements/dask-operator.txt. kopf's liveness endpoint
# on 8080; uid 65532 has a passwd entry (base), which kopf's peering identity needs.
FROM build AS dask-operator-deps
RUN python -m venv --without-pip /opt/mfl
COPY requirements/dask-operator.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/dask-operator.txt
RUN slim-venv /opt/mfl

FROM runtime AS dask-operator
LABEL org.opencontainers.image.title="dask-kubernetes-operator" \
      org.opencontainers.image.description="The dask-kubernetes operator (DaskCluster, DaskJob) from PyPI (requirements/dask-operator.txt), built for model-feedback-loop"
COPY --from=dask-operator-deps /opt/mfl /opt/mfl
ENV PATH=/opt/mfl/bin:$PATH
RUN python -c "import dask_kubernetes.operator.controller" && command -v kopf
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "-m", "dask_kubernetes.operator.controller"]
CMD ["--liveness=http://0.0.0.0:8080/healthz", "--all-namespaces"]

# The trainer with Dask (requirements/dask.txt on top of the trainer's, resolved together): the DaskJob's runner
# (entry point mfl-trainer), and with `command: [dask, scheduler]` / `[dask, worker, ...]` the cluster's
# scheduler and workers. lightgbm.dask imports dask.dataframe (pandas, pyarrow) at fit time: checked here.
FROM trainer-deps AS trainer-dask-deps
COPY requirements/trainer.txt requirements/dask.txt /tmp/requirements/
RUN pip --python /opt/mfl/bin/python install -q -r /tmp/requirements/trainer.txt -r /tmp/requirements/dask.txt
RUN slim-venv /opt/mfl

FROM runtime AS trainer-dask
ARG CODE_VERSION=""
LABEL org.opencontainers.image.title="mfl-trainer-dask" \
      org.opencontainers.image.description="model-feedback-loop: the trainer with Dask, for retraining.engine Dask (runner, scheduler and workers)"
ENV MPLBACKEND=Agg \
    MPLCONFIGDIR=/opt/matplotlib \
    OMP_WAIT_POLICY=PASSIVE \
    MFL_STORAGE_ROOT=/var/lib/mfl/artifacts
COPY --from=trainer-deps /opt/matplotlib /opt/matplotlib
COPY --from=trainer-dask-deps /opt/mfl /opt/mfl
COPY --from=project /opt/mfl/lib/ /opt/mfl/lib/
COPY --from=project /opt/mfl/bin/mfl* /opt/mfl/bin/
ENV PATH=/opt/mfl/bin:$PATH \
    MFL_CODE_VERSION=${CODE_VERSION}
RUN python -c "import mfl_trainer.main, dask.dataframe, distributed, lightgbm.dask" && command -v dask
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["mfl-trainer"]

#!/usr/bin/env bash
# Builds the project's images (operator, server, trainer, mlserver, sidecar, the Keras estimator's
# trainer-keras and server-keras, and the Dask engine's trainer-dask and dask-operator) from the root Dockerfile with
# buildah, and the pause image, as OCI archives that containerd imports (there is no registry). Run by `make images`
# and by mfl_testbed.images.ensure_images(); needs root, buildah and (on a machine without the
# base image) mmdebstrap:  apt-get install buildah mmdebstrap containerd runc containernetworking-plugins iptables
# Recipe and pitfalls: shared/notes/real-node.md.
#
#   build-images.sh [operator|server|trainer|mlserver|sidecar|trainer-keras|server-keras|trainer-dask|dask-operator ...]
#                   (default: all nine, in that order: the Keras and Dask images, the heaviest, last)
#
# Cached by input hash: one sha256 over the content of every input file (Dockerfile, .dockerignore,
# pyproject.toml, requirements/*.txt, the package trees the project wheel holds: `git ls-files -co
# --exclude-standard` in a checkout, else find) and the base image's ID. The mlserver image holds no code of ours: its hash
# covers only the Dockerfile, requirements/mlserver.txt and the base, so a code change does not rebuild
# it; nor does the dask-operator image's (ghcr.io/feedbackloop/dask-kubernetes-operator, tagged with
# dask-kubernetes' version): the Dockerfile, requirements/dask-operator.txt and the base. An image whose archive exists and whose stamp records the same hash is not built again;
# buildah's layer cache (`--layers`) makes a rebuild after a code change reuse the dependency layers.
# At the end, a table of every image's size (unpacked, and its archive's: compressed layers).
#
# Output, in ${MFL_CACHE:-$HOME/.cache/mfl}/images/, per image <image> (mfl-operator, mfl-server,
# mfl-trainer, mfl-sidecar, mlserver, mfl-trainer-keras, mfl-server-keras, mfl-trainer-dask,
# dask-kubernetes-operator):
#   <image>.tar       OCI archive holding both tags of the image (its index names each one):
#                       ghcr.io/feedbackloop/<image>:dev-<hash12>   the content tag: deploy this one
#                       ghcr.io/feedbackloop/<image>:<version>      the project version (pyproject.toml);
#                                                                   for mlserver, MLServer's version;
#                                                                   for dask-kubernetes-operator, its version
#   <image>.ref       those two references, one a line, the dev-<hash12> one first. A consumer reads the
#                     first line to learn the reference to deploy (images.ensure_images() does), and
#                     may skip importing an archive whose references its store already has.
#   <image>.hash      the full input hash (the stamp), written last: only a complete build is cached.
#   pause.tar, pause.ref   k8s.gcr.io/pause:3.2 (containerd's sandbox image), built once.
#   base-rootfs.tar   the base image's root filesystem (mmdebstrap), so that another machine with this
#                     cache imports it in seconds instead of building it.
# The images also stay in buildah's local storage under both tags.
set -euo pipefail

CACHE="${MFL_CACHE:-$HOME/.cache/mfl}"
OUT="$CACHE/images"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${MFL_REPO:-$(cd "$HERE/../.." && pwd)}"   # testbed/mfl_testbed -> the checkout
REGISTRY="ghcr.io/feedbackloop"
BASE_IMAGE="docker.io/library/python:3.11-slim"
PAUSE_IMAGE="k8s.gcr.io/pause:3.2"
PAUSE_C="${K8S_SRC:-$CACHE/k8s-build/gopath/src/k8s.io/kubernetes}/build/pause/linux/pause.c"
INPUTS=(Dockerfile .dockerignore pyproject.toml requirements operator/feedbackloop server_image/mfl_server
        trainer_image/mfl_trainer cli/mfl_cli contracts/mfl_contracts keras_model/mfl_keras)
export LC_ALL=C

step() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "build-images: $*" >&2; exit 1; }
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  die "$1 is missing; install what the images and the node need:
  apt-get install buildah mmdebstrap containerd runc containernetworking-plugins iptables"
}

need buildah
[ -f "$REPO/Dockerfile" ] && [ -f "$REPO/pyproject.toml" ] ||
  die "no Dockerfile in $REPO: the images are built from a checkout of the project (set MFL_REPO)"
COMPONENTS=("$@")
[ ${#COMPONENTS[@]} -gt 0 ] ||
  COMPONENTS=(operator server trainer mlserver sidecar trainer-keras server-keras trainer-dask dask-operator)
for name in "${COMPONENTS[@]}"; do
  case "$name" in operator|server|trainer|mlserver|sidecar|trainer-keras|server-keras|trainer-dask|dask-operator) ;;
    *) die "unknown image '$name' (operator, server, trainer, mlserver, sidecar, trainer-keras, server-keras,
  trainer-dask or dask-operator)";; esac
done
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' "$REPO/pyproject.toml")
[ -n "$VERSION" ] || die "no version in $REPO/pyproject.toml"
MLSERVER_VERSION=$(awk -F'==' '$1 == "mlserver" {print $2; exit}' "$REPO/requirements/mlserver.txt")
[ -n "$MLSERVER_VERSION" ] || die "no mlserver==<version> pin in $REPO/requirements/mlserver.txt"
DASK_OPERATOR_VERSION=$(awk -F'==' '$1 == "dask-kubernetes" {print $2; exit}' "$REPO/requirements/dask-operator.txt")
[ -n "$DASK_OPERATOR_VERSION" ] || die "no dask-kubernetes==<version> pin in $REPO/requirements/dask-operator.txt"
mkdir -p "$OUT"
exec 9>"$OUT/build.lock"
flock 9   # one build at a time per cache (images.py holds a lock of its own, ensure.lock, around this)

# ---- the base image: python:3.11-slim without a registry (Debian bookworm's python3.11 via mmdebstrap) ----
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  rootfs="$OUT/base-rootfs.tar"
  if [ ! -s "$rootfs" ]; then
    need mmdebstrap
    [ "$(id -u)" = 0 ] || die "building the base image needs root (mmdebstrap --mode=root)"
    step "building the base root filesystem with mmdebstrap (60-100 s)"
    # The mirrors apt already uses on this machine (deb822 sources first, then sources.list).
    mirrors() {
      { awk '/^URIs:/{for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources
        awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) {print $i; break}}' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list; } 2>/dev/null || true
    }
    MIRROR=$(mirrors | grep -v security | head -1 || true)
    SEC=$(mirrors | grep security | head -1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    SEC=${SEC:-http://security.debian.org/debian-security}
    partial="$OUT/base-rootfs.partial.tar"   # mmdebstrap picks the format from the extension
    nice -n 19 mmdebstrap --variant=minbase --mode=root \
      --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
      --customize-hook='for b in python python3; do ln -sf /usr/bin/python3 "$1"/usr/local/bin/$b; done; for b in pip pip3; do ln -sf /usr/bin/pip3 "$1"/usr/local/bin/$b; done' \
      --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log' \
      bookworm "$partial" \
      "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SEC bookworm-security main"
    mv "$partial" "$rootfs"
  fi
  step "importing $BASE_IMAGE from $rootfs"
  c=$(buildah from scratch)
  buildah add "$c" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --env PYTHON_VERSION=3.11 --cmd python3 --os linux --arch amd64 "$c"
  buildah commit -q --rm "$c" "$BASE_IMAGE" >/dev/null
fi
BASE_ID=$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE")

# ---- pause: Kubernetes' own pause.c, static, in a scratch image (containerd's sandbox_image) ----
if [ ! -s "$OUT/pause.tar" ]; then
  if ! buildah inspect --type image "$PAUSE_IMAGE" >/dev/null 2>&1; then
    need gcc
    [ -f "$PAUSE_C" ] || die "$PAUSE_C is missing: it comes with the Kubernetes source tree that
  build-control-plane.sh unpacks (run it first, or set K8S_SRC to a kubernetes source tree)"
    step "building $PAUSE_IMAGE from $PAUSE_C"
    work=$(mktemp -d)
    gcc -Os -Wall -Werror -static -DVERSION=v3.4-local -o "$work/pause" "$PAUSE_C"
    strip "$work/pause"
    c=$(buildah from scratch)
    buildah copy "$c" "$work/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --os linux --arch amd64 "$c"
    buildah commit -q --rm "$c" "$PAUSE_IMAGE" >/dev/null
    rm -rf "$work"
  fi
  buildah push -q "$PAUSE_IMAGE" "oci-archive:$OUT/pause.partial.tar:$PAUSE_IMAGE"
  echo "$PAUSE_IMAGE" > "$OUT/pause.ref"
  mv "$OUT/pause.partial.tar" "$OUT/pause.tar"
  echo "pause: $OUT/pause.tar"
fi

# ---- the input hash ----
input_files() {   # NUL-separated paths relative to $REPO, of the files the build context holds of "$@"
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard -- "$@"
  else
    find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0
  fi
}
input_hash() {   # the sha256 over the content of the input files among "$@" and the base image's ID
  cd "$REPO"
  { input_files "$@" | sort -z -u | while IFS= read -r -d '' f; do
      [ -f "$f" ] && printf '%s\0' "$f"   # listed by git but deleted in the work tree: not an input
    done | xargs -0 -r sha256sum
    echo "base $BASE_ID"
  } | sha256sum | cut -c1-64
}
HASH=$(input_hash "${INPUTS[@]}")
MLSERVER_HASH=$(input_hash Dockerfile requirements/mlserver.txt)
DASK_OPERATOR_HASH=$(input_hash Dockerfile requirements/dask-operator.txt)

# ---- the images ----
# RUN steps reach PyPI through the host network (chroot isolation); the egress proxy's CA comes from the
# host's trust store, bind-mounted for the build only, never baked in. The Dockerfile uses only
# COPY --from between stages (checksummed), never RUN --mount=type=bind,from=...: buildah 1.28 reuses a
# cached layer of the latter after its source changed (buildah#4522), so --layers is safe here.
status=0 failed=""
for name in "${COMPONENTS[@]}"; do
  if [ "$name" = mlserver ]; then
    file=mlserver hash=$MLSERVER_HASH version=$MLSERVER_VERSION
  elif [ "$name" = dask-operator ]; then
    file=dask-kubernetes-operator hash=$DASK_OPERATOR_HASH version=$DASK_OPERATOR_VERSION
  else
    file=mfl-$name hash=$HASH version=$VERSION
  fi
  image="$REGISTRY/$file"
  TAG="dev-${hash:0:12}"
  dev_ref="$image:$TAG"
  version_ref="$image:$version"
  archive="$OUT/$file.tar"
  stamp="$OUT/$file.hash"
  ref_file="$OUT/$file.ref"
  if [ -s "$archive" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] &&
     [ "$(head -1 "$ref_file" 2>/dev/null)" = "$dev_ref" ]; then
    if ! buildah inspect --type image "$dev_ref" >/dev/null 2>&1; then
      # The cache came without buildah's storage (another machine, a wiped storage): load it back.
      id=$(buildah pull -q "oci-archive:$archive:$dev_ref")
      buildah tag "$id" "$dev_ref" "$version_ref"
    fi
    echo "$file: cached (hash ${hash:0:12}) $archive"
    continue
  fi
  step "building $file ($dev_ref)"
  rm -f "$stamp"
  args=()
  case "$name" in trainer|trainer-keras|trainer-dask) args+=(--build-arg "CODE_VERSION=$TAG");; esac
  start=$(date +%s)
  if ! nice -n 19 buildah bud --isolation chroot --pull=never --layers -v /etc/ssl/certs:/etc/ssl/certs:ro \
       --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "${args[@]}" --target "$name" \
       -t "$version_ref" -t "$dev_ref" -f "$REPO/Dockerfile" "$REPO"; then
    echo "$file: BUILD FAILED" >&2
    status=1 failed="$failed $name"
    continue
  fi
  built=$(( $(date +%s) - start ))
  # Both tags in one archive: an OCI layout gets one index entry per reference, then becomes the tar.
  layout="$OUT/.$file.oci"
  rm -rf "$layout"
  buildah push -q "$dev_ref" "oci:$layout:$dev_ref"
  buildah push -q "$version_ref" "oci:$layout:$version_ref"
  tar -C "$layout" -cf "$OUT/$file.partial.tar" oci-layout index.json blobs
  rm -rf "$layout"
  mv "$OUT/$file.partial.tar" "$archive"
  printf '%s\n%s\n' "$dev_ref" "$version_ref" > "$ref_file"
  echo "$hash" > "$stamp"
  # Earlier content tags of this image: untagged, so that buildah's storage does not grow with every
  # code change (the layer cache stays; an image a container still uses stays too).
  for old in $(buildah images --noheading --format '{{.Name}}:{{.Tag}}' --filter "reference=$image"); do
    case "$old" in "$image:dev-"*) [ "$old" = "$dev_ref" ] || buildah rmi "$old" >/dev/null 2>&1 || true;; esac
  done
  size=$(buildah images --noheading --format '{{.Size}}' "$dev_ref")   # no `| head`: SIGPIPE under pipefail
  size=${size%%$'\n'*}
  echo "$file: built in $built s, $size ($dev_ref) $(( $(date +%s) - start - built )) s to export $archive"
done

# ---- the sizes: unpacked (what buildah and containerd store) and the archive (compressed layers) ----
echo
printf '%-18s %10s %10s  %s\n' IMAGE SIZE ARCHIVE REFERENCE
for name in "${COMPONENTS[@]}"; do
  file=mfl-$name
  [ "$name" = mlserver ] && file=mlserver
  [ "$name" = dask-operator ] && file=dask-kubernetes-operator
  ref=$(head -1 "$OUT/$file.ref" 2>/dev/null || true)
  size=-
  if [ -n "$ref" ] && buildah inspect --type image "$ref" >/dev/null 2>&1; then
    size=$(buildah images --noheading --format '{{.Size}}' "$ref")
    size=${size%%$'\n'*}
  fi
  archive=-
  [ -s "$OUT/$file.tar" ] && archive="$(( $(stat -c %s "$OUT/$file.tar") / 1000000 )) MB"
  case " $failed " in *" $name "*) ref="(build failed; the archive, if any, is an older build)";; esac
  printf '%-18s %10s %10s  %s\n' "$file" "$size" "$archive" "${ref:-(not built)}"
done
exit $status

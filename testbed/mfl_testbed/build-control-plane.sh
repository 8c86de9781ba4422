#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and the node's kubelet and
# kube-proxy (v1.20.2) from Debian's
# `kubernetes` source package and caches them. Idempotent: exits at once when the cache is complete.
# Recipe and pitfalls: shared/notes/local-control-plane.md. Ships in the package (mfl_testbed)
# so that `mfl demo` can build the control plane too; needs root (apt-get).
set -euo pipefail

CACHE="${MFL_CACHE:-$HOME/.cache/mfl}"
OUT="$CACHE/k8s-1.20.2/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

complete() { for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
export DEBIAN_FRONTEND=noninteractive

if complete; then
  # The binaries may come from a restored cache on a machine without etcd.
  if ! command -v etcd >/dev/null; then
    step "installing etcd"
    apt-get update -qq
    apt-get install -y -qq etcd-server >/dev/null
  fi
  echo "control plane: cached in $OUT"
  exit 0
fi

step "enabling Debian source packages"
if ! grep -rqs 'deb-src' /etc/apt/sources.list.d/ /etc/apt/sources.list; then
  cat > /etc/apt/sources.list.d/mfl-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
step "installing Go 1.19, etcd and build tools"
apt-get install -y -qq golang-1.19-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev >/dev/null

WORK="$CACHE/k8s-build"
SRC="$WORK/gopath/src/k8s.io/kubernetes"
mkdir -p "$WORK"
if [ ! -d "$SRC/cmd" ]; then
  step "downloading the kubernetes source package"
  (cd "$WORK" && apt-get source --download-only kubernetes >/dev/null)
  tarball=$(ls "$WORK"/kubernetes_*.orig.tar.gz | head -1)
  mkdir -p "$SRC"
  step "unpacking $(basename "$tarball")"
  tar -xzf "$tarball" -C "$SRC" --strip-components=1
  # The vendored reflect2 1.0.1 crashes the apiserver under Go >= 1.18 (fault in mapiterinit).
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$SRC/vendor/github.com/modern-go/reflect2"
  find "$SRC/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
fi

step "building (about 7 minutes on 2 cores from a cold Go cache; only what is missing when some are cached)"
cd "$SRC"
export PATH="/usr/lib/go-1.19/bin:$PATH"
unset GOPATH GOFLAGS
make generated_files >/dev/null
mkdir -p "$OUT"
missing=(); for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
step "building ${missing[*]}"
make WHAT="$(printf 'cmd/%s ' "${missing[@]}")"
for b in "${missing[@]}"; do cp "_output/bin/$b" "$OUT/$b"; done
step "control plane built into $OUT"

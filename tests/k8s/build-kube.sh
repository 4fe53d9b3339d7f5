#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager (v1.20) offline from Debian bookworm's `kubernetes`
# source package, which carries the upstream tree with vendor/. The binaries are cached outside the repo
# (FTJ_KUBE_CACHE, default ~/.cache/finetune-operator/kube-1.20) so later runs skip the ~5-10 minute build;
# cache that directory in CI (only bin/ is kept, about 210 MB). It also makes sure the runtime tools the
# tests need are installed: etcd (etcd-server), kubectl (kubernetes-client, only if none is on PATH) and
# openssl. System apt sources are left untouched: the deb-src list lives in a private directory.
# Needs Debian bookworm (its Go 1.19 builds this tree) and root or passwordless sudo for apt-get.
# FTJ_KUBE_KEEP_SRC=1 keeps the 2 GB source tree after a build.
set -euo pipefail

CACHE=${FTJ_KUBE_CACHE:-$HOME/.cache/finetune-operator/kube-1.20}
BIN=$CACHE/bin
SUDO=
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Runtime tools, checked on every run: a restored CI cache brings the binaries but not the packages.
runtime=()
command -v etcd >/dev/null || runtime+=(etcd-server)
command -v openssl >/dev/null || runtime+=(openssl)
command -v kubectl >/dev/null || runtime+=(kubernetes-client)
if [ ${#runtime[@]} -gt 0 ]; then
  echo "installing ${runtime[*]}"
  apt_install "${runtime[@]}"
fi

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  echo "kube binaries cached in $BIN"
  exit 0
fi

# Two test sessions starting at once must not build into the same tree.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  echo "kube binaries cached in $BIN (built by a concurrent run)"
  exit 0
fi

if ! command -v go >/dev/null || ! command -v dpkg-source >/dev/null || ! command -v make >/dev/null \
   || ! command -v rsync >/dev/null || [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] \
   || [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  apt_install golang-go rsync jq make dpkg-dev debian-archive-keyring golang-github-modern-go-reflect2-dev
fi

SRC=$CACHE/src
APT=$SRC/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$BIN"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
  > "$APT/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
if [ "$(id -u)" != 0 ]; then apt_private+=(-o Debug::NoLocking=1); fi
tree=$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
if [ -z "$tree" ]; then
  apt-get "${apt_private[@]}" update -qq
  (cd "$SRC" && apt-get "${apt_private[@]}" source -qq kubernetes)
  tree=$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
fi

# The vendored reflect2 1.0.1 breaks on Go >= 1.18; Debian ships a fixed copy.
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"

cd "$tree"
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean GOFLAGS=-mod=vendor GO111MODULE=on
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
# Copy then rename, so an interrupted copy never looks like a cached binary.
for b in kube-apiserver kube-controller-manager; do
  cp "_output/bin/$b" "$BIN/.$b.tmp"
  mv "$BIN/.$b.tmp" "$BIN/$b"
done
echo "kube binaries built into $BIN"
cd "$CACHE"
if [ "${FTJ_KUBE_KEEP_SRC:-0}" != 1 ]; then rm -rf "$SRC"; fi

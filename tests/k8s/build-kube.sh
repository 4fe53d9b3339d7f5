#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager (v1.20) offline from Debian bookworm's `kubernetes`
# source package, which carries the upstream tree with vendor/. The binaries are cached outside the repo
# (FTJ_KUBE_CACHE, default ~/.cache/finetune-operator/kube-1.20) so later runs skip the ~10 minute build.
# System apt sources are left untouched: the deb-src list lives in a private directory.
set -euo pipefail

CACHE=${FTJ_KUBE_CACHE:-$HOME/.cache/finetune-operator/kube-1.20}
BIN=$CACHE/bin
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  echo "kube binaries cached in $BIN"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v go >/dev/null || ! command -v etcd >/dev/null || ! command -v dpkg-source >/dev/null \
   || [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]; then
  apt-get update -qq
  apt-get install -y -qq golang-go rsync jq make dpkg-dev etcd-server golang-github-modern-go-reflect2-dev >/dev/null
fi

SRC=$CACHE/src
APT=$SRC/apt
mkdir -p "$APT/lists/partial" "$BIN"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
  > "$APT/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
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
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN/"
echo "kube binaries built into $BIN"

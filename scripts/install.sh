#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine (run as root):
# system packages from Debian, then the project and its Python packages into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  python3 python3-venv python3-dev gcc pkg-config   # a Python to build the venv and compile pyfuse3/cffi
  fuse3 libfuse3-dev                                # FUSE mounts (nydusd)
  libzstd-dev zstd                                  # the native hot path links libzstd
  squashfs-tools squashfuse erofs-utils             # baselines in benchmarks/; fsck.erofs checks exported images
  linux-perf                                        # benchmarks.offcpu reads a perf sched recording
  runc                                              # containers on the mount
  docker-registry apache2-utils                     # the real registry (and htpasswd) the tests start
  busybox-static                                    # the built-in example image
  attr                                              # setfattr/getfattr for xattr checks
  containerd stargz-snapshotter                     # containerd 1.6 and ctr-remote (rpull) for the snapshotter's tests
)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's Debian package starts a service on :5000; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
# containerd's service is left as it is: the tests and scripts/containerd-quickstart.sh start a
# containerd of their own (own root, state and sockets) and never talk to the host's.

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# compat: a .pth entry instead of an import hook, which costs every command ~10 ms at start
.venv/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
# Bytecode now, as a wheel install would: with PYTHONDONTWRITEBYTECODE set (or a read-only
# checkout) every nydusd start would otherwise compile its ~40 modules again (~50 ms here).
.venv/bin/python -m compileall -q -j 0 daemon rafs builder native benchmarks >/dev/null

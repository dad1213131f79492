#!/usr/bin/env bash
# The containerd path, end to end, with a containerd of its own (as root):
#   1. the example image, converted by nydusify into a registry on loopback
#   2. containerd-nydus-grpc and a containerd whose root, state and sockets are all under the
#      work directory (the host's containerd, if any, is never touched)
#   3. ctr-remote image rpull: only the manifest, the config and the bootstrap layer are fetched
#   4. ctr run --snapshotter nydus: the container starts while its data is still in the registry
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${NYDUS_SKIP_INSTALL:-0}" != 1 ]; then bash scripts/install.sh; fi
export PATH="$PWD/.venv/bin:$PATH"
work="$(realpath -m "${WORK_DIR:-$(mktemp -d /tmp/nydus-containerd.XXXXXX)}")"
mkdir -p "$work"
pids=()
source scripts/loopback-registry.sh
cleanup() {
  set +e
  if [ -S "$work/containerd/containerd.sock" ]; then
    for task in $(ctr -a "$work/containerd/containerd.sock" tasks ls -q 2>/dev/null); do
      ctr -a "$work/containerd/containerd.sock" tasks kill -s KILL "$task" >/dev/null 2>&1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null; wait "${pids[$i]}" 2>/dev/null; done
  # whatever is still mounted below the work directory (a daemon killed midway, say)
  grep -o " $work/[^ ]*" /proc/self/mounts | sort -r | while read -r point; do umount -l "$point"; done
}
trap cleanup EXIT
wait_for_socket() {
  for _ in $(seq 300); do [ -S "$1" ] && return 0; sleep 0.1; done
  echo "$1 did not appear; see $2" >&2; exit 1
}

echo "== 1. the example image, converted into a registry on loopback"
python3 examples/make_example.py "$work/example" >/dev/null
start_loopback_registry "$work/registry"
pids+=("$registry_pid")
port=$registry_port
image="127.0.0.1:$port/example:nydus"
nydusify convert --source "oci:$work/example/oci:latest" --target "$image" --work-dir "$work/convert"

echo "== 2. containerd-nydus-grpc and a containerd of our own ($work/containerd)"
cat > "$work/snapshotter.toml" <<TOML
root = "$work/snapshotter"
address = "$work/snapshotter.sock"
cleanup_on_close = true   # this demo stops its nydusd daemons on exit; a deployment keeps them
[daemon]
daemon_mode = "dedicated"
[log]
level = "info"
TOML
containerd-nydus-grpc --config "$work/snapshotter.toml" > "$work/snapshotter.log" 2>&1 &
pids+=($!)
wait_for_socket "$work/snapshotter.sock" "$work/snapshotter.log"
mkdir -p "$work/containerd"
cat > "$work/containerd/config.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
plugin_dir = "$work/containerd/plugins"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd/containerd.sock"
[ttrpc]
  address = "$work/containerd/containerd.sock.ttrpc"
[debug]
  address = "$work/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/containerd/opt"
[proxy_plugins.nydus]
  type = "snapshot"
  address = "$work/snapshotter.sock"
TOML
containerd --config "$work/containerd/config.toml" > "$work/containerd.log" 2>&1 &
pids+=($!)
wait_for_socket "$work/containerd/containerd.sock" "$work/containerd.log"
ctr="ctr -a $work/containerd/containerd.sock"

echo "== 3. ctr-remote image rpull: data layers stay in the registry"
ctr-remote -a "$work/containerd/containerd.sock" image rpull --plain-http --snapshotter nydus "$image"
$ctr content ls

echo "== 4. ctr run --snapshotter nydus"
$ctr run --rm --snapshotter nydus --fifo-dir "$work/containerd/fifo" --runc-root "$work/containerd/runc" \
  "$image" demo /bin/sh -c 'cat /etc/os-release; /app/hello.sh'
python3 - "$work/snapshotter/cache" "$work/convert" <<'PY'
import os, sys
cache, convert = sys.argv[1], sys.argv[2]
cached = sum(os.stat(os.path.join(cache, n)).st_blocks * 512 for n in os.listdir(cache))
blobs = [os.path.join(d, n) for d, _, names in os.walk(convert) for n in names if len(n) == 64]
image = sum(os.path.getsize(p) for p in blobs) or 1
print(f"chunk cache: {cached / 2**20:.2f} MiB of {image / 2**20:.1f} MiB of blobs ({100 * cached / image:.1f}%)")
PY
echo "done: logs and state in $work"

#!/usr/bin/env bash
# Installs everything, then runs the main job on the built-in example image (as root):
#   1. build: OCI layers -> bootstrap + deduplicated, compressed chunk blobs; verify them
#   2. convert: push the example as a lazy-loading image to a registry on loopback
#   3. run: start a container on it with runc while its data is still in the registry,
#      and show how little of the image the container fetched
set -euo pipefail
cd "$(dirname "$0")/.."
# The test suite runs this script after installing once; it sets NYDUS_SKIP_INSTALL=1.
if [ "${NYDUS_SKIP_INSTALL:-0}" != 1 ]; then bash scripts/install.sh; fi
export PATH="$PWD/.venv/bin:$PATH"
work="${WORK_DIR:-$(mktemp -d /tmp/nydus-quickstart.XXXXXX)}"
mkdir -p "$work"
registry_pid=""
source scripts/loopback-registry.sh
cleanup() { if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

echo "== 1. the example image: two OCI layers around busybox, and an OCI layout ($work/example)"
python3 examples/make_example.py "$work/example"

echo "== 2. nydus-image create: layers -> bootstrap + chunk blobs"
nydus-image create --source-type targz --bootstrap "$work/image.boot" --blob-dir "$work/blobs" \
  --output-json "$work/build.json" "$work/example/base.tar.gz" "$work/example/app.tar.gz"
nydus-image check --bootstrap "$work/image.boot" --blob-dir "$work/blobs"
nydus-image stat --bootstrap "$work/image.boot"

echo "== 3. a registry on loopback (Debian's docker-registry)"
start_loopback_registry "$work/registry"
port=$registry_port

echo "== 4. nydusify convert: OCI layout -> lazy-loading image in the registry"
nydusify convert --source "oci:$work/example/oci:latest" --target "127.0.0.1:$port/example:nydus"

echo "== 5. run a container on the image with runc, fetching chunks on demand"
cat > "$work/nydusd.json" <<JSON
{"device": {"cache": {"type": "blobcache", "config": {"work_dir": "$work/cache"}}}}
JSON
python3 scripts/run_container.py --image "127.0.0.1:$port/example:nydus" --config "$work/nydusd.json" \
  --workdir "$work/container" -- /bin/sh -c 'cat /etc/os-release; /app/hello.sh'

echo "== 6. what the container fetched from the registry"
nydusctl cache --work-dir "$work/cache"
python3 - "$work/cache" "$work/blobs" <<'PY'
import os, sys
from daemon.storage.cache import DATA_SUFFIX  # the chunk cache's data files, named by the cache itself
cache, blobs = sys.argv[1], sys.argv[2]
image = sum(os.path.getsize(os.path.join(blobs, name)) for name in os.listdir(blobs))
fetched = sum(os.stat(os.path.join(cache, name)).st_blocks * 512
              for name in os.listdir(cache) if name.endswith(DATA_SUFFIX))
print(f"image blobs: {image / 2**20:.1f} MiB; fetched and cached to run the container: "
      f"{fetched / 2**20:.2f} MiB ({100 * fetched / image:.1f}% of the image)")
PY
echo "done: outputs in $work"

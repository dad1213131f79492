#!/usr/bin/env bash
# Installs everything, then runs the main job on the built-in example: build a lazy-loading
# image from two OCI layers, verify it, and show what it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
work="${WORK_DIR:-$(mktemp -d /tmp/nydus-quickstart.XXXXXX)}"
echo "== 1. the example image's OCI layers ($work/layers)"
python3 examples/make_example.py "$work/layers"
echo "== 2. nydus-image create: layers -> bootstrap + deduplicated, compressed chunk blobs"
nydus-image create --source-type targz --bootstrap "$work/image.boot" --blob-dir "$work/blobs" \
  --output-json "$work/build.json" "$work/layers/base.tar.gz" "$work/layers/app.tar.gz"
echo "== 3. nydus-image check: every digest, the Merkle root, every chunk"
nydus-image check --bootstrap "$work/image.boot" --blob-dir "$work/blobs"
echo "== 4. nydus-image stat"
nydus-image stat --bootstrap "$work/image.boot"
echo "== 5. nydus-image unpack: the tree a container would see"
nydus-image unpack --bootstrap "$work/image.boot" --blob-dir "$work/blobs" --output "$work/rootfs"
ls -l "$work/rootfs" "$work/rootfs/etc" "$work/rootfs/app"
echo "done: outputs in $work"

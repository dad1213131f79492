#!/usr/bin/env bash
# Builds native._rafs_native with AddressSanitizer and UBSan in a scratch copy of the sources
# (native/, rafs/, tests/; the installed extension is left alone) and runs tests/native there
# with RAFS_NATIVE=c.
# Any report from either sanitizer aborts the run with a non-zero exit. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r native rafs tests pyproject.toml "$scratch/"
rm -f "$scratch"/native/_rafs_native*.so
(
  cd "$scratch/native"
  RAFS_NATIVE_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1 -Werror" \
  RAFS_NATIVE_LDFLAGS="-fsanitize=address,undefined" \
    "$python" build.py >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }
)
asan_runtime="$(gcc -print-file-name=libasan.so)"
ubsan_runtime="$(gcc -print-file-name=libubsan.so)"
# CPython itself is not instrumented and keeps memory until exit: leaks are not ours to report.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$scratch"
export RAFS_NATIVE=c
LD_PRELOAD="$asan_runtime $ubsan_runtime" "$python" -c \
  "import native, sys; assert native.__file__.startswith('$scratch'), native.__file__; print('sanitized native from', native.__file__)"
LD_PRELOAD="$asan_runtime $ubsan_runtime" "$python" -m pytest -q -p no:cacheprovider tests/native "$@"
echo "native-asan: no sanitizer reports"

"""cffi build script for `native._rafs_native` (API mode, out of line).

Run by setuptools through `cffi_modules` in setup.py (`pip install -e .`), or directly:
`python native/build.py` builds the extension in place. `RAFS_NATIVE_CFLAGS` adds compiler
flags (scripts/native-asan.sh uses it for -fsanitize=address).
"""

from __future__ import annotations

import os
import pathlib
import re

import cffi

HERE = pathlib.Path(__file__).resolve().parent

HEADER = HERE / "rafs_native.h"


def cdef_from_header(text: str) -> str:
    """The header's declarations as cffi's `cdef`: the header is the one definition of the C
    interface, so the two cannot drift. Comments are dropped, include guards and `#include`s
    left out, and each `#define NAME value` becomes `#define NAME ...` (cffi reads the value
    from the compiled header)."""
    without_comments = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    lines = []
    for line in without_comments.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "#define" and len(words) > 2:
            lines.append(f"#define {words[1]} ...")
        elif not words[0].startswith("#"):
            lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


ffibuilder = cffi.FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text()))
ffibuilder.set_source(
    "native._rafs_native",
    '#include "rafs_native.h"',
    sources=[str((HERE / "rafs_native.c").relative_to(HERE.parent))],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    libraries=["zstd"],
    extra_compile_args=["-Wall", "-Wextra", "-Wconversion", *os.environ.get("RAFS_NATIVE_CFLAGS", "").split()],
    extra_link_args=os.environ.get("RAFS_NATIVE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=True)

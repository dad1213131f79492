"""containerd's snapshot API as this project wrote it (`mount.proto`, `snapshots.proto`) and what
protoc made of it (`*_pb2.py`, `*_pb2.pyi`, committed, excluded from ruff and mypy).

The generated modules check the protobuf runtime they run on (`ValidateProtobufRuntimeVersion`),
so they are made by the grpcio-tools pinned in pyproject.toml and the protobuf pin follows it;
`python -m daemon.snapshotter.proto` regenerates them and a test fails when they are stale.
The files sit under `daemon/snapshotter/proto/` (not containerd's `types/`, which would make
protoc emit `from types import ...` and shadow the standard library).
"""

from __future__ import annotations

import os

PROTO_FILES = ("daemon/snapshotter/proto/mount.proto", "daemon/snapshotter/proto/snapshots.proto")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def generate(output_dir: str = REPO) -> None:
    """Run grpcio-tools' protoc over `PROTO_FILES`, writing the modules under `output_dir`."""
    from grpc_tools import protoc  # a development tool: imported only to regenerate

    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    arguments = ["protoc", f"-I{REPO}", f"-I{include}", f"--python_out={output_dir}", f"--pyi_out={output_dir}"]
    status = protoc.main([*arguments, *(os.path.join(REPO, name) for name in PROTO_FILES)])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")

"""The committed protobuf modules are what the pinned grpcio-tools makes of the .proto files,
and their names on the wire are containerd's."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.snapshotter.proto import PROTO_FILES, REPO, generate, mount_pb2, snapshots_pb2


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(str(tmp_path))
    for proto in PROTO_FILES:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = proto.removesuffix(".proto") + suffix
            assert (tmp_path / name).read_text() == (Path(REPO) / name).read_text(), f"{name} is stale: regenerate"


def test_wire_names_are_containerds() -> None:
    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in service.methods] == [
        "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup",
    ]  # fmt: skip
    assert mount_pb2.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    assert [f.number for f in mount_pb2.Mount.DESCRIPTOR.fields] == [1, 2, 3, 4]

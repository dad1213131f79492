"""The gRPC service over a real unix socket, without containerd: each RPC's answers and error
codes as containerd's proxy client sees them, the remote-snapshot rule, and metadata that
survives a restart (a new server on the same root)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from daemon.snapshotter.config import load_config
from daemon.snapshotter.labels import NYDUS_DATA_LAYER, NYDUS_META_LAYER, TARGET_SNAPSHOT_REF
from daemon.snapshotter.metrics import OperationTimes
from daemon.snapshotter.proto import snapshots_pb2
from daemon.snapshotter.service import RPCS, SERVICE, SnapshotsService, serve
from daemon.snapshotter.snapshotter import Snapshotter


@dataclass
class Client:
    """Calls `/containerd.services.snapshots.v1.Snapshots/<Method>` as containerd does."""

    channel: grpc.Channel

    def __getattr__(self, method: str) -> Any:
        for name, request_type, response_type, streams in RPCS:
            if name == method:
                make = self.channel.unary_stream if streams else self.channel.unary_unary
                return make(f"/{SERVICE}/{name}", request_type.SerializeToString, response_type.FromString)
        raise AttributeError(method)


@dataclass
class Running:
    snapshotter: Snapshotter
    server: grpc.Server
    client: Client
    channel: grpc.Channel

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(grace=None).wait()
        self.snapshotter.close()


def start(root: Path, times: OperationTimes | None = None) -> Running:
    config = load_config(None, {"root": str(root), "address": str(root.parent / "sn.sock")})
    snapshotter = Snapshotter(config)
    server = serve(SnapshotsService(snapshotter, times or OperationTimes()), config.address)
    channel = grpc.insecure_channel(f"unix:{config.address}")
    return Running(snapshotter, server, Client(channel), channel)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    started = start(tmp_path / "root")
    try:
        yield started
    finally:
        started.stop()


def code_of(call: Any, request: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        result = call(request)
        if not hasattr(result, "ByteSize"):
            list(result)
    return raised.value.code()


def prepare(client: Client, key: str, parent: str = "", **labels: str) -> Any:
    return client.Prepare(snapshots_pb2.PrepareSnapshotRequest(key=key, parent=parent, labels=labels))


def commit(client: Client, name: str, key: str) -> None:
    client.Commit(snapshots_pb2.CommitSnapshotRequest(name=name, key=key))


def test_layers_stack_as_overlay_mounts(running: Running, tmp_path: Path) -> None:
    client = running.client
    first = prepare(client, "ns/1/extract a", "")
    [bind] = first.mounts
    assert bind.type == "bind" and bind.options == ["rw", "rbind"]
    (Path(bind.source) / "file").write_text("layer one\n")
    commit(client, "ns/2/a", "ns/1/extract a")
    second = prepare(client, "ns/3/extract b", "ns/2/a")
    [overlay] = second.mounts
    assert overlay.type == "overlay"
    options = dict(option.split("=", 1) for option in overlay.options)
    assert options["lowerdir"] == bind.source and options["upperdir"].endswith("/fs")
    assert client.Mounts(snapshots_pb2.MountsRequest(key="ns/3/extract b")).mounts == second.mounts
    commit(client, "ns/4/b", "ns/3/extract b")
    assert code_of(client.Mounts, snapshots_pb2.MountsRequest(key="ns/3/extract b")) == grpc.StatusCode.NOT_FOUND
    view = client.View(snapshots_pb2.ViewSnapshotRequest(key="ns/5/view", parent="ns/4/b")).mounts
    assert [m.type for m in view] == ["overlay"] and not any(o.startswith("upperdir=") for o in view[0].options)
    single = client.View(snapshots_pb2.ViewSnapshotRequest(key="ns/6/view", parent="ns/2/a")).mounts
    assert [(m.type, m.source, list(m.options)) for m in single] == [("bind", bind.source, ["ro", "rbind"])]
    info = client.Stat(snapshots_pb2.StatSnapshotRequest(key="ns/4/b")).info
    assert (info.name, info.parent, info.kind) == ("ns/4/b", "ns/2/a", snapshots_pb2.COMMITTED)
    usage = client.Usage(snapshots_pb2.UsageRequest(key="ns/2/a"))
    assert usage.size > 0 and usage.inodes == 2


@pytest.mark.logs_warnings  # provoked on purpose
def test_error_codes_are_containerds(running: Running) -> None:
    client = running.client
    prepare(client, "k1")
    assert code_of(client.Prepare, snapshots_pb2.PrepareSnapshotRequest(key="k1")) == grpc.StatusCode.ALREADY_EXISTS
    missing_parent = snapshots_pb2.PrepareSnapshotRequest(key="k2", parent="nope")
    assert code_of(client.Prepare, missing_parent) == grpc.StatusCode.NOT_FOUND
    active_parent = snapshots_pb2.PrepareSnapshotRequest(key="k2", parent="k1")
    assert code_of(client.Prepare, active_parent) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(client.Stat, snapshots_pb2.StatSnapshotRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(client.Remove, snapshots_pb2.RemoveSnapshotRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    commit(client, "c1", "k1")
    again = snapshots_pb2.CommitSnapshotRequest(name="c2", key="c1")
    assert code_of(client.Commit, again) == grpc.StatusCode.FAILED_PRECONDITION  # committed, not active
    prepare(client, "k3", "c1")
    assert (
        code_of(client.Commit, snapshots_pb2.CommitSnapshotRequest(name="c1", key="k3"))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert code_of(client.Remove, snapshots_pb2.RemoveSnapshotRequest(key="c1")) == grpc.StatusCode.FAILED_PRECONDITION
    client.Remove(snapshots_pb2.RemoveSnapshotRequest(key="k3"))
    client.Remove(snapshots_pb2.RemoveSnapshotRequest(key="c1"))
    assert [info for reply in client.List(snapshots_pb2.ListSnapshotsRequest()) for info in reply.info] == []


def test_a_nydus_data_layer_is_committed_under_its_chain_id_and_answered_already_exists(running: Running) -> None:
    client = running.client
    labels = {TARGET_SNAPSHOT_REF: "sha256:chain1", NYDUS_DATA_LAYER: "true"}
    request = snapshots_pb2.PrepareSnapshotRequest(key="default/1/extract-1 sha256:chain1", labels=labels)
    assert code_of(client.Prepare, request) == grpc.StatusCode.ALREADY_EXISTS
    infos = [info for reply in client.List(snapshots_pb2.ListSnapshotsRequest()) for info in reply.info]
    assert [(i.name, i.kind, i.labels[TARGET_SNAPSHOT_REF]) for i in infos] == [
        ("sha256:chain1", snapshots_pb2.COMMITTED, "sha256:chain1")
    ]
    # a second pull of the same layer: the target exists, still ALREADY_EXISTS, nothing added
    request.key = "default/5/extract-2 sha256:chain1"
    assert code_of(client.Prepare, request) == grpc.StatusCode.ALREADY_EXISTS
    assert len([i for reply in client.List(snapshots_pb2.ListSnapshotsRequest()) for i in reply.info]) == 1
    # the bootstrap layer above it is unpacked by containerd like any layer
    meta = {TARGET_SNAPSHOT_REF: "sha256:chain2", NYDUS_META_LAYER: "true"}
    mounts = prepare(client, "default/2/extract-3 sha256:chain2", "sha256:chain1", **meta).mounts
    assert [m.type for m in mounts] == ["overlay"]


@pytest.mark.logs_warnings  # provoked on purpose
def test_a_container_above_a_bootstrap_without_an_image_reference_fails_saying_how_to_fix_it(running: Running) -> None:
    client = running.client
    meta = {TARGET_SNAPSHOT_REF: "sha256:chain1", NYDUS_META_LAYER: "true"}
    prepare(client, "default/1/extract", "", **meta)
    commit(client, "default/2/sha256:chain1", "default/1/extract")
    with pytest.raises(grpc.RpcError) as raised:
        prepare(client, "default/3/container", "default/2/sha256:chain1")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "disable_snapshot_annotations = false" in raised.value.details()
    assert "ctr-remote image rpull" in raised.value.details()
    keys = [i.name for reply in client.List(snapshots_pb2.ListSnapshotsRequest()) for i in reply.info]
    assert keys == ["default/2/sha256:chain1"]  # the failed Prepare left nothing behind


@pytest.mark.logs_warnings  # provoked on purpose
def test_update_sets_and_drops_labels_as_the_field_mask_says(running: Running) -> None:
    client = running.client
    prepare(client, "k1", "", a="1", b="2")

    def update(paths: list[str], **labels: str) -> dict[str, str]:
        info = snapshots_pb2.Info(name="k1", labels=labels)
        mask = field_mask_pb2.FieldMask(paths=paths)
        return dict(client.Update(snapshots_pb2.UpdateSnapshotRequest(info=info, update_mask=mask)).info.labels)

    assert update(["labels.c"], c="3") == {"a": "1", "b": "2", "c": "3"}
    assert update(["labels.a"]) == {"b": "2", "c": "3"}
    assert update([], z="9") == {"z": "9"}
    info = snapshots_pb2.Info(name="k1", parent="other")
    bad = snapshots_pb2.UpdateSnapshotRequest(info=info, update_mask=field_mask_pb2.FieldMask(paths=["parent"]))
    assert code_of(client.Update, bad) == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_survives_a_restart_and_cleanup_removes_orphans(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = start(root)
    try:
        prepare(first.client, "k1", "", keep="yes")
        commit(first.client, "c1", "k1")
    finally:
        first.stop()
    (root / "snapshots" / "999" / "fs").mkdir(parents=True)  # what a crash between row and directory leaves
    times = OperationTimes()
    second = start(root, times)
    try:
        info = second.client.Stat(snapshots_pb2.StatSnapshotRequest(key="c1")).info
        assert info.kind == snapshots_pb2.COMMITTED and dict(info.labels) == {"keep": "yes"}
        second.client.Cleanup(snapshots_pb2.CleanupRequest())
        assert sorted(p.name for p in (root / "snapshots").iterdir()) == ["1"]
        assert times.counts == {"STAT": 1, "CLEANUP": 1}
    finally:
        second.stop()

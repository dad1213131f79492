"""containerd 1.6 (Debian's) with `containerd-nydus-grpc` as its proxy snapshotter: plain OCI
images pulled and run through it, converted images pulled lazily with `ctr-remote image rpull`
and run over nydusd, removal, and the refusal of a plain `ctr pull` of a converted image."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from daemon.storage.cache import blob_usage
from rafs.oci import ANNOTATION_NYDUS_BOOTSTRAP
from tests.integration.containerd.cri import load_messages, pull_image
from tests.integration.containerd.rig import (
    CTR_REMOTE,
    SNAPSHOTTER_NAME,
    Example,
    Rig,
    mounts_below,
    processes_naming,
    requires_containerd,
)
from tests.registry_fixture import free_port

pytestmark = [pytest.mark.slow, pytest.mark.fuse, requires_containerd]

HELLO = "hello from a lazily loaded image"


@dataclass(frozen=True)
class NydusManifest:
    digest: str
    config_digest: str
    bootstrap_digest: str
    blob_bytes: int  # the data layers' sizes


def nydus_manifest(example: Example) -> NydusManifest:
    """The converted image's manifest as the registry serves it."""
    repository, tag = example.nydus.split("/", 1)[1].split(":")
    answer = requests.get(
        f"{example.registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    answer.raise_for_status()
    document = json.loads(answer.content)
    layers = document["layers"]
    bootstrap = [layer for layer in layers if layer.get("annotations", {}).get(ANNOTATION_NYDUS_BOOTSTRAP) == "true"]
    assert len(bootstrap) == 1
    blobs = [layer["size"] for layer in layers if layer is not bootstrap[0]]
    return NydusManifest(
        answer.headers["Docker-Content-Digest"], document["config"]["digest"], bootstrap[0]["digest"], sum(blobs)
    )


def test_plain_oci_image_pulls_and_runs_through_the_snapshotter(rig: Rig, example: Example) -> None:
    rig.containerd.ctr("image", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER_NAME, example.oci)
    names = rig.containerd.snapshot_names()
    assert len(names) == 2  # two layers, unpacked by containerd into overlay snapshots
    result = rig.containerd.run(example.oci, "plain1", "/bin/sh", "-c", "cat /etc/os-release; /app/hello.sh; ls /etc")
    assert 'NAME="nydus-py example"' in result.stdout
    assert HELLO in result.stdout
    assert "motd" not in result.stdout  # the app layer's whiteout hides it


def rpull(rig: Rig, image: str) -> None:
    rig.containerd.ctr("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER_NAME, image, binary=CTR_REMOTE)


def test_rpull_fetches_only_manifest_config_and_bootstrap_then_runs_lazily(rig: Rig, example: Example) -> None:
    rpull(rig, example.nydus)
    manifest = nydus_manifest(example)
    wanted = {manifest.digest, manifest.config_digest, manifest.bootstrap_digest}
    assert rig.containerd.content_digests() == wanted  # no data blob was downloaded by containerd
    result = rig.containerd.run(example.nydus, "lazy1", "/bin/sh", "-c", "cat /etc/os-release; /app/hello.sh")
    assert 'NAME="nydus-py example"' in result.stdout and HELLO in result.stdout
    daemons = rig.snapshotter.daemons()
    assert len(daemons) == 1 and daemons[0][0].startswith("nydusd-")
    cached = sum(usage.disk_bytes for usage in blob_usage(str(rig.snapshotter.root / "cache")))
    assert 0 < cached < manifest.blob_bytes / 10  # the 48 MiB the command never reads stayed in the registry


def data_bin_sha256() -> str:
    """The example's /app/data.bin (see examples/make_example.py)."""
    return hashlib.sha256(bytes(range(256)) * 8192).hexdigest()


def nydusd_pids(rig: Rig) -> list[int]:
    return [pid for _, pid, _ in rig.snapshotter.daemons()]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def reaches_snapshotter(rig: Rig) -> bool:
    """containerd's proxy connection is up again (its first call after a restart fails while it reconnects)."""
    return rig.containerd.ctr("snapshots", "--snapshotter", SNAPSHOTTER_NAME, "ls", check=False).returncode == 0


def test_image_rm_removes_snapshots_and_stops_daemons(rig: Rig, example: Example) -> None:
    rpull(rig, example.nydus)
    rig.containerd.run(example.nydus, "rm1", "/app/hello.sh")
    [(_, pid, mountpoint)] = rig.snapshotter.daemons()
    assert rig.containerd.snapshot_names()
    rig.containerd.ctr("image", "rm", "--sync", example.nydus)
    wait_for(lambda: not rig.containerd.snapshot_names(), "containerd's GC to remove every snapshot")
    assert rig.snapshotter.daemons() == []
    assert not os.path.exists(f"/proc/{pid}/cmdline") or not processes_naming(mountpoint)
    assert mounts_below(str(rig.snapshotter.root)) == []
    assert os.listdir(rig.snapshotter.root / "snapshots") == []
    assert "stopped nydusd-" in rig.snapshotter.log()
    # GC's Cleanup dropped the cached chunks of blobs no bootstrap refers to any more
    wait_for(lambda: blob_usage(str(rig.snapshotter.root / "cache")) == [], "Cleanup to collect the chunk cache")


def test_plain_ctr_pull_of_a_converted_image_fails(rig: Rig, example: Example) -> None:
    """containerd 1.6's `ctr image pull` sends no labels: it downloads every layer and cannot apply
    a Nydus blob (the README's containerd section says to use `ctr-remote image rpull`)."""
    result = rig.containerd.ctr("image", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER_NAME, example.nydus,
                                check=False)  # fmt: skip
    assert result.returncode != 0
    assert "application/vnd.oci.image.layer.nydus.blob.v1" in result.stderr
    assert rig.snapshotter.daemons() == []


def test_snapshotter_restart_keeps_a_running_container_and_serves_new_ones(rig: Rig, example: Example) -> None:
    rpull(rig, example.nydus)
    rig.containerd.start_detached(example.nydus, "long1", "/bin/sh", "-c", "while true; do sleep 1; done")
    try:
        before = nydusd_pids(rig)
        rig.snapshotter.stop()  # SIGTERM: the snapshotter exits, its daemons go on
        assert nydusd_pids(rig) == before and all(os.path.exists(f"/proc/{pid}") for pid in before)
        # the container reads bytes it had not read yet while no snapshotter runs
        assert (
            rig.containerd.exec("long1", "read1", "sha256sum", "/app/data.bin").stdout.split()[0] == data_bin_sha256()
        )
        rig.snapshotter.start()
        wait_for(lambda: "reattached to nydusd-" in rig.snapshotter.log(), "the snapshotter to reattach")
        wait_for(lambda: reaches_snapshotter(rig), "containerd to reconnect to the snapshotter")
        second = rig.containerd.run(example.nydus, "after1", "/app/hello.sh")
        assert HELLO in second.stdout
        assert nydusd_pids(rig) == before  # the same daemon served the new container
        assert rig.containerd.exec("long1", "read2", "cat", "/etc/os-release").stdout.startswith(
            'NAME="nydus-py example"'
        )
    finally:
        rig.containerd.kill_task("long1")


def scrape(address: str) -> dict[str, float]:
    """The Prometheus endpoint's samples, `name{labels}` -> value."""
    answer = requests.get(f"http://{address}/v1/metrics", timeout=30)
    answer.raise_for_status()
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_killed_nydusd_is_noticed_and_the_next_container_gets_a_new_one(
    rig_factory: Callable[..., Rig], example: Example
) -> None:
    address = f"127.0.0.1:{free_port()}"
    rig = rig_factory(metrics=address)
    rpull(rig, example.nydus)
    rig.containerd.run(example.nydus, "first1", "/app/hello.sh")
    [old_pid] = nydusd_pids(rig)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: "died: its API socket" in rig.snapshotter.log(), "the snapshotter to notice the death")
    result = rig.containerd.run(example.nydus, "second1", "/bin/sh", "-c", "/app/hello.sh; sha256sum /app/data.bin")
    assert HELLO in result.stdout and data_bin_sha256() in result.stdout
    [new_pid] = nydusd_pids(rig)
    assert new_pid != old_pid
    assert "starting it again on the same cache" in rig.snapshotter.log()
    samples = scrape(address)
    assert samples['nydusd_lifetime_event_counts{nydusd_event="DIED"}'] == 1
    assert samples['nydusd_lifetime_event_counts{nydusd_event="RUNNING"}'] == 2


def test_shared_mode_serves_images_from_one_daemon_and_metrics_are_scraped(
    rig_factory: Callable[..., Rig], example: Example
) -> None:
    address = f"127.0.0.1:{free_port()}"
    rig = rig_factory(daemon_mode="shared", metrics=address)
    rpull(rig, example.nydus)
    result = rig.containerd.run(example.nydus, "shared1", "/bin/sh", "-c", "/app/hello.sh; sha256sum /app/data.bin")
    assert HELLO in result.stdout and data_bin_sha256() in result.stdout
    [(daemon_id, pid, mountpoint)] = rig.snapshotter.daemons()
    assert daemon_id == "nydusd-shared"
    # the image is a subdirectory of the shared mount, as nydus-snapshotter's shared mode has it
    [image_dir] = os.listdir(mountpoint)
    assert sorted(os.listdir(os.path.join(mountpoint, image_dir, "app"))) == ["data.bin", "hello.sh", "model.bin"]
    second = rig.containerd.run(example.nydus, "shared2", "/app/hello.sh")
    assert HELLO in second.stdout and nydusd_pids(rig) == [pid]
    samples = scrape(address)
    image = f'image_ref="{example.nydus}"'
    assert samples[f"nydusd_total_read_bytes{{{image}}}"] >= len(bytes(range(256)) * 8192)
    assert samples[f"nydusd_read_hits{{{image}}}"] > 0
    assert samples[f"nydusd_read_errors{{{image}}}"] == 0
    assert samples[f"nydusd_hung_io_counts{{{image}}}"] == 0
    assert samples[f"nydusd_cache_total_requests{{{image}}}"] > 0
    assert samples[f'nydusd_image_info{{daemon_id="nydusd-shared",{image}}}'] == 1
    assert samples["snapshotter_cache_usage_kilobytes"] > 0
    assert samples['snapshotter_snapshot_operation_elapsed_milliseconds_count{snapshot_operation="PREPARE"}'] >= 4
    rig.containerd.ctr("image", "rm", "--sync", example.nydus)
    wait_for(lambda: not rig.containerd.snapshot_names(), "containerd's GC to remove every snapshot")
    assert rig.snapshotter.daemons() == []  # the last image gone, the shared daemon stopped
    assert mounts_below(str(rig.snapshotter.root)) == []


def test_cri_pull_image_is_lazy_and_the_image_runs(
    rig_factory: Callable[..., Rig], example: Example, tmp_path: Path
) -> None:
    rig = rig_factory(cri={"registry": example.registry.host})
    messages = load_messages(tmp_path)
    image_ref = pull_image(messages, rig.containerd.address, example.nydus)
    assert image_ref.startswith("sha256:")
    manifest = nydus_manifest(example)
    wanted = {manifest.digest, manifest.config_digest, manifest.bootstrap_digest}
    assert rig.containerd.content_digests(namespace="k8s.io") == wanted
    result = rig.containerd.run(example.nydus, "cri1", "/app/hello.sh", namespace="k8s.io")
    assert HELLO in result.stdout
    [(_, _, _)] = rig.snapshotter.daemons()  # configured from the cri.image-ref label

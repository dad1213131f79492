"""The cold-start harness: its unpacker, runc and lazy-mount plumbing, its report, and one real
`--quick` run whose numbers are checked where they can be (an OCI pull fetches every layer byte;
a lazy start, when the project can do one, fetches less)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from benchmarks import coldstart
from benchmarks.coldstart_runtime import Phases, is_mounted, lazy_rootfs, run_container, unpack_layer
from benchmarks.report import CaseRecord, ImageRecord, Results, RunRecord, markdown, write_report

REPOSITORY = Path(__file__).resolve().parents[2]
is_root = os.geteuid() == 0
requires_runc = pytest.mark.skipif(not is_root or shutil.which("runc") is None, reason="needs root and runc")


# ---- OCI unpack


def _layer(path: Path, entries: Mapping[str, bytes | None]) -> Path:
    """A tar.gz of files (bytes) and directories (None)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_unpack_applies_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    lower = {"etc": None, "etc/keep": b"k", "etc/gone": b"g", "opaque": None, "opaque/old": b"o", "tree": None}
    unpack_layer(_layer(tmp_path / "1.tar.gz", {**lower, "tree/a": b"a"}), rootfs)
    upper = {"etc/.wh.gone": b"", "opaque/.wh..wh..opq": b"", "opaque/new": b"n", ".wh.tree": b"", "added": b"+"}
    unpack_layer(_layer(tmp_path / "2.tar.gz", upper), rootfs)
    assert sorted(os.listdir(rootfs)) == ["added", "etc", "opaque"]
    assert sorted(os.listdir(rootfs / "etc")) == ["keep"]
    assert sorted(os.listdir(rootfs / "opaque")) == ["new"]


def test_unpack_refuses_a_corrupt_layer(tmp_path: Path) -> None:
    layer = tmp_path / "bad.tar.gz"
    layer.write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(RuntimeError, match=r"tar -xzf"):
        unpack_layer(layer, tmp_path / "rootfs")


# ---- runc and the lazy mount (localfs backend: plumbing only, never a benchmark figure)


def _host_shell_root(root: Path) -> Path:
    """A rootfs with the host's /bin/sh and the libraries it links."""
    shell = os.path.realpath("/bin/sh")
    libraries = subprocess.run(["ldd", shell], capture_output=True, text=True, check=True).stdout
    for path in [shell, *(word for word in libraries.split() if word.startswith("/"))]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if not (root / "bin/sh").exists():
        (root / "bin").mkdir(exist_ok=True)
        os.symlink(shell, root / "bin/sh")
    for name in ("tmp", "proc", "dev", "sys"):
        (root / name).mkdir(exist_ok=True)
    return root


@requires_runc
def test_run_container_returns_output_and_raises_on_failure(tmp_path: Path) -> None:
    rootfs = _host_shell_root(tmp_path / "rootfs")
    assert run_container(tmp_path / "bundle", rootfs, ["/bin/sh", "-c", "echo hello"]) == "hello\n"
    with pytest.raises(RuntimeError, match="exited 3"):
        run_container(tmp_path / "bundle", rootfs, ["/bin/sh", "-c", "exit 3"])
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=True).stdout
    assert "coldstart-" not in listed


@requires_runc
@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_lazy_rootfs_overlays_the_mount_and_undoes_everything(tmp_path: Path) -> None:
    rootfs = _host_shell_root(tmp_path / "source")
    subprocess.run(
        ["nydus-image", "create", "--source-type", "directory", "--bootstrap", str(tmp_path / "image.boot"),
         "--blob-dir", str(tmp_path / "blobs"), str(rootfs)],
        check=True, capture_output=True,
    )  # fmt: skip
    config: dict[str, object] = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(tmp_path / "blobs")}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "cache")}},
        }
    }
    work = tmp_path / "mount"
    phases = Phases()
    with lazy_rootfs(["--bootstrap", str(tmp_path / "image.boot")], work, config, phases) as merged:
        assert is_mounted(work / "lower") and is_mounted(merged)
        output = run_container(tmp_path / "bundle", merged, ["/bin/sh", "-c", "echo written > /tmp/new; echo ok"])
        assert output == "ok\n"
    assert list(phases.seconds) == ["mount", "overlay"]
    assert (work / "upper/tmp/new").read_text() == "written\n"  # writes went to the upper dir
    assert not is_mounted(work / "lower") and not is_mounted(work / "merged")


# ---- report


def _case(mode: str, seconds: float | None, fetched: int | None, reason: str = "") -> CaseRecord:
    runs: list[RunRecord] = []
    if seconds is not None:
        runs.append({"seconds": seconds, "phases": {"run": seconds}, "bytes_down": fetched or 0, "bytes_up": 1})
    return {"mode": mode, "available": seconds is not None, "reason": reason, "runs": runs,
            "median_s": seconds, "median_bytes_down": fetched}  # fmt: skip


def test_report_gives_ratios_against_oci_and_names_missing_modes(tmp_path: Path) -> None:
    image: ImageRecord = {
        "name": "img", "description": "d", "workload": ["/bin/sh", "-c", "true"], "layers": 1, "files": 10,
        "oci_bytes": 4 << 20, "unpacked_bytes": 8 << 20, "nydus_blob_bytes": None, "bootstrap_bytes": None,
        "convert_s": None, "trace_files": None,
        "cases": [_case("oci", 4.0, 4 << 20), _case("lazy-cold", 1.0, 1 << 20), _case("lazy-warm", None, None, "no backend")],
    }  # fmt: skip
    results: Results = {"settings": {"rtt_ms": 20, "rate_mbit": 200, "runs": 1}, "images": [image]}
    table = markdown(results)
    assert "| img | lazy, cold | 1.00 | 0.25x | 1.00 | 0.25x |" in table
    assert "not available: no backend" in table
    paths = write_report(results, str(tmp_path), "check")
    assert [os.path.basename(path) for path in paths] == ["check.json", "check.md", "check.png"]
    assert json.loads(Path(paths[0]).read_text())["images"][0]["name"] == "img"
    assert Path(paths[2]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arguments_quick_and_baseline() -> None:
    settings = coldstart.parse_arguments(["--quick", "--modes", "lazy-cold"])
    assert (settings.images, settings.runs, settings.modes) == ([coldstart.QUICK_IMAGE], 1, ["oci", "lazy-cold"])
    assert settings.name == "coldstart-quick"
    defaults = coldstart.parse_arguments([])
    assert (defaults.rtt_ms, defaults.rate_mbit, defaults.runs) == (20.0, 200.0, 3)
    assert defaults.modes == list(coldstart.MODES)


# ---- one real quick run


@pytest.mark.slow
@pytest.mark.fuse
@requires_runc
@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")
def test_quick_run_measures_honest_bytes(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.coldstart", "--quick", "--output-dir", str(tmp_path)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "coldstart-quick.json").read_text())
    assert (tmp_path / "coldstart-quick.png").exists() and (tmp_path / "coldstart-quick.md").exists()
    [image] = results["images"]
    cases = {case["mode"]: case for case in image["cases"]}
    assert list(cases) == list(coldstart.MODES)
    oci = cases["oci"]
    assert oci["available"] and len(oci["runs"]) == 1
    assert oci["median_s"] > 0
    # an OCI pull fetches every byte of every layer (plus manifest, config and HTTP headers)
    assert oci["median_bytes_down"] >= image["oci_bytes"]
    assert oci["median_bytes_down"] < image["oci_bytes"] * 1.05 + (1 << 20)
    for mode in ("lazy-cold", "lazy-prefetch"):
        case = cases[mode]
        if case["available"]:
            assert 0 < case["median_bytes_down"] < oci["median_bytes_down"], mode
        else:
            assert case["reason"] and not case["runs"], mode
    if cases["lazy-prefetch"]["available"]:
        assert image["trace_files"] > 0  # the prefetch list came from a real access trace
    warm = cases["lazy-warm"]
    if warm["available"] and cases["lazy-cold"]["available"]:
        assert warm["median_bytes_down"] < cases["lazy-cold"]["median_bytes_down"]
    # the registry and the shaper stopped with the run: their ports refuse connections
    addresses = re.search(r"registry (127\.0\.0\.1:\d+), shaper (127\.0\.0\.1:\d+)", completed.stdout)
    assert addresses is not None, completed.stdout
    for address in addresses.groups():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2).close()

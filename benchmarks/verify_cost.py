"""What bootstrap verification costs: at open and mount, per lookup, and a full check for contrast.

For synthetic bootstraps of N files (1,000 a directory, as `bootstrap_open` makes them; default
25,000 and 1,000,000), each in fresh subprocesses, median of `--runs`:
- `open_bootstrap` with and without `verify` (lazy: the root record and the root's entries);
- 1,000 path lookups with their records (each first use of a directory verifies its entries);
- a full Merkle check (every record through the verifier: what a check at mount would cost);
- `nydusd --bootstrap` from exec to a mount that answers, with and without verification (the
  latter through a wrapper that opens the bootstrap with `verify=False`; root and /dev/fuse).

    python3 -m benchmarks.verify_cost [--files 25000,1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.bootstrap_open import write_synthetic
from benchmarks.common import markdown_table, write_results

FILES_PER_DIR = 1000

PROBE = r"""
import json, sys, time
from rafs.mapped import open_bootstrap
mode, path, verify = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
started = time.perf_counter()
bootstrap = open_bootstrap(path, verify=verify)
opened = time.perf_counter() - started
started = time.perf_counter()
if mode == "lookup":
    count = bootstrap.inode_count
    for i in range(1000):
        n = (i * 7919) % (count - count // 1000 - 1)
        ino = bootstrap.resolve(f"/d{n // 1000:05d}/f{n % 1000:04d}")
        bootstrap.inode(ino)
elif mode == "full":
    for _, ino in bootstrap.walk():
        bootstrap.inode(ino)
print(json.dumps({"open_s": opened, "work_s": time.perf_counter() - started}))
"""

# nydusd with the bootstrap opened unverified: the baseline for the mount figure.
UNVERIFIED_NYDUSD = r"""
import sys
from functools import partial
import daemon.serve
from daemon.cli import main
from rafs.mapped import open_bootstrap
daemon.serve.open_bootstrap = partial(open_bootstrap, verify=False)
sys.exit(main(sys.argv[1:]))
"""


def probe(mode: str, path: str, verify: bool) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", PROBE, mode, path, "1" if verify else "0"], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def mounted(mountpoint: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        return any(line.split()[4] == mountpoint for line in mounts)


def mount_seconds(path: str, work: str, verify: bool) -> float:
    """Exec of nydusd to a mount that answers `statvfs`; the daemon is stopped after."""
    mountpoint = os.path.join(work, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    blobs = os.path.join(work, "blobs")
    os.makedirs(blobs, exist_ok=True)
    config = os.path.join(work, "nydusd.json")
    with open(config, "w", encoding="utf-8") as file:
        json.dump({"device": {"backend": {"type": "localfs", "config": {"dir": blobs}}}}, file)
    command = [sys.executable, "-m", "daemon.cli"] if verify else [sys.executable, "-c", UNVERIFIED_NYDUSD]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--bootstrap", path, "--config", config, "--mountpoint", mountpoint, "--log-level", "warn"]
    )
    try:
        while not mounted(mountpoint):
            if process.poll() is not None:
                raise RuntimeError(f"nydusd exited with {process.returncode}")
            time.sleep(0.002)
        os.statvfs(mountpoint)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def measure(files: int, runs: int, work: str, with_mount: bool) -> dict[str, object]:
    path = os.path.join(work, f"boot-{files}")
    print(f"writing a bootstrap of {files} files...", file=sys.stderr)
    write_synthetic(path, files, FILES_PER_DIR)
    result: dict[str, object] = {"files": files, "bootstrap_bytes": os.path.getsize(path)}
    for verify in (False, True):
        key = "verified" if verify else "unverified"
        opens = [probe("open", path, verify)["open_s"] for _ in range(runs)]
        lookups = [probe("lookup", path, verify)["work_s"] for _ in range(runs)]
        result[key] = {"open_s": median(opens), "lookups_1000_s": median(lookups)}
        if with_mount:
            result[key]["mount_s"] = median([mount_seconds(path, work, verify) for _ in range(runs)])  # type: ignore[index]
    result["full_check_s"] = probe("full", path, True)["work_s"]
    os.unlink(path)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="25000,1000000", help="comma-separated file counts")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    with_mount = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    rows = []
    results = []
    with tempfile.TemporaryDirectory(prefix="verify-cost-") as work:
        for files in (int(n) for n in arguments.files.split(",")):
            result = measure(files, arguments.runs, work, with_mount)
            results.append(result)
            plain, verified = result["unverified"], result["verified"]
            assert isinstance(plain, dict) and isinstance(verified, dict)
            rows.append(
                [
                    f"{files:,}",
                    f"{result['bootstrap_bytes'] / 2**20:.1f}",  # type: ignore[operator]
                    f"{plain['open_s'] * 1000:.2f} / {verified['open_s'] * 1000:.2f}",
                    f"{plain['lookups_1000_s']:.3f} / {verified['lookups_1000_s']:.3f}",
                    f"{plain['mount_s']:.3f} / {verified['mount_s']:.3f}" if with_mount else "n/a (needs root, FUSE)",
                    f"{result['full_check_s']:.2f}",
                ]
            )
    table = markdown_table(
        [
            "files",
            "MiB",
            "open ms (plain / verified)",
            "1000 lookups s (plain / verified)",
            "nydusd mount s (plain / verified)",
            "full check s",
        ],
        rows,
    )
    print(table)
    write_results("verify_cost", {"runs": arguments.runs, "results": results}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

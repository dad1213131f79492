"""Build benchmark: `nydus-image create` against `tar -czf` and `mksquashfs -comp zstd`.

All three pack the same real tree in the same run; figures are reported as ratios against
`tar -czf`, the thing a plain OCI build does. Usage:

    python3 -m benchmarks.build_bench [--tree DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile

from benchmarks.common import markdown_table, run_command, timed, tree_size, write_results


def default_tree() -> str:
    """/usr/include: a real tree of thousands of files on any Debian host with the dev packages."""
    return "/usr/include" if os.path.isdir("/usr/include") else sysconfig.get_paths()["stdlib"]


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=default_tree())
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    tree = os.path.abspath(arguments.tree)
    files, total = tree_size(tree)
    print(f"tree {tree}: {files} files, {total / 2**20:.1f} MiB", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="build-bench-")
    rows: dict[str, dict[str, float]] = {}
    try:
        tar_path = os.path.join(work, "layer.tar.gz")

        def tar() -> None:
            run_command(["tar", "-czf", tar_path, "-C", tree, "."])

        def nydus() -> None:
            blob_dir = os.path.join(work, "blobs")
            shutil.rmtree(blob_dir, ignore_errors=True)
            run_command(
                ["nydus-image", "create", "-t", "directory", "-B", os.path.join(work, "boot"), "-D", blob_dir, tree]
            )

        def squash() -> None:
            image = os.path.join(work, "tree.sqfs")
            if os.path.exists(image):
                os.unlink(image)
            run_command(["mksquashfs", tree, image, "-comp", "zstd", "-quiet", "-no-progress"])

        rows["tar -czf"] = {"seconds": timed(tar, arguments.repeat)}
        rows["tar -czf"]["output_bytes"] = os.path.getsize(tar_path)
        rows["nydus-image create"] = {"seconds": timed(nydus, arguments.repeat)}
        rows["nydus-image create"]["output_bytes"] = directory_bytes(os.path.join(work, "blobs")) + os.path.getsize(
            os.path.join(work, "boot")
        )
        if shutil.which("mksquashfs"):
            rows["mksquashfs -comp zstd"] = {"seconds": timed(squash, arguments.repeat)}
            rows["mksquashfs -comp zstd"]["output_bytes"] = os.path.getsize(os.path.join(work, "tree.sqfs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = rows["tar -czf"]["seconds"]
    table = markdown_table(
        ["tool", "seconds (median)", "time vs tar -czf", "output MiB", "MB/s in"],
        [
            [
                name,
                f"{row['seconds']:.2f}",
                f"{row['seconds'] / baseline:.2f}x",
                f"{row['output_bytes'] / 2**20:.1f}",
                f"{total / row['seconds'] / 1e6:.0f}",
            ]
            for name, row in rows.items()
        ],
    )
    print(table)
    path = write_results("build", {"tree": tree, "files": files, "bytes": total, "results": rows}, table)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

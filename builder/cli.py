"""`nydus-image`: create, merge, check, inspect, stat and unpack bootstraps.

The command line is the edge where errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from builder import describe, unpack, verify
from builder.build import SOURCE_TYPES, BuildOptions, build, merge
from builder.export import export_block
from builder.options import OneLineParser, chunk_size, platform, read_prefetch_list, run_with_one_line_errors
from rafs import layout
from rafs.blob import COMPRESSORS_BY_NAME, DIGESTERS_BY_NAME
from rafs.errors import ConfigError
from rafs.mapped import open_bootstrap
from rafs.outputs import atomic_file


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nydus-image", description="Build and inspect lazy-loading image bootstraps.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    create = commands.add_parser("create", help="build a bootstrap and blobs from layers or a directory")
    create.add_argument("sources", nargs="+", metavar="SOURCE")
    create.add_argument("--source-type", "-t", choices=SOURCE_TYPES, default="directory")
    create.add_argument("--platform", type=platform, help="oci: OS/ARCH to pick from an index (default: the host's)")
    create.add_argument("--bootstrap", "-B", required=True)
    create.add_argument("--blob-dir", "-D", required=True)
    create.add_argument("--chunk-size", type=chunk_size, default=layout.DEFAULT_CHUNK_SIZE)
    create.add_argument("--compressor", "-c", choices=sorted(COMPRESSORS_BY_NAME), default="zstd")
    create.add_argument("--digester", "-d", choices=sorted(DIGESTERS_BY_NAME), default="blake3")
    create.add_argument("--prefetch-files", metavar="FILE", help="paths (one a line) to put first and prefetch")
    create.add_argument("--chunk-dict", metavar="BOOTSTRAP", help="dedup against another image's chunks")
    create.add_argument("--parent-bootstrap", metavar="FILE", help="build on top of this image")
    create.add_argument("--layer", action="store_true", help="keep whiteouts: a per-layer bootstrap for merge")
    create.add_argument("--output-json", "-J", metavar="FILE")

    merge_cmd = commands.add_parser("merge", help="merge per-layer bootstraps, lowest first")
    merge_cmd.add_argument("layers", nargs="+", metavar="LAYER_BOOTSTRAP")
    merge_cmd.add_argument("--bootstrap", "-B", required=True)
    merge_cmd.add_argument("--prefetch-files", metavar="FILE")
    merge_cmd.add_argument("--output-json", "-J", metavar="FILE")

    check = commands.add_parser("check", help="verify every digest (and every chunk with --blob-dir)")
    check.add_argument("--bootstrap", "-B", required=True)
    check.add_argument("--blob-dir", "-D")
    check.add_argument("--json", action="store_true")

    inspect = commands.add_parser("inspect", help="show a path's metadata and chunks, or the tree")
    inspect.add_argument("--bootstrap", "-B", required=True)
    inspect.add_argument("path", nargs="?", help="a path in the image; without it, list the tree")
    inspect.add_argument("--json", action="store_true")

    stat_cmd = commands.add_parser("stat", help="sizes, counts, dedup and compression ratios")
    stat_cmd.add_argument("--bootstrap", "-B", required=True)
    stat_cmd.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="--block: write the image as one EROFS file (mount -t erofs)")
    export.add_argument("--block", action="store_true", required=True, help="an EROFS image, metadata and data")
    export.add_argument("--bootstrap", "-B", required=True)
    export.add_argument("--blob-dir", "-D", required=True)
    export.add_argument("--output", "-O", "-o", required=True, help="the image file to write")

    unpack = commands.add_parser("unpack", help="write the tree to a directory or a tar file")
    unpack.add_argument("--bootstrap", "-B", required=True)
    unpack.add_argument("--blob-dir", "-D", required=True)
    unpack.add_argument("--output", "-o", required=True, help="a directory, or FILE.tar")
    return parser


def _write_json(path: str | None, data: dict[str, object]) -> None:
    if path:
        with atomic_file(path) as file:
            file.write(json.dumps(data, indent=2, sort_keys=True).encode())


def _require_parent_directories(arguments: argparse.Namespace, *options: str) -> None:
    """Refuse output paths whose directory is missing before any work, not after the build."""
    for option in options:
        path = getattr(arguments, option.lstrip("-").replace("-", "_"))
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ConfigError(f"{option} {path}: directory {parent} does not exist")


def run(arguments: argparse.Namespace) -> int:
    if arguments.command in ("create", "merge"):
        _require_parent_directories(arguments, "--bootstrap", "--output-json")
    if arguments.command == "create":
        options = BuildOptions(
            chunk_size=arguments.chunk_size,
            compressor=COMPRESSORS_BY_NAME[arguments.compressor],
            digester=DIGESTERS_BY_NAME[arguments.digester],
            prefetch_files=read_prefetch_list(arguments.prefetch_files),
            chunk_dict=arguments.chunk_dict,
            parent_bootstrap=arguments.parent_bootstrap,
            keep_whiteouts=arguments.layer,
            progress=True,
            platforms=(arguments.platform,) if arguments.platform else (),
        )
        result = build(arguments.source_type, arguments.sources, arguments.bootstrap, arguments.blob_dir, options)
        _write_json(arguments.output_json, result.to_json())
        print(
            f"bootstrap {result.bootstrap}: {result.files} files, {len(result.blobs)} new blob(s), root {result.root_digest[:16]}"
        )
        return 0
    if arguments.command == "merge":
        options = BuildOptions(prefetch_files=read_prefetch_list(arguments.prefetch_files))
        result = merge(arguments.layers, arguments.bootstrap, options)
        _write_json(arguments.output_json, result.to_json())
        print(f"bootstrap {result.bootstrap}: merged {result.layers} layers, root {result.root_digest[:16]}")
        return 0
    # `check` recomputes the whole tree itself and names the path that fails; the other commands
    # verify each record before using it, and `unpack` all of them before writing anything.
    bootstrap = open_bootstrap(arguments.bootstrap, verify=arguments.command != "check")
    if arguments.command == "check":
        report = verify.check(bootstrap, arguments.blob_dir)
        if arguments.json:
            print(json.dumps(report.__dict__, indent=2))
        else:
            blobs = f", {report.chunks_verified} chunks in {report.blobs_verified} blobs" if arguments.blob_dir else ""
            print(f"OK: {report.inodes} inodes{blobs}; root digest {report.root_digest}")
        return 0
    if arguments.command == "inspect":
        if arguments.path:
            info = describe.describe_inode(bootstrap, arguments.path)
            print(json.dumps(info, indent=2) if arguments.json else _format_info(info))
        else:
            rows = []
            for path, ino in bootstrap.walk():
                inode = bootstrap.inode(ino)
                rows.append({"path": os.fsdecode(path), "ino": ino, "mode": f"{inode.mode:o}", "size": inode.size})
            if arguments.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print(f"{row['ino']:>8} {row['mode']:>7} {row['size']:>12} {row['path']}")
        return 0
    if arguments.command == "stat":
        figures = describe.statistics(bootstrap, os.path.getsize(arguments.bootstrap))
        if arguments.json:
            print(json.dumps(figures, indent=2))
        else:
            for key, value in figures.items():
                if isinstance(value, dict):  # entries by type: "directory 2, file 1"
                    value = ", ".join(f"{kind} {count}" for kind, count in sorted(value.items()))
                if key != "blobs":
                    print(f"{key:>26}: {value}")
            for blob in figures["blobs"]:  # type: ignore[attr-defined]
                print(f"{'blob':>26}: {blob['id']} {blob['compressed_size']} bytes, {blob['chunks']} chunks")
        return 0
    if arguments.command == "export":
        _require_parent_directories(arguments, "--output")
        size = export_block(bootstrap, arguments.blob_dir, arguments.output)
        print(f"{arguments.output}: EROFS image of {size} bytes")
        return 0
    if arguments.command == "unpack":
        if arguments.output.endswith(".tar"):
            unpack.unpack_to_tar(bootstrap, arguments.blob_dir, arguments.output)
        else:
            unpack.unpack_to_directory(bootstrap, arguments.blob_dir, arguments.output)
        return 0
    raise AssertionError(arguments.command)


def _format_info(info: dict[str, object]) -> str:
    lines = []
    for key, value in info.items():
        if key == "chunks":
            lines.append("chunks:")
            for chunk in value:  # type: ignore[attr-defined]
                lines.append(
                    f"  @{chunk['file_offset']:<12} {chunk['uncompressed_size']:>8} -> {chunk['compressed_size']:>8}"
                    f" blob {str(chunk['blob'])[:12]}+{chunk['compressed_offset']} {chunk['digest'][:16]}"
                )
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_with_one_line_errors(f"nydus-image {arguments.command}", lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())

"""`nydusify convert|check|warm`: turn an OCI image into this project's lazy-loading image, verify one,
and have a registry mirror cache one (`builder.warm`).

`convert` pulls the source (a registry reference or `oci:DIR[:tag]`), builds it with
`builder.build.build`, and pushes a Nydus-style artifact: one layer per blob
(`application/vnd.oci.image.layer.nydus.blob.v1`), then a tar.gz layer holding
`image/image.boot`, then a manifest whose config is the source's with `rootfs.diff_ids` made to
match. Every byte pushed is a function of the source and the options, so converting twice gives
the same manifest digest. `check` pulls a converted image back, verifies its bootstrap and every
blob, and compares its tree inode by inode with the source's layers built afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from builder.build import BuildOptions, build
from builder.entrypoint import StartCommand
from builder.oci_layout import read_layout, split_reference
from builder.options import OneLineParser, chunk_size, platform, read_prefetch_list, run_with_one_line_errors
from builder.verify import check as check_bootstrap
from builder.warm import warm
from daemon.storage.registry import HttpOptions, Mirror, RegistryClient, RegistryOptions
from rafs import layout, oci
from rafs.bootstrap import Bootstrap
from rafs.erofs import DeviceMap, UnsupportedForErofs, layout_tag, write_erofs
from rafs.errors import ConfigError, ConvertError, ImageError
from rafs.mapped import open_bootstrap
from rafs.oci import ImageReference, Platform, host_platforms, sha256_digest

LAYOUT_PREFIX = "oci:"
PREFETCH_POLICIES = ("entrypoint", "none")


@dataclass(frozen=True)
class SourceImage:
    """A pulled source image: its config and its layer files (lowest first) in the work dir."""

    source_type: str  # "targz" (downloaded layer files) or "oci" (a layout reference)
    sources: tuple[str, ...]
    config: dict[str, object]


class Progress:
    """Byte counts on one stderr line while transferring; silent unless stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.label = ""
        self.done = 0
        self.last = 0.0

    def start(self, label: str) -> Callable[[int], None]:
        self.label, self.done = label, 0
        return self.advance

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            sys.stderr.write(f"\r\x1b[K{self.label}: {self.done / 2**20:.1f} MiB")
            sys.stderr.flush()

    def note(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K{message}\n")
            sys.stderr.flush()


# ---- pulling


def pull_layout(reference: str, platforms: Sequence[Platform]) -> SourceImage:
    """An `oci:DIR[:tag]` source: the config here, the layers read by the build, both through
    `builder.oci_layout.read_layout` with the same platforms."""
    layout_reference = reference[len(LAYOUT_PREFIX) :]
    directory, tag = split_reference(layout_reference)
    image = read_layout(directory, tag, platforms)
    return SourceImage("oci", (layout_reference,), image.config)


def pull_registry(client: RegistryClient, ref: ImageReference, work_dir: str, progress: Progress) -> SourceImage:
    """Download the source's layers into `work_dir/layers` (verified) and read its config."""
    manifest = client.get_image_manifest(ref)
    _refuse_nydus(manifest.document, str(ref))
    config_digest = str(_descriptor(manifest.document.get("config"))["digest"])
    config = json.loads(client.read_blob(ref, config_digest))
    if not isinstance(config, dict):
        raise ConvertError(f"{ref}: image config is not a JSON object")
    layer_dir = os.path.join(work_dir, "layers")
    os.makedirs(layer_dir, exist_ok=True)
    paths = []
    for layer in _layers(manifest.document):
        digest = str(layer["digest"])
        path = os.path.join(layer_dir, digest.partition(":")[2])
        client.download_blob(ref, digest, path, progress.start(f"pull {digest[7:19]}"))
        paths.append(path)
    progress.note(f"pulled {len(paths)} layers of {ref}")
    return SourceImage("targz", tuple(paths), config)


def pull_source(
    client: RegistryClient, reference: str, work_dir: str, platforms: Sequence[Platform], progress: Progress
) -> SourceImage:
    if reference.startswith(LAYOUT_PREFIX):
        return pull_layout(reference, platforms)
    return pull_registry(client, ImageReference.parse(reference), work_dir, progress)


def _descriptor(value: object) -> dict[str, object]:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        raise ConvertError(f"malformed descriptor in manifest: {value!r}")
    return value


def _layers(manifest: dict[str, object]) -> list[dict[str, object]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ConvertError("manifest has no layers list")
    return [_descriptor(layer) for layer in layers]


def _refuse_nydus(manifest: dict[str, object], reference: str) -> None:
    for layer in _layers(manifest):
        if layer.get("mediaType") == oci.NYDUS_BLOB:
            raise ConvertError(f"{reference} is already a converted image (it has nydus blob layers)")


# ---- building the artifact


@dataclass(frozen=True)
class ConvertResult:
    digest: str
    blobs_pushed: int
    blobs_skipped: int


def convert(
    client: RegistryClient,
    source: str,
    target: ImageReference,
    work_dir: str,
    options: BuildOptions,
    platforms: Sequence[Platform],
    *,
    erofs: bool = False,
    prefetch_policy: str = "entrypoint",
) -> ConvertResult:
    """Pull, build, push; returns the target manifest's digest. With `erofs`, the bootstrap layer
    also carries the image's EROFS metadata (0.8 MiB more for a 40,000-file image: not for every
    image, since every start with the FUSE driver fetches the layer too). Without a prefetch
    list, `prefetch_policy` "entrypoint" guesses one from the image config's start command
    (`builder.entrypoint`); "none" leaves the image without one."""
    progress = Progress()
    image = pull_source(client, source, work_dir, platforms, progress)
    bootstrap_path = os.path.join(work_dir, "image.boot")
    blob_dir = os.path.join(work_dir, "blobs")
    if prefetch_policy == "entrypoint" and not options.prefetch_files:
        options = replace(options, start_command=StartCommand.from_image_config(image.config))
    result = build(
        image.source_type, image.sources, bootstrap_path, blob_dir, replace(options, platforms=tuple(platforms))
    )
    if options.start_command is not None and not options.prefetch_files:
        progress.note(f"prefetch list guessed from the entrypoint: {result.start_files} files")
    blob_ids = [blob.blob_id for blob in open_bootstrap(bootstrap_path).blobs]
    blobs = [(blob_id, os.path.getsize(os.path.join(blob_dir, blob_id))) for blob_id in blob_ids]
    with open(bootstrap_path, "rb") as file:
        bootstrap_bytes = file.read()
    metadata = erofs_metadata(bootstrap_bytes, progress) if erofs else None
    bootstrap, bootstrap_diff_id = oci.pack_bootstrap_layer(bootstrap_bytes, metadata)
    config = oci.converted_config(image.config, [*(f"sha256:{blob_id}" for blob_id in blob_ids), bootstrap_diff_id])
    manifest = oci.converted_manifest(config, blobs, bootstrap)

    pushed = skipped = 0
    for blob_id, _ in blobs:
        if client.push_blob(target, f"sha256:{blob_id}", os.path.join(blob_dir, blob_id)):
            pushed += 1
        else:
            skipped += 1
    for data in (bootstrap, config):
        if client.push_blob(target, sha256_digest(data), data):
            pushed += 1
        else:
            skipped += 1
    digest = client.push_manifest(target, manifest, oci.OCI_MANIFEST)
    progress.note(f"pushed {pushed} blobs, skipped {skipped} already present")
    return ConvertResult(digest, pushed, skipped)


def erofs_metadata(bootstrap_bytes: bytes, progress: Progress) -> bytes | None:
    """The image's EROFS metadata (`rafs.erofs`), shipped in the bootstrap layer so that nydusd's
    EROFS driver need not write it at mount; None (and a note) for an image EROFS cannot hold."""
    bootstrap = Bootstrap(bootstrap_bytes)
    try:
        return write_erofs(bootstrap, DeviceMap(bootstrap), data_device=1, tag=layout_tag(bootstrap_bytes))
    except UnsupportedForErofs as error:
        progress.note(f"no EROFS metadata shipped ({error}); nydusd's EROFS driver cannot serve it")
        return None


# ---- checking


@dataclass(frozen=True)
class CheckResult:
    inodes: int
    chunks_verified: int
    blobs_verified: int
    root_digest: str


def pull_converted(client: RegistryClient, target: ImageReference, work_dir: str) -> str:
    """Download a converted image's bootstrap and blobs into `work_dir`; returns the bootstrap path.

    The manifest is read by `rafs.oci.parse_converted_manifest` and the bootstrap layer unpacked
    by `rafs.oci.bootstrap_in_layer`, as `nydusd --image` does, so the two accept the same
    artifacts; beyond that, the config's diff_ids must match the layers.
    """
    os.makedirs(work_dir, exist_ok=True)
    where = str(target)
    image = oci.parse_converted_manifest(client.get_image_manifest(target).document, where)
    limit = client.options.bootstrap_size_limit
    layer_path = os.path.join(work_dir, "image.boot.tar.gz")
    client.download_blob(target, image.bootstrap_digest, layer_path, max_bytes=oci.layer_limit(limit))
    bootstrap_path = os.path.join(work_dir, "image.boot")
    with (
        open(layer_path, "rb") as layer,
        oci.bootstrap_in_layer(layer, limit, where) as unpacked,
        open(bootstrap_path, "wb") as output,
    ):
        shutil.copyfileobj(unpacked.stream, output)
    image.check_blob_table([blob.blob_id for blob in open_bootstrap(bootstrap_path).blobs], where)

    config = json.loads(client.read_blob(target, image.config_digest))
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    if not isinstance(rootfs, dict) or rootfs.get("diff_ids") != [*image.blob_digests, unpacked.diff_id]:
        raise ImageError(f"{target}: config rootfs.diff_ids do not match the layers")
    blob_dir = os.path.join(work_dir, "blobs")
    os.makedirs(blob_dir, exist_ok=True)
    for digest in image.blob_digests:
        client.download_blob(target, digest, os.path.join(blob_dir, digest[len("sha256:") :]))
    return bootstrap_path


def tree_differences(expected: Bootstrap, actual: Bootstrap, limit: int = 10) -> list[str]:
    """Paths whose inode digest (metadata and content) differs, or that only one side has."""
    want = {path: expected.inode(ino).digest for path, ino in expected.walk()}
    have = {path: actual.inode(ino).digest for path, ino in actual.walk()}
    problems = []
    for path in sorted(want.keys() | have.keys()):
        shown = path.decode("utf-8", "backslashreplace")
        if path not in have:
            problems.append(f"{shown}: missing from the converted image")
        elif path not in want:
            problems.append(f"{shown}: not in the source image")
        elif want[path] != have[path]:
            problems.append(f"{shown}: differs from the source")
        if len(problems) >= limit:
            break
    return problems


def check(
    client: RegistryClient, source: str, target: ImageReference, work_dir: str, platforms: Sequence[Platform]
) -> CheckResult:
    """Verify the converted image and compare its tree with the source's layers applied."""
    target_dir = os.path.join(work_dir, "target")
    bootstrap_path = pull_converted(client, target, target_dir)
    converted = open_bootstrap(bootstrap_path)
    report = check_bootstrap(converted, os.path.join(target_dir, "blobs"))

    source_dir = os.path.join(work_dir, "source")
    os.makedirs(source_dir, exist_ok=True)
    image = pull_source(client, source, source_dir, platforms, Progress())
    options = BuildOptions(chunk_size=converted.chunk_size, digester=converted.digester)
    source_bootstrap = os.path.join(source_dir, "image.boot")
    build(image.source_type, image.sources, source_bootstrap, os.path.join(source_dir, "blobs"), options)
    problems = tree_differences(open_bootstrap(source_bootstrap), converted)
    if problems:
        raise ConvertError(f"{target} does not match {source}: {'; '.join(problems)}")
    return CheckResult(report.inodes, report.chunks_verified, report.blobs_verified, report.root_digest)


# ---- command line


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nydusify", description="Convert OCI images to lazy-loading images.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, help_text in (
        ("convert", "pull an OCI image, build it, push the converted image"),
        ("check", "verify a converted image against its source"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--source", required=True, help="host[:port]/repo[:tag|@digest] or oci:DIR[:tag]")
        command.add_argument("--target", required=True, help="host[:port]/repo[:tag]")
        command.add_argument("--plain-http", action="store_true", help="plain HTTP (default only for loopback)")
        command.add_argument("--skip-verify", action="store_true", help="do not verify TLS certificates")
        command.add_argument("--platform", type=platform, help="OS/ARCH to pick from an index")
        command.add_argument("--work-dir", metavar="DIR", help="keep downloads and outputs here")
        command.add_argument("--retry-limit", type=int, default=3)
        command.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a read")
        if name == "convert":
            command.add_argument("--chunk-size", type=chunk_size, default=layout.DEFAULT_CHUNK_SIZE)
            command.add_argument("--prefetch-files", metavar="FILE", help="paths (one a line) to put first")
            command.add_argument(
                "--prefetch-policy",
                choices=PREFETCH_POLICIES,
                default="entrypoint",
                help="without --prefetch-files: guess the list from the image's entrypoint (default), or none",
            )
            command.add_argument(
                "--erofs",
                action="store_true",
                help="ship EROFS metadata in the bootstrap layer (nydusd fs_driver erofs)",
            )
    command = commands.add_parser("warm", help="have a registry mirror cache a converted image")
    command.add_argument("--target", required=True, help="host[:port]/repo[:tag]: the image, named by its origin")
    command.add_argument("--mirror", required=True, help="the mirror: host[:port] or http(s)://host[:port]")
    command.add_argument("--plain-http", action="store_true", help="plain HTTP (default only for loopback)")
    command.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each blob to be cached")
    return parser


def _warm(arguments: argparse.Namespace) -> int:
    mirror = arguments.mirror
    plain_http = True if arguments.plain_http else None
    if "://" in mirror:
        scheme, mirror = mirror.split("://", 1)
        if scheme not in ("http", "https"):
            raise ConfigError(f"--mirror {arguments.mirror}: expected host[:port] or http(s)://host[:port]")
        plain_http, mirror = scheme == "http", mirror.rstrip("/")
    if not mirror or "/" in mirror:
        raise ConfigError(f"--mirror {arguments.mirror}: expected host[:port] or http(s)://host[:port]")
    options = RegistryOptions(
        plain_http=True if arguments.plain_http else None,
        mirrors=(Mirror(mirror, plain_http=plain_http),),
        mirror_cold_wait_s=arguments.timeout,
    )
    client = RegistryClient(options)
    try:
        result = warm(client, ImageReference.parse(arguments.target))
    finally:
        client.close()
    print(f"OK: {mirror} serves {arguments.target}: {result.blobs} blobs, {result.bytes} bytes, {result.seconds:.1f} s")
    return 0


def _client(arguments: argparse.Namespace) -> RegistryClient:
    http = HttpOptions(
        timeout_s=arguments.timeout, retry_limit=arguments.retry_limit, skip_verify=arguments.skip_verify
    )
    return RegistryClient(RegistryOptions(http=http, plain_http=True if arguments.plain_http else None))


def _run(arguments: argparse.Namespace) -> int:
    if arguments.command == "warm":
        return _warm(arguments)
    target = ImageReference.parse(arguments.target)
    platforms: tuple[Platform, ...] = (arguments.platform,) if arguments.platform else host_platforms()
    client = _client(arguments)
    work_dir = arguments.work_dir or tempfile.mkdtemp(prefix="nydusify-")
    try:
        os.makedirs(work_dir, exist_ok=True)
        if arguments.command == "convert":
            options = BuildOptions(
                chunk_size=arguments.chunk_size,
                prefetch_files=read_prefetch_list(arguments.prefetch_files),
                progress=True,
            )
            result = convert(
                client,
                arguments.source,
                target,
                work_dir,
                options,
                platforms,
                erofs=arguments.erofs,
                prefetch_policy=arguments.prefetch_policy,
            )
            print(result.digest)
        else:
            report = check(client, arguments.source, target, work_dir, platforms)
            print(
                f"OK: {target} matches {arguments.source}: {report.inodes} inodes, "
                f"{report.chunks_verified} chunks in {report.blobs_verified} blobs verified; root {report.root_digest}"
            )
        return 0
    finally:
        client.close()
        if not arguments.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_with_one_line_errors(f"nydusify {arguments.command}", lambda: _run(arguments))


if __name__ == "__main__":
    sys.exit(main())

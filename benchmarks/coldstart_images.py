"""Real images for the cold-start benchmark, built from Debian's packages and pushed as OCI images.

Each layer is a set of Debian packages (resolved with their dependencies by `apt-get -s install`
against an empty package database, so apt picks alternatives as on a fresh system), downloaded
with `apt-get download` into a cache and unpacked with `dpkg-deb -x`, or a few files of our own.
No maintainer scripts run; the few files they would create and a container needs (`/etc/passwd`,
`/etc/group`, `/tmp`, the `update-alternatives` links of OpenBLAS, the `.pyc` files of
`py3compile`) are made by hand. Layers are cached by their content list, so only the first run
downloads and compresses.

`debian-sci` is the large image (about 1 GiB unpacked, 320 MiB of gzip layers): its start reads
about 300 MB, most of it from big shared libraries (libLLVM, OpenBLAS, scipy's and pandas'
extension modules), as a data-science container's does.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.storage.registry import RegistryClient
from rafs import oci
from rafs.oci import ImageReference

LAYER_FORMAT = "coldstart-layer-2"  # bump to rebuild every cached layer
DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/nydus-py"))
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Debian's `Priority: required` set: what `debootstrap --variant=minbase` installs. `usr-is-merged`
# stands where debootstrap merges /usr itself; without it apt would pick `usrmerge` (and perl).
MINBASE = (
    "apt", "base-files", "base-passwd", "bash", "bsdutils", "coreutils", "dash", "debconf", "debianutils",
    "diffutils", "dpkg", "e2fsprogs", "findutils", "grep", "gzip", "hostname", "init-system-helpers", "libc-bin",
    "libpam-modules", "libpam-modules-bin", "libpam-runtime", "login", "mawk", "mount", "ncurses-base",
    "ncurses-bin", "passwd", "perl-base", "sed", "sysvinit-utils", "tar", "tzdata", "usr-is-merged", "util-linux",
)  # fmt: skip

APP = '''"""A small app: reads the OS release, hashes it and prints a JSON summary."""

import argparse
import hashlib
import json
import pathlib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", default="/etc/os-release")
    arguments = parser.parse_args()
    text = pathlib.Path(arguments.path).read_text()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(json.dumps({"name": fields.get("PRETTY_NAME", "?").strip('"'), "sha256": digest[:16]}))


main()
'''

SCI_APP = '''"""A small data-science job: load the scientific stack, fit two models on synthetic data,
JIT-compile a loop with numba, print a summary."""

import json

import numba
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.optimize
import scipy.signal
import scipy.sparse.linalg
import scipy.stats
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@numba.njit
def pairwise_mean_distance(points: np.ndarray) -> float:
    total = 0.0
    for first in range(points.shape[0]):
        for second in range(first + 1, points.shape[0]):
            total += np.sqrt(np.sum((points[first] - points[second]) ** 2))
    return total / (points.shape[0] * (points.shape[0] - 1) / 2)


def main() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(2000, 8))
    labels = (features @ rng.normal(size=8) + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    frame = pd.DataFrame(features, columns=[f"f{index}" for index in range(8)]).assign(label=labels)
    train, test = train_test_split(frame, test_size=0.25, random_state=0)
    columns = [f"f{index}" for index in range(8)]
    linear = make_pipeline(StandardScaler(), LogisticRegression()).fit(train[columns], train["label"])
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(train[columns], train["label"])
    spectrum = scipy.signal.welch(features[:, 0])[1]
    sparse = scipy.sparse.random(200, 200, density=0.05, random_state=1)
    summary = {
        "linear_accuracy": round(float(linear.score(test[columns], test["label"])), 3),
        "forest_accuracy": round(float(forest.score(test[columns], test["label"])), 3),
        "condition": round(float(np.linalg.cond(scipy.linalg.cho_factor(features.T @ features)[0])), 1),
        "ttest_p": float(scipy.stats.ttest_ind(features[:, 0], features[:, 1]).pvalue) > 0,
        "minimum": round(float(scipy.optimize.minimize_scalar(lambda x: (x - 2) ** 2).x), 3),
        "spectrum_bins": len(spectrum),
        "eigenvalues": len(scipy.sparse.linalg.eigsh(sparse + scipy.sparse.eye(200), k=2)[0]),
        "mean_distance": round(pairwise_mean_distance(features[:300]), 3),
        "group_means": frame.groupby("label")["f0"].mean().round(2).tolist(),
    }
    print(json.dumps(summary))


main()
'''


@dataclass(frozen=True)
class LayerSpec:
    """Packages (with their dependencies, less those of lower layers) and files of one layer."""

    packages: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (path inside the image, text)
    symlinks: tuple[tuple[str, str], ...] = ()  # (path inside the image, target): what update-alternatives makes


@dataclass(frozen=True)
class ImageSpec:
    name: str
    description: str
    layers: tuple[LayerSpec, ...]
    workload: tuple[str, ...]


BASE_LAYER = LayerSpec(packages=MINBASE)

# numpy with OpenBLAS as the BLAS and LAPACK (the alternative Debian picks when it is installed:
# priority 100 against the reference BLAS's 10), linked through /etc/alternatives as
# update-alternatives would.
_MULTIARCH = "usr/lib/x86_64-linux-gnu"
NUMPY_LAYER = LayerSpec(
    packages=("python3", "python3-numpy", "libopenblas0-pthread"),
    symlinks=tuple(
        link
        for name in ("libblas.so.3", "liblapack.so.3", "libopenblas.so.0")
        for link in (
            (f"{_MULTIARCH}/{name}", f"/etc/alternatives/{name}-x86_64-linux-gnu"),
            (f"etc/alternatives/{name}-x86_64-linux-gnu", f"/{_MULTIARCH}/openblas-pthread/{name}"),
        )
    ),
)
IMAGES: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("debian-base", "Debian 12 minbase", (BASE_LAYER,), ("/bin/sh", "-c", "true")),
        ImageSpec(
            "debian-python",
            "minbase + python3 + a small app",
            (BASE_LAYER, LayerSpec(packages=("python3",)), LayerSpec(files=(("app/app.py", APP),))),
            ("python3", "/app/app.py"),
        ),
        ImageSpec(
            "debian-perl",
            "minbase + perl (many small files)",
            (BASE_LAYER, LayerSpec(packages=("perl",))),
            ("perl", "-MPOSIX", "-MData::Dumper", "-MGetopt::Long", "-MFile::Find", "-e", "print Dumper([1])"),
        ),
        ImageSpec(
            "debian-sci",
            "minbase + python3, numpy (OpenBLAS), scipy, pandas, scikit-learn, numba (LLVM) + a fitting job",
            (
                BASE_LAYER,
                NUMPY_LAYER,
                LayerSpec(packages=("python3-scipy", "python3-pandas", "python3-sklearn", "python3-numba")),
                LayerSpec(files=(("app/fit.py", SCI_APP),)),
            ),
            ("python3", "/app/fit.py"),
        ),
    )
}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str

    @property
    def deb_name(self) -> str:
        """The file name `apt-get download` gives it (an epoch's `:` escaped as `%3a`)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class BuiltLayer:
    """A layer tar.gz in the cache: `digest` of the gzip, `diff_id` of the tar inside."""

    path: Path
    digest: str
    diff_id: str
    size: int
    files: int
    unpacked_bytes: int


@dataclass(frozen=True)
class BuiltImage:
    spec: ImageSpec
    layers: tuple[BuiltLayer, ...]
    config: bytes

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def unpacked_bytes(self) -> int:
        return sum(layer.unpacked_bytes for layer in self.layers)

    @property
    def files(self) -> int:
        return sum(layer.files for layer in self.layers)


_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)")


def resolve(packages: Sequence[str]) -> list[Package]:
    """`packages` and everything they depend on (no recommends), as on an empty system."""
    if not packages:
        return []
    with tempfile.NamedTemporaryFile(prefix="empty-dpkg-status-") as empty_status:
        completed = subprocess.run(
            ["apt-get", "-s", "install", "-o", f"Dir::State::status={empty_status.name}",
             "-o", "APT::Install-Recommends=false", *packages],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"apt-get cannot resolve {' '.join(packages)}: {completed.stderr.strip()}")
    resolved = []
    for line in completed.stdout.splitlines():
        match = _INST.match(line)
        if match:
            resolved.append(Package(match.group(1), match.group(2), match.group(3)))
    return sorted(resolved, key=lambda package: package.name)


def download(packages: Sequence[Package], deb_dir: Path) -> list[Path]:
    """The .deb files of `packages`, downloading those not already in `deb_dir`."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [package for package in packages if not (deb_dir / package.deb_name).exists()]
    if missing:
        print(f"  apt-get download: {len(missing)} packages into {deb_dir}", flush=True)
        subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
             *(f"{package.name}={package.version}" for package in missing)],
            cwd=deb_dir, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    paths = [deb_dir / package.deb_name for package in packages]
    for path in paths:
        if not path.exists():
            raise RuntimeError(f"apt-get download did not produce {path}")
    return paths


def _finish_base(root: Path) -> None:
    """What maintainer scripts would have made and a container expects to find."""
    masters = root / "usr/share/base-passwd"
    for name in ("passwd", "group"):
        target = root / "etc" / name
        if (masters / f"{name}.master").exists() and not target.exists():
            shutil.copyfile(masters / f"{name}.master", target)
    for name in ("tmp", "proc", "sys", "dev", "run", "root"):
        (root / name).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shell = root / "bin/sh"
    if not shell.exists() and not shell.is_symlink() and (root / "bin/dash").exists():
        os.symlink("dash", shell)


def _compile_python(root: Path) -> None:
    """Byte-compile the layer's Python modules as Debian's `py3compile` (run by maintainer scripts)
    would, so that a container imports `.pyc` files, as in a real image, instead of compiling every
    module into its writable layer on each start. The image's interpreter cannot run outside it, so
    Debian's interpreter on the host compiles (the same release: `/usr/bin/python3.N` for a layer's
    `usr/lib/python3.N`, `/usr/bin/python3` for `dist-packages`)."""
    trees = [(path, Path("/usr/bin") / path.name) for path in sorted(root.glob("usr/lib/python3.*")) if path.is_dir()]
    dist_packages = root / "usr/lib/python3/dist-packages"
    if dist_packages.is_dir():
        trees.append((dist_packages, Path("/usr/bin/python3")))
    for tree, interpreter in trees:
        if not interpreter.exists():
            raise RuntimeError(f"byte-compiling {tree}: the host has no {interpreter}")
        # exit status 1: some files did not compile (Python 2 test data, which py3compile meets too)
        completed = subprocess.run(
            [str(interpreter), "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/", str(tree)],
            stdout=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if completed.returncode not in (0, 1):
            raise RuntimeError(f"byte-compiling {tree} failed ({completed.returncode})")


def _tar_gz(directory: Path, output: Path) -> tuple[str, str]:
    """Write `directory`'s entries (sorted, numeric owners) as tar.gz; (digest, diff_id)."""
    entries = sorted(os.listdir(directory))
    tar = subprocess.Popen(
        ["tar", "-C", str(directory), "--sort=name", "--numeric-owner", "--xattrs", "-cf", "-", "--", *entries],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    diff_id = hashlib.sha256()
    with open(output, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed:
        while data := tar.stdout.read(1 << 20):
            diff_id.update(data)
            compressed.write(data)
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {directory} failed")
    digest = hashlib.sha256()
    with open(output, "rb") as file:
        while data := file.read(1 << 20):
            digest.update(data)
    return "sha256:" + digest.hexdigest(), "sha256:" + diff_id.hexdigest()


def _count(directory: Path) -> tuple[int, int]:
    """(entries, bytes of regular files) under `directory`."""
    entries = total = 0
    for parent, directories, names in os.walk(directory):
        entries += len(directories) + len(names)
        for name in names:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return entries, total


def build_layer(packages: Sequence[Package], spec: LayerSpec, is_base: bool, cache: Path) -> BuiltLayer:
    """The layer of `packages` plus `spec.files`, from the cache when built before."""
    listing = [LAYER_FORMAT, str(is_base), *(f"{p.name}={p.version}:{p.architecture}" for p in packages)]
    listing += [f"{path}\0{text}" for path, text in spec.files]
    listing += [f"{path}\0->{target}" for path, target in spec.symlinks]
    key = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:24]
    layer_dir = cache / "coldstart" / "layers"
    layer_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = layer_dir / f"{key}.tar.gz", layer_dir / f"{key}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return BuiltLayer(path, meta["digest"], meta["diff_id"], path.stat().st_size, meta["files"], meta["bytes"])
    if not packages and not spec.files and not spec.symlinks:
        raise ValueError(f"layer {spec} adds nothing to the layers below it")
    debs = download(packages, cache / "debs")
    print(f"  building layer {key}: {len(debs)} packages, {len(spec.files)} files", flush=True)
    with tempfile.TemporaryDirectory(prefix="coldstart-layer-", dir=layer_dir) as temp:
        root = Path(temp) / "root"
        root.mkdir()
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        for relative, text in spec.files:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for relative, link_target in spec.symlinks:
            link = root / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link_target, link)
        if is_base:
            _finish_base(root)
        _compile_python(root)
        files, unpacked = _count(root)
        temp_path = Path(temp) / "layer.tar.gz"
        digest, diff_id = _tar_gz(root, temp_path)
        os.replace(temp_path, path)
    meta_path.write_text(json.dumps({"digest": digest, "diff_id": diff_id, "files": files, "bytes": unpacked}))
    return BuiltLayer(path, digest, diff_id, path.stat().st_size, files, unpacked)


def build_image(spec: ImageSpec, cache: Path = DEFAULT_CACHE) -> BuiltImage:
    """Every layer of `spec` (each adds what the layers below lack) and its OCI config."""
    layers: list[BuiltLayer] = []
    below: set[Package] = set()
    roots: list[str] = []
    for position, layer_spec in enumerate(spec.layers):
        roots += layer_spec.packages
        everything = resolve(roots)
        added = [package for package in everything if package not in below]
        layers.append(build_layer(added, layer_spec, position == 0, cache))
        below.update(everything)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [ENV_PATH], "Cmd": list(spec.workload), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"coldstart layer {index}"} for index in range(len(layers))],
    }
    return BuiltImage(spec, tuple(layers), json.dumps(config, sort_keys=True).encode())


def push_image(client: RegistryClient, ref: ImageReference, image: BuiltImage) -> str:
    """Push layers, config and an OCI manifest; returns the manifest digest."""
    config_digest = "sha256:" + hashlib.sha256(image.config).hexdigest()
    for layer in image.layers:
        client.push_blob(ref, layer.digest, str(layer.path))
    client.push_blob(ref, config_digest, image.config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": config_digest, "size": len(image.config)},
        "layers": [
            {"mediaType": oci.OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer in image.layers
        ],
    }
    return client.push_manifest(ref, json.dumps(manifest, indent=2).encode(), oci.OCI_MANIFEST)

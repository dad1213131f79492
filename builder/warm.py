"""`nydusify warm`: have a registry mirror cache a converted image, right after `nydusify convert`.

A pull-through mirror caches a blob only when first asked for it, and while it does, every
range a daemon asks for is answered with the whole blob from the origin (see
`daemon.storage.registry.mirrors`). Warming asks the mirror for the manifest, the config and
every layer once, the way a daemon would, and waits until the mirror serves each from its
cache, so the first hosts to start the image find it there.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from daemon.storage.registry import Probe, RegistryClient
from rafs.errors import ConvertError
from rafs.oci import ImageReference

PARALLEL_BLOBS = 8


@dataclass(frozen=True)
class WarmResult:
    blobs: int
    bytes: int
    seconds: float


def warm(client: RegistryClient, target: ImageReference) -> WarmResult:
    """Warm `client`'s first mirror with `target`; `ConvertError` if a blob is still not cached
    when the client's `mirror_cold_wait_s` has passed."""
    if not client.mirrors:
        raise ConvertError("warm: no mirror to warm")
    started = time.monotonic()
    manifest = client.get_image_manifest(target)  # through the mirror: it caches the manifest too
    layers = manifest.document.get("layers")
    descriptors = [manifest.document.get("config"), *(layers if isinstance(layers, list) else [])]
    blobs = [d for d in descriptors if isinstance(d, dict) and str(d.get("digest", "")).startswith("sha256:")]
    digests = [str(descriptor["digest"]) for descriptor in blobs]
    with ThreadPoolExecutor(max_workers=PARALLEL_BLOBS) as pool:  # the mirror caches them side by side
        outcomes = list(pool.map(lambda digest: client.mirror_serves(0, target, digest), digests))
    for digest, outcome in zip(digests, outcomes, strict=True):
        if outcome is not Probe.RANGES:
            raise ConvertError(
                f"warm: mirror {client.mirrors[0].endpoint.host} did not cache {digest} ({outcome.value})"
            )
    total = sum(int(descriptor.get("size", 0)) for descriptor in blobs)
    return WarmResult(len(blobs), total, time.monotonic() - started)

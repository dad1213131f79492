"""Which layer a snapshot is, from the labels containerd passes (nydus-snapshotter's rules).

containerd copies a layer descriptor's annotations that start with `containerd.io/snapshot/` onto
the snapshot's labels, and adds `containerd.io/snapshot.ref` (the layer's chain ID) on the
`Prepare` that unpacks a layer; a container's writable layer comes without it. Remote-snapshot
clients add the image reference (CRI with `disable_snapshot_annotations = false`, nerdctl, and
stargz's `ctr-remote image rpull`).
"""

from __future__ import annotations

from collections.abc import Mapping

from rafs.oci import ANNOTATION_NYDUS_BLOB, ANNOTATION_NYDUS_BOOTSTRAP, BOOTSTRAP_PATH_IN_LAYER

TARGET_SNAPSHOT_REF = "containerd.io/snapshot.ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
NYDUS_DATA_LAYER = ANNOTATION_NYDUS_BLOB
NYDUS_META_LAYER = ANNOTATION_NYDUS_BOOTSTRAP
BOOTSTRAP_IN_SNAPSHOT = BOOTSTRAP_PATH_IN_LAYER  # where the unpacked bootstrap layer keeps image.boot

HOW_TO_SEND_THE_REFERENCE = (
    "containerd sent no image reference with this Nydus image's layers; pull it with "
    "`ctr-remote image rpull`, with nerdctl, or through CRI with "
    '`disable_snapshot_annotations = false` in [plugins."io.containerd.grpc.v1.cri".containerd]'
)


def is_layer_unpack(labels: Mapping[str, str]) -> bool:
    """A `Prepare` that unpacks an image layer (rather than a container's writable layer)."""
    return TARGET_SNAPSHOT_REF in labels


def is_data_layer(labels: Mapping[str, str]) -> bool:
    """A Nydus blob layer: served lazily by nydusd, never downloaded by containerd."""
    return labels.get(NYDUS_DATA_LAYER) == "true"


def is_meta_layer(labels: Mapping[str, str]) -> bool:
    """The Nydus bootstrap layer: containerd unpacks it (a small tar.gz holding image/image.boot)."""
    return labels.get(NYDUS_META_LAYER) == "true"


def image_reference(labels: Mapping[str, str]) -> str | None:
    """The image the layer came from, as the remote-snapshot clients name it."""
    return labels.get(CRI_IMAGE_REF) or labels.get(STARGZ_REFERENCE) or None

"""The bootstrap layer: `image/image.boot`, then (optionally) its EROFS metadata."""

from __future__ import annotations

import io
from typing import IO

import pytest

from rafs import oci
from rafs.errors import ImageError


def unpack(layer: bytes, limit: int = 1 << 20) -> tuple[bytes, list[bytes], str]:
    """(bootstrap, what the EROFS sink was handed, diff_id) of a packed layer."""
    handed: list[bytes] = []

    def sink(stream: IO[bytes]) -> None:
        handed.append(stream.read())

    with oci.bootstrap_in_layer(io.BytesIO(layer), limit, "test", sink) as unpacked:
        bootstrap = unpacked.stream.read()
    return bootstrap, handed, unpacked.diff_id


def test_the_erofs_metadata_rides_after_the_bootstrap() -> None:
    layer, diff_id = oci.pack_bootstrap_layer(b"bootstrap bytes", b"erofs bytes")
    assert unpack(layer) == (b"bootstrap bytes", [b"erofs bytes"], diff_id)
    assert oci.pack_bootstrap_layer(b"bootstrap bytes", b"erofs bytes") == (layer, diff_id)  # reproducible


def test_a_layer_without_metadata_hands_the_sink_nothing() -> None:
    layer, diff_id = oci.pack_bootstrap_layer(b"bootstrap bytes")
    assert unpack(layer) == (b"bootstrap bytes", [], diff_id)


def test_metadata_larger_than_the_limit_is_refused() -> None:
    layer, _ = oci.pack_bootstrap_layer(b"small", bytes(2000))
    with pytest.raises(ImageError, match="EROFS metadata of 2000 bytes is larger than 1000"):
        unpack(layer, limit=1000)

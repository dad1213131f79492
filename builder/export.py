"""`nydus-image export --block`: an image as one EROFS file, metadata and data, for `mount -t erofs`.

The metadata is `rafs.erofs`'s; the data device (every distinct chunk, uncompressed, verified
as it is read from the blob directory) follows it in the same file. The file appears only when
complete (`rafs.outputs`).
"""

from __future__ import annotations

from builder.verify import BlobFiles, verify_all
from rafs.bootstrap import Bootstrap
from rafs.erofs import BLOCK, DeviceMap, layout_tag, write_erofs
from rafs.outputs import atomic_file


def export_block(bootstrap: Bootstrap, blob_dir: str, output: str) -> int:
    """Write the EROFS image of `bootstrap` (chunks from `blob_dir`) to `output`; its size."""
    verify_all(bootstrap)
    device = DeviceMap(bootstrap)
    metadata = write_erofs(bootstrap, device, data_device=0, tag=layout_tag(bytes(bootstrap.buffer)))
    files = BlobFiles(bootstrap, blob_dir)
    try:
        with atomic_file(output) as out:
            out.write(metadata)
            for chunk in device.chunks():
                data = files.read_chunk(bootstrap.chunk(chunk.chunk_index), chunk.chunk_index)
                out.write(data + bytes(-len(data) % BLOCK))
    finally:
        files.close()
    return len(metadata) + device.size

"""`python -m daemon.snapshotter.proto`: regenerate the committed *_pb2 modules."""

from daemon.snapshotter.proto import generate

generate()

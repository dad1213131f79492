"""`containerd-nydus-grpc`: a containerd remote snapshotter that runs this project's images lazily.

Layout (what each module owns):
- `cli.py`: the command line, logging, signals; wires the parts together;
- `config.py`: the TOML config (nydus-snapshotter's keys) into one frozen record;
- `service.py`: the gRPC `Snapshots` service, translating only (errors to gRPC codes);
- `snapshotter.py`: the operations (Prepare, Commit, Remove, ...) and the remote-snapshot rules;
- `labels.py`: which layer a snapshot is, from containerd's labels;
- `store.py`: metadata in SQLite under the root (snapshots, daemons, served images);
- `layout.py`: paths under the root and the mounts handed to containerd;
- `images.py`: which nydusd serves which bootstrap, with which config;
- `daemons.py`: nydusd's life (start, RUNNING, watch, stop), through its API socket only;
- `metrics.py`: the Prometheus endpoint;
- `proto/`: containerd's API as .proto files and protoc's output.
It never imports the FUSE daemon: nydusd is a separate process it talks to over its socket.
"""

"""nydusd: serve a bootstrap over FUSE, fetching chunks lazily.

Layout:
- `cli`: the `nydusd` command line; `ctl`: `nydusctl`
- `config`: nydusd's JSON config, strictly checked
- `serve`: open everything, mount, run the FUSE loop, unmount on signals
- `mountpoint`: mount-table checks; clears a stale mount a killed daemon left
- `fs`: the FUSE operations (translate only); `reader`: file range -> chunk slices -> bytes
- `chunks`: the trio side of reads: cache hit or single-flight fetch in worker threads
- `prefetch`, `trace`: background prefetch and the access trace
- `storage`: synchronous backends (localfs, http, registry), the chunk cache and fetching;
  it imports neither trio nor pyfuse3
"""

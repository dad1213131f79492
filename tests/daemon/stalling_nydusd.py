"""`nydusd` with a stalling test backend: `python -m tests.daemon.stalling_nydusd --stall-flag F ...`.

The backend is the real `LocalFsBackend`, except that while the file named by `--stall-flag`
exists every range read waits (as a very slow network would). Each read is logged as
`backend read <blob> <offset> <length>` so tests can count fetches. Every other `nydusd` flag
(`--apisock`, `--thread-num`, ...) works as in the real daemon. Test-only, named as such.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from functools import partial

import trio

from daemon.cli import LOG_LEVELS, parser, serve_options
from daemon.config import load_config
from daemon.serve import serve
from daemon.storage.localfs import LocalFsBackend
from daemon.storage.options import LocalFsConfig

log = logging.getLogger("stalling-backend")


class StallingBackend(LocalFsBackend):
    """LocalFsBackend whose reads wait while `flag` exists."""

    def __init__(self, directory: str, flag: str) -> None:
        super().__init__(directory)
        self.flag = flag

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        if os.path.exists(self.flag):
            log.info("stalling read %s %d %d", blob_id[:16], offset, length)
            while os.path.exists(self.flag):
                time.sleep(0.01)
        log.info("backend read %s %d %d", blob_id[:16], offset, length)
        return super().read_range(blob_id, offset, length)


def main() -> int:
    outer = argparse.ArgumentParser(add_help=False)
    outer.add_argument("--stall-flag", required=True)
    known, rest = outer.parse_known_args()
    args = parser().parse_args(rest)
    logging.basicConfig(level=LOG_LEVELS[args.log_level], format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    if not isinstance(config.backend, LocalFsConfig):
        raise SystemExit("stalling_nydusd: the config's backend must be localfs")
    backend = StallingBackend(config.backend.dir, known.stall_flag)
    trio.run(partial(serve, serve_options(args, args.bootstrap, config), backend=backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`nydusd`: mount a bootstrap over FUSE in the foreground.

The one edge where errors become a message and an exit code: a `NydusError` prints one line
and exits with the class's `exit_code`; SIGINT/SIGTERM unmount and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from daemon.config import default_config, load_config
from daemon.serve import ServeOptions, serve
from rafs.errors import NydusError

LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="nydusd", description="Mount a RAFS bootstrap over FUSE.")
    result.add_argument("--bootstrap", required=True, help="bootstrap file of the image")
    result.add_argument("--mountpoint", required=True, help="directory to mount on")
    result.add_argument("--config", help="nydusd JSON config; default: localfs backend in the bootstrap's directory")
    result.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    result.add_argument("--no-allow-other", action="store_true", help="only the mounting user may access the mount")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=LOG_LEVELS[args.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.config:
            config = load_config(args.config)
        else:
            config = default_config(os.path.dirname(os.path.abspath(args.bootstrap)))
        options = ServeOptions(args.bootstrap, args.mountpoint, config, allow_other=not args.no_allow_other)
        trio.run(serve, options)
    except NydusError as error:
        print(f"nydusd: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

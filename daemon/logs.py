"""Where the daemon's log goes and at what level: `--log-level`, `--log-file`, `--log-rotation-size`,
and `PUT /api/v1/daemon {"log_level": ...}` at run time. Stdlib only."""

from __future__ import annotations

import logging
import sys

from rafs.errors import ConfigError

LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROTATED_FILES_KEPT = 10


def setup_logging(level: str, log_file: str | None = None, rotation_size_mb: int = 0) -> None:
    """Log at `level` to `log_file` (rotated at `rotation_size_mb`, 0 = never), else to stderr."""
    handler: logging.Handler
    if log_file:
        try:
            if rotation_size_mb:
                from logging.handlers import RotatingFileHandler  # here: every start pays for imports

                handler = RotatingFileHandler(
                    log_file, maxBytes=rotation_size_mb << 20, backupCount=ROTATED_FILES_KEPT, encoding="utf-8"
                )
            else:
                handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"--log-file {log_file}: {error.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=LOG_LEVELS[level], handlers=[handler], force=True)


def set_log_level(level: str) -> str:
    """Change the level of the running daemon's log; the level's canonical name."""
    name = level.lower()
    if name not in LOG_LEVELS:
        raise ConfigError(f"log level {level!r} is not one of {', '.join(sorted(LOG_LEVELS))}")
    logging.getLogger().setLevel(LOG_LEVELS[name])
    logging.getLogger(__name__).info("log level set to %s", name)
    return name

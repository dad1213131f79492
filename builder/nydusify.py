"""`nydusify`: convert OCI images from a registry (arrives with the registry issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("nydusify: not yet available (registry support is a later issue)", file=sys.stderr)
    return 2

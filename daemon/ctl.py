"""`nydusctl`: talks to the daemon's API socket, which arrives in a later issue."""

from __future__ import annotations

import sys


def main() -> int:
    print("nydusctl: not yet available (the API socket comes in a later issue)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

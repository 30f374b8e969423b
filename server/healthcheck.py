"""`python -m server.healthcheck`: exit 0 when this container's server answers /healthz, else 1.

The slim image has no curl; this uses only the standard library and reads the port the server uses.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("PROMPTSERVE_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

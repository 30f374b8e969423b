"""A server's resident memory before and after 100,000 classify requests for distinct unknown task names (issue 23:
growth < 5 MB; a lock kept per name once cost ~280 bytes each).

    python benchmarks/unknown_names_rss.py [--names 100000]

Starts a random-tiny server on a free loopback port, warms it with 2,000 unknown names, then sends the rest over
one keep-alive connection and prints one table row: RSS before and after, growth per name, seconds.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

import common as c  # noqa: E402
import psutil  # noqa: E402
from server_utils import ServerProcess, image_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100_000)
    args = parser.parse_args()
    with c.recorded("unknown_names_rss"):
        measure(args)


def measure(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="unknown-names-"))
    server = ServerProcess(tmp, str(tmp / "registry"), "--max-wait-ms", "1").start().wait_ready()
    try:
        process, image = psutil.Process(server.process.pid), image_bytes()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

        def ask(name: str) -> None:
            conn.request("POST", f"/classify/{name}", body=image, headers={"content-type": "image/png"})
            response = conn.getresponse()
            response.read()
            assert response.status == 404, response.status

        for i in range(2000):
            ask(f"warm-{i}")
        before, start = process.memory_info().rss, time.time()
        for i in range(args.names):
            ask(f"unknown-{i}")
        after = process.memory_info().rss
        c.table(["unknown names", "RSS before MiB", "RSS after MiB", "growth MiB", "bytes per name", "seconds"],
                [[f"{args.names:,}", f"{before / 2**20:.1f}", f"{after / 2**20:.1f}",
                  f"{(after - before) / 2**20:.2f}", f"{(after - before) / args.names:.0f}",
                  f"{time.time() - start:.0f}"]],
                "### The server's resident memory around classify requests for distinct unknown task names "
                "(target: growth < 5 MB per 100,000 names)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

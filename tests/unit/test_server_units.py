"""Server parts without HTTP: settings parsing, the task table (LRU, budget, draining), backbone loading rules, image
intake limits, generated demo prompt sets, registry seeding."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from PIL import Image

from prompt_store import open_store
from promptserve.backbone import BackboneError, load_backbone, random_tiny_backbone
from promptserve.model import PromptedViT
from promptserve.promptset import PromptSet, prompt_set_nbytes
from server.demo import demo_prompt_set, seed_registry
from server.errors import ApiError
from server.images import decode_image
from server.settings import ServerSettings
from server.task_table import TaskTable


@pytest.fixture(scope="module")
def backbone():
    return random_tiny_backbone()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("PROMPTSERVE_PINNED_TASKS", "cats, dogs")
    monkeypatch.setenv("PROMPTSERVE_MAX_BATCH", "8")
    monkeypatch.setenv("PROMPTSERVE_ADMIN_TOKEN", "  ")
    monkeypatch.setenv("PROMPTSERVE_STORE", "redis://127.0.0.1:1/0")
    s = ServerSettings()
    assert s.pinned_tasks == ["cats", "dogs"] and s.max_batch == 8 and s.store.startswith("redis://")
    assert s.admin_token is None  # an empty token never means "anyone"
    assert s.host == "127.0.0.1" and s.port == 8000
    assert ServerSettings(max_batch=2).max_batch == 2  # flags (init kwargs) override the env
    monkeypatch.setenv("PROMPTSERVE_PINNED_TASKS", '["a"]')
    assert ServerSettings().pinned_tasks == ["a"]
    assert "secret" not in repr(ServerSettings(admin_token="secret"))


def test_task_table_lru_budget_pins_busy_and_draining(backbone):
    ps = demo_prompt_set(backbone, seed=0)
    bank = PromptedViT(backbone).bank
    table = TaskTable(bank, max_tasks=2, max_bytes=100 * prompt_set_nbytes(ps), pinned=["p"])

    async def scenario():
        assert await table.install("p", "v1", ps) == [] and await table.install("a", "v1", ps) == []
        assert await table.install("b", "v1", ps) == ["a"]  # p is pinned, a is the least recently used
        assert table.tasks == ["p", "b"] and "a" not in bank and bank.tasks == ["b", "p"]
        table.acquire("b")
        assert await table.install("c", "v2", ps) == []  # b has a request in flight: the budget bends
        assert len(table) == 3 and table.version("c") == "v2" == bank.version("c")
        table.drop("b")  # deleted while its request is queued: it drains
        assert "b" in table and "b" in bank and not table.serving("b")
        table.release("b")  # ... and goes with its last request
        assert "b" not in table and "b" not in bank and table.version("b") is None
        table.touch("p")
        assert table.tasks == ["c", "p"]

    asyncio.run(scenario())
    big = TaskTable(PromptedViT(backbone).bank, max_tasks=10, max_bytes=int(2.5 * prompt_set_nbytes(ps)))
    evicted = [asyncio.run(big.install(name, "v", ps)) for name in "xyz"]
    assert evicted == [[], [], ["x"]] and big.nbytes == 2 * prompt_set_nbytes(ps)


def test_random_tiny_is_deterministic_and_leaves_the_rng_alone(backbone):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert random_tiny_backbone().fingerprint == backbone.fingerprint
    assert torch.equal(torch.rand(3), expected)


def test_load_backbone_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(BackboneError, match="random-tiny"):
        load_backbone(str(tmp_path / "missing.safetensors"))
    with pytest.raises(BackboneError, match="without weights"):
        load_backbone("vit_tiny_patch16_224")


def test_load_backbone_from_a_pretrain_style_file(tmp_path, backbone):
    import json

    from safetensors.torch import save_file

    from promptserve.backbone import RANDOM_TINY_KWARGS

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(path),
              metadata={"timm_name": "vit_tiny_patch16_224", "timm_kwargs": json.dumps(RANDOM_TINY_KWARGS)})
    assert load_backbone(str(path)).fingerprint == backbone.fingerprint


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_decode_image_limits(backbone):
    cfg = backbone.data_config
    assert decode_image(_png((50, 20)), cfg, 10_000).shape == (32, 32, 3)
    with pytest.raises(ApiError) as e:
        decode_image(_png((200, 100)), cfg, 10_000)
    assert e.value.status_code == 422 and e.value.error == "decompression_bomb"
    with pytest.raises(ApiError) as e:
        decode_image(b"GIF89a" + b"\0" * 20, cfg, 10_000)
    assert e.value.status_code == 415


def test_demo_prompt_sets_validate_and_linear_equals_the_backbone(backbone):
    linear = PromptSet.load(demo_prompt_set(backbone, visual_tokens=0, kv_tokens=0).to_bytes())
    prompted = PromptSet.load(demo_prompt_set(backbone, seed=3).to_bytes())
    assert linear.method == "linear" and prompted.num_prompt_params() > 0
    model = PromptedViT(backbone)
    model.add_task("linear", linear)
    model.add_task("prompted", prompted)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(model(x, ["linear", "linear"]), backbone.model(x), atol=1e-5)
        assert not torch.allclose(model(x, ["prompted", "prompted"]), backbone.model(x), atol=1e-3)


def test_seed_registry(tmp_path, backbone):
    tasks_dir = tmp_path / "tasks"
    with open_store(tmp_path / "generated") as store:
        assert seed_registry(store, backbone, tasks_dir) == ["demo-linear", "demo-e2vpt"]
        assert seed_registry(store, backbone, tasks_dir) == []  # never touches a store that has tasks for it
    foreign = demo_prompt_set(backbone, ["a", "b"])
    foreign.backbone_fingerprint = "0" * 64
    with open_store(tmp_path / "other-backbone") as store:
        store.put("demo-linear", foreign.to_bytes())  # seeded for another backbone
        assert seed_registry(store, backbone, tasks_dir) == ["demo-linear", "demo-e2vpt"]
        assert len(store.history("demo-linear")) == 2
    tasks_dir.mkdir()
    (tasks_dir / "flowers.safetensors").write_bytes(demo_prompt_set(backbone, ["a", "b"]).to_bytes())
    (tasks_dir / "Bad Name.safetensors").write_bytes(demo_prompt_set(backbone, ["a", "b"]).to_bytes())
    other = demo_prompt_set(backbone, ["a", "b"])
    other.backbone_fingerprint = "0" * 64
    (tasks_dir / "other-backbone.safetensors").write_bytes(other.to_bytes())
    with open_store(tmp_path / "from-assets") as store:
        assert seed_registry(store, backbone, tasks_dir) == ["flowers"]
        assert store.resolve("flowers").labels == ["a", "b"]


def test_bfloat16_engine_accepts_sets_trained_on_the_fp32_weights():
    """dtype bfloat16 casts the backbone in place; its fingerprint must still be that of the weights as trained
    (it was hashed after the cast, so every task was refused as trained on another backbone)."""
    from server.engine import Engine
    from server.metrics import Metrics

    trained_on = random_tiny_backbone()
    served = random_tiny_backbone()  # a second copy: the engine casts it to bf16
    engine = Engine(served, None, ServerSettings(device="cpu", dtype="bfloat16"), Metrics())
    try:
        assert next(engine.model.vit.parameters()).dtype == torch.bfloat16
        engine.check(demo_prompt_set(trained_on, seed=3))  # raises FingerprintError without the fix
    finally:
        engine.close()

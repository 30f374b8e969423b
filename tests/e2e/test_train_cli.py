"""`promptserve train` / `eval` end to end on a synthetic ImageFolder and a tiny backbone file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from promptserve.backbone import Backbone
from promptserve.model import PromptedViT
from promptserve.preprocess import image_to_uint8, normalise
from promptserve.promptset import PromptSet
from training import cli

REPO = Path(__file__).resolve().parents[2]
TIMM_KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 3}


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Synthetic datasets are decoded into a per-test cache, not the user's ~/.cache/promptserve."""
    monkeypatch.setenv("PROMPTSERVE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("eval")(cli.evaluate)
    app.command("pretrain")(cli.pretrain)
    return app


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """A weights file as `promptserve pretrain` writes it (fp16 + timm name/kwargs metadata)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **TIMM_KWARGS)
    path = tmp_path_factory.mktemp("bb") / "tiny.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"timm_name": "vit_tiny_patch16_224", "timm_kwargs": json.dumps(TIMM_KWARGS)})
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for c, colour in zip("xyz", ([200, 30, 30], [30, 200, 30], [30, 30, 200]), strict=True):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{j}.png")  # 20px: the pipeline resizes to 16
    return root


def _train(app, args):
    result = CliRunner().invoke(app, ["train", "--no-progress", "--epochs", "2", "--batch-size", "8",
                                      "--visual-tokens", "4", "--kv-tokens", "2", "--segments", "4",
                                      "--val-max", "9", "--no-hp-search", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_train_writes_artifact_report_plots_and_eval_matches_served(app, backbone_file, folder, tmp_path):
    out = tmp_path / "Demo_Task.safetensors"
    _train(app, ["--data", str(folder), "--backbone", str(backbone_file), "--out", str(out), "--search",
                 "--push", str(tmp_path / "store")])
    for suffix in (".safetensors", ".report.json", ".curves.png", ".importance.png"):
        assert (tmp_path / f"Demo_Task{suffix}").exists(), suffix
    ps = PromptSet.load(out)
    report = json.loads((tmp_path / "Demo_Task.report.json").read_text())
    assert ps.method == "e2vpt" and ps.labels == ["x", "y", "z"] and ps.config.extra["train"]["seed"] == 0
    for key in ("test_acc", "val_acc", "tuned_params", "tuned_percent", "visual_pruned_fraction"):
        assert key in ps.metrics, key
    assert report["metrics"]["artifact_bytes"] == out.stat().st_size
    assert report["search"] and report["importance"]["token"]["0"]

    # the server's path, done by hand: decode each test file, PromptedViT.add_task, model(images, names)
    bb = Backbone.from_file(backbone_file)
    served = PromptedViT(bb)
    served.add_task("demo", ps)
    files = sorted((folder / "test").glob("*/*.png"))
    imgs = np.stack([image_to_uint8(f, 16, bb.data_config.interpolation) for f in files])
    truth = np.array(["xyz".index(f.parent.name) for f in files])
    preds = served(normalise(imgs, bb.data_config), ["demo"] * len(files)).argmax(1).numpy()
    result = CliRunner().invoke(app, ["eval", "--data", str(folder), "--task", str(out),
                                      "--backbone", str(backbone_file)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["accuracy"] == pytest.approx((preds == truth).mean())
    assert ps.metrics["test_acc"] == pytest.approx((preds == truth).mean())

    # --push to a local store put the same bytes under the task name derived from --out
    store = pytest.importorskip("prompt_store")
    assert store.open_store(str(tmp_path / "store")).get("demo_task") == out.read_bytes()


def test_full_artifact_and_eval(app, backbone_file, folder, tmp_path):
    out = tmp_path / "full.safetensors"
    _train(app, ["--data", str(folder), "--backbone", str(backbone_file), "--out", str(out), "--method", "full"])
    report = json.loads((tmp_path / "full.report.json").read_text())
    result = CliRunner().invoke(app, ["eval", "--data", str(folder), "--task", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["accuracy"] == pytest.approx(
        report["metrics"]["test_acc"])
    with pytest.raises(Exception, match="format"):
        PromptSet.load(out)  # a full model is not a prompt set: the server refuses it


def test_full_with_trainable_tunes_only_the_weights_it_names(app, backbone_file, folder, tmp_path):
    """--trainable: the first block and the head move, every other weight keeps the backbone's value (as the fp16
    artifact stores it), and the report counts only what trained."""
    from safetensors.torch import load_file

    out = tmp_path / "first.safetensors"
    result = _train(app, ["--data", str(folder), "--backbone", str(backbone_file), "--out", str(out), "--method",
                          "full", "--trainable", r"^blocks\.0\.", "--lr", "0.05", "--seeds", "2"])
    before, after = load_file(str(backbone_file)), load_file(str(out))
    same_shape = [k for k in before if k in after and before[k].shape == after[k].shape]
    moved = {k for k in same_shape if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("blocks.0.") or k.startswith("head.") for k in moved), moved
    report = json.loads((tmp_path / "first.report.json").read_text())
    block0 = sum(v.numel() for k, v in before.items() if k.startswith("blocks.0."))
    head = sum(v.numel() for k, v in after.items() if k.startswith("head."))
    assert report["metrics"]["tuned_params"] == block0 + head
    # the optimizer got exactly those (frozen weights would be in its count, and in its weight decay), every seed
    assert result.output.count(f"trainable {block0 + head:,} params") == 2, result.output
    assert report["config"]["trainable"] == r"^blocks\.0\."


@pytest.mark.parametrize("args, says", [
    (["--method", "full", "--trainable", "^nothing_like_this"], "matches none of the backbone's weight names"),
    (["--method", "full", "--trainable", "blocks.(0"], "is not a regular expression"),
    (["--method", "full", "--trainable", ""], "would find every weight"),
    (["--method", "e2vpt", "--trainable", "^blocks"], "goes with --method full"),
])
def test_a_trainable_pattern_that_cannot_work_is_one_line(app, backbone_file, folder, tmp_path, args, says):
    result = CliRunner().invoke(app, ["train", "--data", str(folder), "--backbone", str(backbone_file),
                                      "--out", str(tmp_path / "x.safetensors"), "--no-progress", *args])
    assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_push_to_http_server_with_token(app, backbone_file, folder, tmp_path):
    got = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 (http.server's naming)
            got["path"], got["auth"] = self.path, self.headers.get("Authorization")
            got["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            answer = json.dumps({"task": "lin", "version": "v1", "size": len(got["body"]), "labels": ["a"]}).encode()
            self.send_response(200)  # the shape of the real server's answer (a task record)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "lin.safetensors"
        _train(app, ["--data", str(folder), "--backbone", str(backbone_file), "--out", str(out), "--method", "linear",
                     "--push", f"http://127.0.0.1:{server.server_port}", "--token", "s3cret", "--task-name", "lin"])
    finally:
        server.shutdown()
    assert got == {"path": "/tasks/lin", "auth": "Bearer s3cret", "body": out.read_bytes()}


def test_bad_data_path_is_a_clear_error(app, backbone_file, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "missing"), "--backbone", str(backbone_file),
                                      "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_a_folder_too_small_to_split_is_one_line(app, backbone_file, tmp_path):
    root = tmp_path / "tiny"
    for c, n in (("a", 3), ("b", 1)):
        (root / "train" / c).mkdir(parents=True)
        for j in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * j, np.uint8)).save(root / "train" / c / f"{j}.png")
    result = CliRunner().invoke(app, ["train", "--data", str(root), "--backbone", str(backbone_file),
                                      "--out", str(tmp_path / "x.safetensors"), "--no-progress"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "b (1)" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.safetensors").exists()


def test_ctrl_c_stops_cleanly_and_writes_nothing(backbone_file, folder, tmp_path):
    """A real SIGINT to a training subprocess: exit code 130, one line, no artifact/report/plot/temp file;
    with stdout not a terminal the log has no progress-bar carriage returns."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "training.cli", "train", "--data", str(folder), "--backbone", str(backbone_file),
           "--out", str(out_dir / "t.safetensors"), "--method", "vpt-deep", "--epochs", "400", "--batch-size", "4",
           "--visual-tokens", "2", "--no-hp-search", "--threads", "1"]
    env = {**os.environ, "PROMPTSERVE_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    lines, deadline = [], time.monotonic() + 120
    try:
        for line in iter(proc.stdout.readline, b""):  # wait until training is under way
            lines.append(line.decode())
            if "epoch 1/400" in lines[-1] or time.monotonic() > deadline:
                break
        assert any("epoch 1/400" in x for x in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    log = "".join(lines) + rest.decode()
    assert proc.returncode == 130, log
    assert log.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in log
    assert "\r" not in log  # no tqdm redraws in a log file
    assert list(out_dir.iterdir()) == []


def test_training_without_a_test_split_says_so(app, backbone_file, folder, tmp_path):
    """Issue 24 item 10: a folder without test/ trained silently ("0 test images")."""
    import shutil

    train_only = tmp_path / "train_only"
    shutil.copytree(folder / "train", train_only / "train")
    result = _train(app, ["--data", str(train_only), "--backbone", str(backbone_file), "--out",
                          str(tmp_path / "t.safetensors"), "--epochs", "1", "--method", "linear"])
    assert "has no test/ split, so no test accuracy will be measured" in result.output


def test_progress_bars_draw_on_a_terminal_and_stay_out_of_a_log(backbone_file, folder, tmp_path):
    """Issue 24 item 7: `--progress` promised bars but printed per-epoch lines only (they needed stdout to be a
    terminal too). stderr a terminal (a pty here), stdout a file: the bars draw on the terminal, the file gets
    the lines and no bar."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "promptserve_cli", "train", "--data", str(folder), "--backbone",
                               str(backbone_file), "--out", str(tmp_path / "t.safetensors"), "--epochs", "2",
                               "--no-hp-search", "--method", "linear", "--batch-size", "4"],
                              stdout=out, stderr=side, cwd=REPO, timeout=300,
                              env={**os.environ, "PROMPTSERVE_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"})
    os.close(side)
    terminal = b""
    while select.select([main], [], [], 2)[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child's end is closed and everything was read
            break
        if not chunk:
            break
        terminal += chunk
    os.close(main)
    assert done.returncode == 0, log.read_text()
    assert b"it/s" in terminal or b"s/it" in terminal, terminal[-500:]  # tqdm's rate: a real bar
    assert "it/s" not in log.read_text() and "epoch 2/2" in log.read_text()

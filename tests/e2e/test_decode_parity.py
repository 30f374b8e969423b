"""One decode for training, eval and serving (issue 23, items 9 and 10): what the server predicts over HTTP is what
`promptserve eval` measured, image for image, on every dtd10 test JPEG (128 px, decoded at 1/2 scale for the 32 px
demo backbone) and on a 12 MP phone-sized JPEG, which is decoded at 1/8 scale instead of being refused."""

from __future__ import annotations

import io
import tarfile

import httpx
import numpy as np
import pytest
from PIL import Image

from promptserve.backbone import Backbone
from promptserve.preprocess import image_to_uint8, jpeg_draft_scale
from promptserve.promptset import PromptSet
from server.settings import DEMO_BACKBONE
from tests.integration.server_utils import REPO, ServerProcess, phone_photo
from training.loop import predict_prompt_set

DTD10_TASK = REPO / "assets" / "tasks" / "dtd10.safetensors"
DTD10 = REPO.parent / "shared" / "datasets" / "dtd10.tar"


@pytest.mark.parametrize("side", [20, 63, 64, 127, 128, 300, 513, 4032])
def test_the_probe_predicts_the_decoded_size(side):
    """The server budgets pixels from the header with jpeg_draft_scale; PIL's draft must decode exactly that."""
    buf = io.BytesIO()
    Image.new("RGB", (side, max(1, side * 3 // 4)), (90, 40, 200)).save(buf, "JPEG")
    image = Image.open(io.BytesIO(buf.getvalue()))
    scale = jpeg_draft_scale(*image.size, 32)
    expected = (-(-image.size[0] // scale), -(-image.size[1] // scale))
    image.draft("RGB", (64, 64))
    assert image.size == expected


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "dtd10.safetensors").write_bytes(DTD10_TASK.read_bytes())
    proc = ServerProcess(tmp, str(tmp / "registry"), "--seed-from", str(tasks), name="parity")
    proc.args[proc.args.index("random-tiny")] = str(DEMO_BACKBONE)
    proc.start().wait_ready()
    yield proc
    proc.stop()


def served(server, images: list[bytes]) -> list[int]:
    out = []
    for i in range(0, len(images), 32):
        files = [("files", (f"{j}.jpg", b, "image/jpeg")) for j, b in enumerate(images[i:i + 32])]
        r = httpx.post(f"{server.url}/classify/dtd10", files=files, params={"top_k": 1}, timeout=120)
        assert r.status_code == 200, r.text
        out += [answer["predictions"][0]["index"] for answer in r.json()]
    return out


def evaluated(images: list[bytes]) -> list[int]:
    """What eval computes: the trainer's decode of each file, then the served forward (predict_prompt_set)."""
    backbone = Backbone.from_file(DEMO_BACKBONE)
    pixels = np.stack([image_to_uint8(b, backbone.data_config.input_size, backbone.data_config.interpolation)
                       for b in images])
    return predict_prompt_set(backbone, PromptSet.load(DTD10_TASK), pixels).tolist()


@pytest.mark.skipif(not DTD10.is_file(), reason=f"{DTD10} is absent (the team's shared datasets folder)")
def test_http_predicts_what_eval_measured_on_every_dtd10_test_image(server):
    with tarfile.open(DTD10) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/test/" in m.name), key=lambda m: m.name)
        images = [tar.extractfile(m).read() for m in members]
    assert len(images) == 400 and all(b[:2] == b"\xff\xd8" for b in images)  # JPEGs, 128 px
    assert served(server, images) == evaluated(images)


def test_a_12_megapixel_photo_is_decoded_reduced_and_answers_as_eval(server):
    photos = [phone_photo(seed) for seed in range(3)]
    assert served(server, photos) == evaluated(photos)

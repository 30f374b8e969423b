"""The limits a server enforces, resolved once the backbone is known.

Settings may leave a size limit unset (None): its default then follows from what the backbone needs, so a
server for a 32-pixel ViT does not decode 40-Mpixel images and a server for a 197-token ViT does not accept
prompts that are 30 times its sequence. Every limit here is checked before the work it bounds is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from promptserve.backbone import Backbone
    from server.settings import ServerSettings

# An image side up to this many times the backbone's input side decodes by default (a 224-pixel model takes
# 7168-pixel sides, i.e. any phone photo; a 32-pixel model 1024), kept between these pixel counts.
IMAGE_SIDE_MARGIN = 32
MIN_DEFAULT_IMAGE_PIXELS = 2048 * 2048
MAX_DEFAULT_IMAGE_PIXELS = 6000 * 4000
REQUEST_PIXELS_IN_IMAGES = 8  # a request may decode 8 full-size images' worth (or 32 quarter-size ones)
IN_FLIGHT_REQUESTS = 2  # the whole server decodes at most two such requests' worth at once
PROMPT_TOKENS_PER_SEQUENCE = 2  # prompt tokens per layer: up to twice the backbone's own sequence
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int  # one image's width * height (422 beyond, from the header alone)
    max_request_pixels: int  # all images of one request (413 beyond)
    max_pixels_in_flight: int  # decoded by the whole server at once (requests wait their turn)
    max_prompt_tokens: int  # visual or key/value prompt tokens in one layer (422 beyond)
    max_prompt_bytes: int  # prompt tensors of one prompt set, head excluded (413 beyond)


def default_image_pixels(input_size: int) -> int:
    side = IMAGE_SIDE_MARGIN * input_size
    return min(MAX_DEFAULT_IMAGE_PIXELS, max(MIN_DEFAULT_IMAGE_PIXELS, side * side))


def sequence_length(backbone: Backbone) -> int:
    """Tokens the backbone itself attends over: patches plus its prefix (class) tokens."""
    model = backbone.model
    return int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1))


def resolve_limits(settings: ServerSettings, backbone: Backbone) -> Limits:
    image = settings.max_image_pixels or default_image_pixels(backbone.data_config.input_size)
    request = settings.max_request_pixels or REQUEST_PIXELS_IN_IMAGES * image
    in_flight = settings.max_pixels_in_flight or IN_FLIGHT_REQUESTS * request
    tokens = settings.max_prompt_tokens_per_layer or PROMPT_TOKENS_PER_SEQUENCE * sequence_length(backbone)
    # visual (M, D) plus key and value (H, P, d) = (P, D) each, at the token limit on every layer, in fp32:
    # by default the per-layer limit is the one that binds; a smaller setting caps the total as well
    implied = 3 * tokens * backbone.embed_dim * backbone.num_layers * FLOAT32_BYTES
    prompt_bytes = int(settings.max_prompt_mib * (1 << 20)) if settings.max_prompt_mib else implied
    return Limits(max_image_pixels=image, max_request_pixels=max(request, image),
                  max_pixels_in_flight=max(in_flight, request, image), max_prompt_tokens=tokens,
                  max_prompt_bytes=prompt_bytes)

"""The text stage of a GPU run: captions and the negative prompt into the prompt cache, then the
text encoder and connectors are released for good (the later stages never need them)."""

from __future__ import annotations

from collections.abc import Callable

from lib.core.cache import Cache
from lib.core.storage import FileRef
from lib.model import Components
from lib.model.encoding import encode_captions, encode_prompt
from lib.model.lifetime import TEXT_PARTS, release


def encode_texts(
    components: Components,
    clips: list[FileRef],
    cache: Cache,
    reference_downscale: int,
    negative_prompt: str | None,
    on_captions: Callable[[int], None] | None = None,
) -> FileRef | None:
    """Every caption of `clips` not encoded yet (`on_captions` hears how many clips that was), then
    `negative_prompt` when given (its cache file, else None); the text parts are released either way."""
    try:
        pending = encode_captions(components, clips, cache, reference_downscale)
        if on_captions is not None:
            on_captions(pending)
        return encode_prompt(components, negative_prompt, cache) if negative_prompt is not None else None
    finally:
        release(components, *TEXT_PARTS)

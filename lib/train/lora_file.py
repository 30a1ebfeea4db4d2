"""Reading a LoRA file before using it: is it a LoRA, does it fit the model, and how was it trained.

Everything here reads the safetensors header only (a few kB of JSON, no tensor is loaded, no model
is built), so a file that cannot work is refused in seconds, before any GPU is asked for. The
conventions come from the `av2av` metadata `save_lora` writes (lib/train/lora_io.py), or from the
training run's config.json beside the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lib.core.errors import InvalidRequest
from lib.core.generate import LoraConventions
from lib.core.storage import FileRef
from lib.train.lora_io import PREFIX

HEADER_LIMIT = 100 * 2**20  # safetensors headers are kB; a larger "length" means another format
_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)$")
# Per targeted module: which width its input (lora_A) or output (lora_B) must have.
# "video" = num_attention_heads * attention_head_dim, "audio" likewise (diffusers' LTX-2 block).
_WIDTHS = {
    "attn1.to_q": ("video", None),
    "attn1.to_k": ("video", None),
    "attn1.to_v": ("video", None),
    "attn1.to_out.0": (None, "video"),
    "audio_attn1.to_q": ("audio", None),
    "audio_attn1.to_k": ("audio", None),
    "audio_attn1.to_v": ("audio", None),
    "audio_attn1.to_out.0": (None, "audio"),
    "attn2.to_q": ("video", None),
    "attn2.to_k": (None, "video"),
    "attn2.to_v": (None, "video"),
    "attn2.to_out.0": (None, "video"),
    "audio_attn2.to_q": ("audio", None),
    "audio_attn2.to_k": (None, "audio"),
    "audio_attn2.to_v": (None, "audio"),
    "audio_attn2.to_out.0": (None, "audio"),
    "audio_to_video_attn.to_q": ("video", None),
    "audio_to_video_attn.to_k": ("audio", None),
    "audio_to_video_attn.to_v": ("audio", None),
    "audio_to_video_attn.to_out.0": (None, "video"),
    "video_to_audio_attn.to_q": ("audio", None),
    "video_to_audio_attn.to_k": ("video", None),
    "video_to_audio_attn.to_v": ("video", None),
    "video_to_audio_attn.to_out.0": (None, "audio"),
    "ff.net.0.proj": ("video", None),
    "ff.net.2": (None, "video"),
    "audio_ff.net.0.proj": ("audio", None),
    "audio_ff.net.2": (None, "audio"),
}


def read_header(path: str | Path, name: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(tensor name -> shape, metadata) from a safetensors header; InvalidRequest naming `lora_url`
    (shown as `name`) when the file is not one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else 0
        try:
            if not 2 <= length <= min(HEADER_LIMIT, size - 8):
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(length))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except ValueError as error:
            raise InvalidRequest(
                f"lora_url: {name} is not a safetensors file ({error}); give the lora.safetensors a training run wrote."
            ) from None
    metadata = header.pop("__metadata__", None) or {}
    return {key: list(info.get("shape", [])) for key, info in header.items() if isinstance(info, dict)}, metadata


def check_fits_model(shapes: dict[str, list[int]], model: str, name: str) -> int:
    """The LoRA's rank; InvalidRequest naming `lora_url` when a tensor is not a LoRA weight of a
    module `model`'s transformer has, or has another width (another base, another size)."""
    from lib.model.widths import transformer_widths

    video, audio, blocks = transformer_widths(model)
    width = {"video": video, "audio": audio}
    lora = {key: shape for key, shape in shapes.items() if key.endswith((".lora_A.weight", ".lora_B.weight"))}
    if not lora:
        raise InvalidRequest(
            f"lora_url: {name} holds no LoRA weights (tensors named {PREFIX}<module>.lora_A.weight "
            f"and .lora_B.weight); is it a LoRA file?"
        )
    ranks = set()
    for key, shape in sorted(lora.items()):
        module, kind = key.removeprefix(PREFIX).rsplit(".lora_", 1)
        found = _BLOCK.match(module)
        expected = _WIDTHS.get(found.group(2)) if found else None
        if not key.startswith(PREFIX) or expected is None or int(found.group(1)) >= blocks or len(shape) != 2:
            raise InvalidRequest(
                f"lora_url: {name} adapts '{module}', which is not a module of {_model(model)}'s "
                f"transformer ({blocks} blocks): a LoRA for another base model."
            )
        side = expected[0] if kind.startswith("A") else expected[1]
        actual = shape[1] if kind.startswith("A") else shape[0]
        if side is not None and actual != width[side]:
            raise InvalidRequest(
                f"lora_url: {name} was made for a {actual}-wide {side} stream ('{module}'), but "
                f"{_model(model)}'s {side} stream is {width[side]} wide: a LoRA of another "
                "model size."
            )
        ranks.add(shape[0] if kind.startswith("A") else shape[1])
    if len(ranks) != 1:
        raise InvalidRequest(f"lora_url: {name} mixes ranks {sorted(ranks)}; not a LoRA this trainer wrote.")
    return ranks.pop()


def _model(model: str) -> str:
    from lib.core.plan import base_model_name

    return base_model_name(model)


def conventions_from(metadata: dict[str, str], config: dict | None) -> tuple[dict, str] | None:
    """The training conventions from the file's `av2av` metadata, else from the run's config.json."""
    if "av2av" in metadata:
        try:
            return json.loads(metadata["av2av"]), "metadata"
        except ValueError:
            pass
    if config and "reference_audio_positions" in config:
        return {
            "rank": config.get("rank"),
            "alpha": config.get("alpha"),
            "base_model": config.get("base_model"),
            "trigger_phrase": config.get("trigger_phrase", ""),
            "reference_audio_positions": config["reference_audio_positions"],
            "reference_downscale": config.get("reference_downscale_factor", 1),
            "base_precision": (config.get("request") or {}).get("base_precision", "bf16"),
        }, "config.json"
    return None


def inspect_lora(path: str | Path, name: str, model: str, sha256: str, config=None) -> LoraConventions:
    """How the LoRA at `path` (the user's `name` for it) was trained, after checking it fits `model`.
    `config()`: the training run's config.json beside the file (or None), read only when the file
    carries no av2av metadata."""
    shapes, metadata = read_header(path, name)
    found = conventions_from(metadata, config() if config and "av2av" not in metadata else None)
    if found is not None and found[0].get("base_model") not in (None, _model(model)):
        raise InvalidRequest(
            f"model: {model!r} runs {_model(model)}, but lora_url {name} was trained on "
            f"{found[0]['base_model']}; set model to the LoRA's base."
        )
    rank = check_fits_model(shapes, model, name)
    if found is None:
        raise InvalidRequest(
            f"lora_url: {name} records no training conventions (no 'av2av' metadata, no config.json "
            "beside it); reference_audio_positions and reference_downscale cannot be known. Use the "
            "lora.safetensors an av2av training run wrote."
        )
    info, source = found
    if info.get("rank") not in (None, rank):
        raise InvalidRequest(f"lora_url: {name} says rank {info['rank']} but its weights have rank {rank}.")
    try:
        return LoraConventions(
            sha256=sha256,
            size=Path(path).stat().st_size,
            rank=rank,
            alpha=int(info.get("alpha") or rank),
            base_model=str(info.get("base_model") or ""),
            trigger_phrase=str(info.get("trigger_phrase") or ""),
            reference_audio_positions=info.get("reference_audio_positions"),
            reference_downscale=int(info.get("reference_downscale") or 1),
            trained_base_precision=str(info.get("base_precision") or "bf16"),
            read_from=source,
        )
    except (ValueError, TypeError) as error:
        raise InvalidRequest(
            f"lora_url: {name} records unusable conventions in its {source}: {str(error).splitlines()[0]}"
        ) from None


def sibling_config(url: str, downloads: Path, fetch) -> dict | None:
    """The config.json a training run uploaded beside its lora.safetensors, if it can be read."""
    base = url.split("?", 1)[0].split("#", 1)[0]
    if "/" not in base.replace("://", ""):
        return None
    try:
        ref = fetch(base.rsplit("/", 1)[0] + "/config.json", downloads)
        return json.loads(Path(ref.path).read_text())
    except Exception:  # no config.json there: the caller says what is missing
        return None


def open_lora(url: str, downloads: Path, model: str, fetch, shown: str) -> tuple[FileRef, LoraConventions]:
    """Fetch the LoRA at `url` and read how it was trained. A failed download names lora_url (and keeps
    its transient kind, so callers retry it); a file that cannot work is InvalidRequest."""
    from lib.core.errors import DownloadError

    try:
        ref = fetch(url, downloads)
    except DownloadError as error:
        raise type(error)(f"lora_url: {error.message}", error.code) from None
    return ref, inspect_lora(ref.path, shown, model, ref.sha256, lambda: sibling_config(url, downloads, fetch))

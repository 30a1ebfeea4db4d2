"""Where the LTX-2.3 weights come from, and loading them: a diffusers folder or hub id, or
Lightricks' single-file checkpoint plus a Gemma 3 folder. `check_model_source` answers cheaply,
before any dataset work, whether a run's weights can be found at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lib.core import precision
from lib.core.errors import ModelUnavailable
from lib.model import part_loaders, single_file
from lib.model.components import Components
from lib.model.configs import LTX23_FLAGS
from lib.model.lifetime import acquire
from lib.model.parts import CHECKPOINT_PARTS, MODULE_NAMES
from lib.model.quantize import check_base_precision
from lib.model.single_file import CONFIGS_METADATA_KEY, split_checkpoint, to_lightricks_key

PRESETS = ("tiny", "ltx-2.3")
DEFAULT_LTX23_SOURCE = "diffusers/LTX-2.3-Diffusers"
DEFAULT_TEXT_ENCODER_SOURCE = "google/gemma-3-12b-it-qat-q4_0-unquantized"  # Lightricks' MODELS-LTX-2.3.md
SOURCE_ENV = "AV2AV_MODEL_SOURCE"
TEXT_ENCODER_ENV = "AV2AV_TEXT_ENCODER_SOURCE"
HUB_TIMEOUT_S = 10
HOW_TO_POINT = (
    "Set the request's model_source (or $AV2AV_MODEL_SOURCE on the GPU worker) to a diffusers "
    "folder, a hub id, or Lightricks' single-file .safetensors (with text_encoder_source or "
    "$AV2AV_TEXT_ENCODER_SOURCE naming a Gemma 3 folder)."
)


def resolve_sources(source: str | None, text_encoder_source: str | None) -> tuple[str, str]:
    return (
        str(source or os.environ.get(SOURCE_ENV) or DEFAULT_LTX23_SOURCE),
        str(text_encoder_source or os.environ.get(TEXT_ENCODER_ENV) or DEFAULT_TEXT_ENCODER_SOURCE),
    )


def is_single_file(source: str) -> bool:
    return source.endswith(".safetensors")


def check_model_source(model: str, source: str | None = None, text_encoder_source: str | None = None) -> str:
    """Refuse at once (ModelUnavailable) weights that cannot be found; returns the source checked.

    Reads configs and headers only: a local folder's 2.3 flags, a single file's key list, or the
    hub's answer (with a time-out), so a wrong source costs seconds, not a dataset's preparation.
    """
    if model == "tiny":
        return "tiny"
    if model not in PRESETS:
        raise ModelUnavailable(f"model: unknown model {model!r}; choose one of {PRESETS}.")
    source, text_encoder = resolve_sources(source, text_encoder_source)
    if is_single_file(source):
        _check_single_file(source)
        _check_folder_or_hub(text_encoder, "config.json", "text encoder (Gemma 3)")
    elif Path(source).is_dir():
        _check_is_23(_load_transformer_config(source), source)
    else:
        _check_folder_or_hub(source, "model_index.json", "LTX-2.3 weights")
    return source


def _load_transformer_config(source: str) -> dict:
    from diffusers import LTX2VideoTransformer3DModel

    try:
        return LTX2VideoTransformer3DModel.load_config(source, subfolder="transformer")
    except (OSError, ValueError) as error:
        raise ModelUnavailable(
            f"model_source: {source} is not a diffusers LTX-2.3 folder "
            f"({type(error).__name__}: {error}). {HOW_TO_POINT}"
        ) from error


def _check_is_23(config, source: str) -> None:
    # A 2.0 checkpoint loads into the same classes but trains and samples differently.
    wrong = {k: config.get(k) for k, v in LTX23_FLAGS.items() if config.get(k) != v}
    if wrong:
        raise ModelUnavailable(
            f"model_source: {source} is not an LTX-2.3 transformer; these flags differ: {wrong}. {HOW_TO_POINT}"
        )


def _check_single_file(path: str) -> None:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ModelUnavailable(f"model_source: no file at {path}. {HOW_TO_POINT}")
    try:
        with safe_open(path, framework="pt") as handle:
            parts = split_checkpoint(handle.keys())
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ModelUnavailable(
            f"model_source: {path} is not a readable .safetensors checkpoint "
            f"({type(error).__name__}: {error}). {HOW_TO_POINT}"
        ) from error
    _check_version(path, metadata)  # first: a 2.5 transformer file also lacks the VAEs, but that is not the news
    missing = [name for name in CHECKPOINT_PARTS if not parts[name]]
    if missing:
        raise ModelUnavailable(
            f"model_source: {path} holds no weights for {', '.join(missing)}; expected "
            f"Lightricks' LTX-2.3 single-file layout. {HOW_TO_POINT}"
        )
    _check_architecture(path, metadata)


def _check_version(path: str, metadata: dict) -> None:
    found = single_file.checkpoint_version(metadata)
    if found and found[0] != "2.3":
        version, evidence = found
        what = "an LTX checkpoint of unknown version" if version == "unknown" else f"an LTX-{version} checkpoint"
        raise ModelUnavailable(
            f"model_source: {path} is {what} ({evidence}); this trainer needs LTX-2.3 weights. {HOW_TO_POINT}"
        )


def _check_architecture(path: str, metadata: dict) -> None:
    """The file's own `config` must describe the configs we will build (the shipped 2.3 ones, or
    those a file written here names), so a resized or renamed variant fails here, by name."""
    configs = single_file.declared_configs_json(metadata)
    _check_is_23(configs["transformer"], path)
    differences = single_file.config_differences(single_file.lightricks_section(metadata), configs)
    if differences:
        shown = ", ".join(f"{key}={got!r} (LTX-2.3: {want!r})" for key, (got, want) in list(differences.items())[:4])
        raise ModelUnavailable(
            f"model_source: {path} declares a different architecture in its config metadata: {shown}. {HOW_TO_POINT}"
        )


def _check_folder_or_hub(source: str, marker: str, what: str) -> None:
    if Path(source).is_dir():
        if not (Path(source) / marker).is_file():
            raise ModelUnavailable(f"{what}: {source} has no {marker}. {HOW_TO_POINT}")
        return
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, marker), str):
        return  # already downloaded: the run needs no network
    try:
        HfApi().model_info(source, timeout=HUB_TIMEOUT_S)
    except Exception as error:  # DNS, time-out, 401/404: all mean "not reachable from here"
        raise ModelUnavailable(
            f"{what}: {source} is neither a local folder nor in the Hugging Face cache, and "
            f"the hub did not answer ({type(error).__name__}: {str(error)[:200]}). "
            f"{HOW_TO_POINT}"
        ) from error


def load_model(
    model: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    source: str | Path | None = None,
    text_encoder_source: str | None = None,
    base_precision: str = "bf16",
) -> Components:
    """Preset name -> every part loaded on `device` (cuda if there is one) in `dtype`."""
    components = open_model(model, device, dtype, source, text_encoder_source, base_precision)
    return acquire(components, *MODULE_NAMES)


def open_model(
    model: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    source: str | Path | None = None,
    text_encoder_source: str | None = None,
    base_precision: str = "bf16",
) -> Components:
    """The model with no part loaded yet (tokenizer and scheduler aside): its spec and cache
    identity are known, and `lifetime.acquire` loads each part when a stage needs it."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {PRESETS}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or precision.compute_dtype(device)
    check_base_precision(base_precision, device)
    if model == "tiny":
        return part_loaders.open_tiny(device, dtype, base_precision)
    source, text_encoder = resolve_sources(source, text_encoder_source)
    if is_single_file(source):
        _check_single_file(source)
        return part_loaders.open_single_file(source, text_encoder, device, dtype, base_precision)
    source = str(Path(source).resolve()) if Path(source).is_dir() else str(source)
    # Read the small config first: a 2.0 checkpoint should fail before tens of GB are loaded.
    _check_is_23(_load_transformer_config(source), source)
    return part_loaders.open_pretrained(source, device, dtype, base_precision)


def save_single_file(components: Components, path: str | Path) -> Path:
    """Write the transformer, connectors, VAEs and vocoder in Lightricks' single-file layout, with
    Lightricks' `config` (and `model_version` for a 2.3) so ltx-core builds the transformer,
    connectors and text projection from it, and our diffusers configs so any size round-trips."""
    from safetensors.torch import save_file

    tensors, configs = {}, {}
    for name in CHECKPOINT_PARTS:
        module = getattr(components, name)
        configs[name] = dict(module.config)
        for key, tensor in module.state_dict().items():
            tensors[to_lightricks_key(name, key)] = tensor.detach().cpu().contiguous()
    metadata = {
        "format": "pt",
        CONFIGS_METADATA_KEY: json.dumps(configs, default=list),
        single_file.LIGHTRICKS_CONFIG_KEY: json.dumps(single_file.lightricks_config(configs)),
    }
    if all(configs["transformer"].get(key) == value for key, value in LTX23_FLAGS.items()):
        metadata[single_file.VERSION_KEY] = single_file.LTX23_MODEL_VERSION
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)

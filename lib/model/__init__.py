"""LTX-2.3: the only package that builds or loads its parts (tests/test_layering.py checks).

Two presets share every class and code path: `ltx-2.3` loads a diffusers folder or hub id, or
Lightricks' single-file checkpoint; `tiny` builds the same classes with random weights small
enough for CPU tests. Everything else in lib/ takes a `Components` and reads the numbers it needs
from `model_spec`.
"""

import logging

# Set before diffusers or torchao are imported. On a CPU machine torchao cannot load its CUDA
# extensions and says so on import, torch warns about torchao's pytree registrations, diffusers
# about torchao checkpoints we never deserialize, and every `.to(dtype)` of a diffusers model warns
# about an (empty) list of fp32 modules, and bitsandbytes that an optional CPU kernel package is
# missing: noise in every run's log.
for _name in (
    "torchao",
    "torch.utils._pytree",
    "diffusers.quantizers.torchao.torchao_quantizer",
    "diffusers.models.modeling_utils",
    "bitsandbytes.backends.cpu.ops",
):
    logging.getLogger(_name).setLevel(logging.ERROR)

from lib.model.components import Components, config_hash, model_spec, save_pretrained, to_pipeline
from lib.model.configs import LTX23_CONFIG_DIR, LTX23_FLAGS
from lib.model.lifetime import acquire, keep_only, release, resident
from lib.model.loading import (
    DEFAULT_LTX23_SOURCE,
    PRESETS,
    SOURCE_ENV,
    TEXT_ENCODER_ENV,
    check_model_source,
    load_model,
    open_model,
    save_single_file,
)
from lib.model.parts import MODULE_NAMES
from lib.model.tiny import build_tiny

__all__ = [
    "MODULE_NAMES",
    "Components",
    "build_tiny",
    "config_hash",
    "model_spec",
    "save_pretrained",
    "to_pipeline",
    "LTX23_CONFIG_DIR",
    "LTX23_FLAGS",
    "DEFAULT_LTX23_SOURCE",
    "PRESETS",
    "SOURCE_ENV",
    "TEXT_ENCODER_ENV",
    "check_model_source",
    "load_model",
    "open_model",
    "save_single_file",
    "acquire",
    "keep_only",
    "release",
    "resident",
]

"""The request: one frozen pydantic model, the single source of parameter names, defaults,
ranges and help text for the CLI, the Prefect flow signature, the UI form and prefect.yaml.

Names and semantics are those of the hosted av2av-masked product's parameters; fields whose
schema carries `"extension": true` are ours (README's table says so; the form does not).
"""

from __future__ import annotations

import importlib.util
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Resolution = Literal["low", "medium", "high"]
AspectRatio = Literal["16:9", "1:1", "9:16"]

VAE_STRIDE = 32  # the video VAE's spatial stride in pixels

# (width, height) per resolution and aspect ratio; all divisible by VAE_STRIDE.
BUCKETS: dict[Resolution, dict[AspectRatio, tuple[int, int]]] = {
    "low": {"16:9": (512, 288), "1:1": (512, 512), "9:16": (288, 512)},
    "medium": {"16:9": (768, 448), "1:1": (768, 768), "9:16": (448, 768)},
    "high": {"16:9": (960, 544), "1:1": (960, 960), "9:16": (544, 960)},
}

DEFAULT_NEGATIVE_PROMPT = (
    "worst quality, inconsistent motion, blurry, jittery, distorted, watermark, text, "
    "muffled audio, clipping, noise, silence"
)

FROZEN = ConfigDict(frozen=True, extra="forbid")

# The locations a URL field may name, and the package each needs (the extra that installs it).
# Checked when the request is built, so a typo or an unsupported scheme (ftp, gopher) is refused
# in milliseconds by name instead of after Prefect started and four download attempts.
READABLE_SCHEMES = ("file", "http", "https", "s3", "s3a", "gs", "gcs", "memory", "secret")
WRITABLE_SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "memory")
SCHEME_PACKAGES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def check_location(url: str, schemes: tuple[str, ...] = READABLE_SCHEMES) -> str:
    """`url` if it is a local path or uses one of `schemes` with its package installed; else
    ValueError saying which scheme and what to use (the caller names the field)."""
    if "://" not in url:
        return url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in schemes:
        verb = "reads" if schemes == READABLE_SCHEMES else "writes to"
        usable = ", ".join(f"{name}://" for name in schemes if name not in ("s3a", "gcs", "memory"))
        raise ValueError(f"{scheme}:// is not a location this trainer {verb}; use a local path or {usable}")
    package, extra = SCHEME_PACKAGES.get(scheme, (None, None))
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"{scheme}:// needs the {package} package on this machine: pip install 'av2av-trainer[{extra}]'"
        )
    return url


def snap_frames(frames: int) -> int:
    """Snap down to the nearest 8k+1: the video VAE keeps frame 0 alone, then groups of 8."""
    return (frames - 1) // 8 * 8 + 1


def bucket_size(resolution: Resolution, aspect_ratio: AspectRatio) -> tuple[int, int]:
    return BUCKETS[resolution][aspect_ratio]


def downscale_is_exact(bucket: tuple[int, int], downscale: int) -> bool:
    """Whether 1/downscale of the bucket is still a whole number of VAE latents on both sides.
    Only then is the reference grid the target's scaled by exactly `downscale`, the factor
    Lightricks' inference multiplies positions by (ltx-core reference_video_cond.py); ltx-trainer's
    compute_scaled_resolution_buckets refuses the other buckets (512x288 / 2 = 256x144 is one)."""
    return all(side % (downscale * VAE_STRIDE) == 0 for side in bucket)


OURS = {"extension": True}  # json_schema_extra of a field the product spec does not have


def _show(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def number_field(
    default, description: str, ge=None, le=None, gt=None, unit: str = "", extension: bool = False, **kwargs
):
    """A numeric field whose help text states its range, so the run form shows it before submitting."""
    low = _show(ge) if ge is not None else f"more than {_show(gt)}"
    bounds = f"{low}–{_show(le)}" if ge is not None else f"{low}, at most {_show(le)}"
    text = f"{description} Range: {bounds}{' ' + unit if unit else ''}."
    return Field(
        default, description=text, ge=ge, le=le, gt=gt, json_schema_extra=OURS if extension else None, **kwargs
    )


class ValidationSample(BaseModel):
    model_config = FROZEN

    prompt: str = Field("", title="Prompt", description="The text prompt, in the captions' style.")
    video_url: str = Field(
        title="Source video URL",
        description="The source video; its unmasked region is kept pixel-faithful and the "
        "masked region is regenerated.",
    )
    mask_url: str = Field(title="Mask URL", description="The mask (image or video). WHITE = regenerate, BLACK = keep.")
    reference_video_url: str = Field(
        title="Reference video URL",
        description="The reference video (its audio track is also used as the audio reference) "
        "guiding the regenerated audio+video.",
    )
    reference_audio_url: str = Field(
        "",
        title="Reference audio URL",
        description="A separate reference audio; if empty, the reference video's own track is "
        "used and must contain audio.",
    )

    @field_validator("video_url", "mask_url", "reference_video_url")
    @classmethod
    def _required_location(cls, url: str) -> str:
        if not url.strip():
            raise ValueError("is empty; a validation sample needs its video, mask and reference video")
        return check_location(url)

    @field_validator("reference_audio_url")
    @classmethod
    def _optional_location(cls, url: str) -> str:
        return check_location(url) if url else url


class TrainRequest(BaseModel):
    """Parameters of one masked audio+video LoRA training run (the spec's names and defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="av2av-masked training request")

    # Dataset
    training_data_url: str = Field(
        title="Training data URL",
        description="URL of the .zip archive of triplets with audio: name_start.mp4 (reference), "
        "name_end.mp4 (target), name_mask.png or .mp4, optional name.txt caption.",
        min_length=1,
    )
    trigger_phrase: str = Field(
        "",
        title="Trigger phrase",
        description="Phrase prepended to captions during training; include it at inference.",
    )
    # Where the weights come from and where the outputs go (ours)
    model: Literal["ltx-2.3", "tiny"] = Field(
        "ltx-2.3",
        title="Base model",
        description="The real LTX-2.3, or a tiny random model for tests and demos.",
        json_schema_extra=OURS,
    )
    model_source: str = Field(
        "",
        title="Model weights",
        description="Where the LTX-2.3 weights are: a diffusers folder or hub id "
        "(diffusers/LTX-2.3-Diffusers), or Lightricks' single-file .safetensors checkpoint. "
        "Empty: $AV2AV_MODEL_SOURCE on the GPU worker, else the hub id.",
        json_schema_extra=OURS,
    )
    output_url: str = Field(
        "",
        title="Output location",
        description="Where the outputs go: a local folder, file://, memory://, s3:// or gs:// URL. "
        "Empty: a local outputs/RUN-NAME folder on the CPU worker.",
        json_schema_extra=OURS,
    )
    # Training
    rank: Literal[8, 16, 32, 64, 128] = Field(
        32, title="Rank", description="LoRA capacity (alpha = rank). One of 8, 16, 32, 64, 128."
    )
    number_of_steps: int = number_field(
        2000, "Number of optimization steps.", ge=100, le=20000, unit="steps", title="Number of steps"
    )
    learning_rate: float = number_field(2e-4, "Optimization step size.", gt=0, le=1e-2, title="Learning rate")
    # Video
    number_of_frames: int = number_field(
        89,
        "Frames per training clip. Must be 8k+1 (9, 17, ..., 121); other values are snapped down.",
        ge=9,
        le=121,
        unit="frames",
        title="Number of frames",
    )
    frame_rate: int = number_field(24, "Target frame rate.", ge=8, le=60, unit="fps", title="Frame rate")
    resolution: Resolution = Field(
        "medium",
        title="Resolution",
        description="Resolution bucket, in px per aspect ratio (1:1 / 16:9 / 9:16): low 512x512 / 512x288 / "
        "288x512, medium 768x768 / 768x448 / 448x768, high 960x960 / 960x544 / 544x960.",
    )
    aspect_ratio: AspectRatio = Field("1:1", title="Aspect ratio", description="Aspect ratio of the bucket.")
    auto_scale_input: bool = Field(
        False,
        title="Auto-scale input",
        description="Fit videos to the target frame count and frame rate (stretch clips that are "
        "too short instead of skipping them).",
    )
    # The spec's scene splitting cannot apply to triplets; both fields stay so the spec's requests
    # validate, typed so the form shows the one value they can take.
    split_input_into_scenes: Literal[False] = Field(
        False,
        title="Split input into scenes (not available here)",
        description="Always off for masked av2av: splitting would desync the reference/target/mask "
        "triplet. Provide clips already cut to one scene.",
    )
    split_input_duration_threshold: float = number_field(
        30.0,
        "Unused: scene splitting is off for masked av2av (kept so the spec's requests validate).",
        ge=1.0,
        le=60.0,
        unit="s",
        title="Split duration threshold (unused)",
    )
    # Audio
    audio_normalize: bool = Field(
        True,
        title="Normalize audio",
        description="Peak-normalize audio for consistent loudness across the dataset.",
    )
    audio_preserve_pitch: bool = Field(
        True,
        title="Preserve pitch",
        description="Preserve pitch when fitting audio to video duration.",
    )
    # Validation
    validation: tuple[ValidationSample, ...] = Field(
        (),
        max_length=2,
        title="Validation samples",
        description="Up to 2 validation samples, each with prompt, video_url, mask_url, "
        "reference_video_url and an optional reference_audio_url.",
    )
    validation_negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT,
        title="Validation negative prompt",
        description="Negative prompt for validation sampling (a built-in quality prompt by default).",
    )
    validation_number_of_frames: int = number_field(
        89,
        "Frames per validation sample; snapped down to 8k+1.",
        ge=9,
        le=121,
        unit="frames",
        title="Validation number of frames",
    )
    validation_frame_rate: int = number_field(
        24, "Validation frame rate.", ge=8, le=60, unit="fps", title="Validation frame rate"
    )
    validation_resolution: Resolution = Field(
        "high", title="Validation resolution", description="Resolution bucket of validation samples."
    )
    validation_aspect_ratio: AspectRatio = Field(
        "1:1", title="Validation aspect ratio", description="Aspect ratio of validation samples."
    )
    stg_scale: float = number_field(
        1.0, "Spatio-temporal guidance scale for validation (0 disables it).", ge=0.0, le=3.0, title="STG scale"
    )
    debug_dataset: bool = Field(
        False,
        title="Debug dataset",
        description="Return an archive of the preprocessed data for inspection.",
    )
    # Our additions to the product spec: each description says so.
    validation_steps: int = number_field(
        30,
        "Denoising steps per validation sample (the LTX-2 pipeline uses 30-40).",
        ge=2,
        le=100,
        unit="steps",
        extension=True,
        title="Validation sampling steps",
    )
    text_encoder_source: str = Field(
        "",
        title="Text encoder weights",
        description="Gemma 3 folder or hub id, needed with a single-file model_source (the "
        "checkpoint holds no text encoder). Empty: $AV2AV_TEXT_ENCODER_SOURCE, else "
        "google/gemma-3-12b-it-qat-q4_0-unquantized (the Gemma Lightricks names for LTX-2.3).",
        json_schema_extra=OURS,
    )
    reference_audio_positions: Literal["aligned", "before"] = Field(
        "aligned",
        title="Reference audio positions",
        description="Where the reference audio sits in time: aligned = the target's own positions "
        "(Lightricks' IC-LoRA convention); before = negative time, ending 0.04 s before the target "
        "(Lightricks' Dub-It convention). Inference must use the same; it is recorded in the outputs.",
        json_schema_extra=OURS,
    )
    reference_downscale: Literal[1, 2] = Field(
        2,
        title="Reference video downscale",
        description="2: encode the reference video at half resolution (4x fewer reference tokens, as "
        "Lightricks' LTX-2.3 IC-LoRAs); 1: full resolution. Only exact halves: in buckets whose half is not "
        "a multiple of 32 px (low and high 16:9 and 9:16) the reference stays at full resolution, and the "
        "factor used is what the outputs record.",
        json_schema_extra=OURS,
    )
    lora_dtype: Literal["bf16", "fp32"] = Field(
        "bf16",
        title="LoRA file precision",
        description="Precision of the saved LoRA weights (training always keeps them in fp32).",
        json_schema_extra=OURS,
    )
    base_precision: Literal["bf16", "int8", "fp8", "nf4"] = Field(
        "bf16",
        title="Base model precision",
        description="Precision of the frozen base weights while training (the LoRA always trains in "
        "fp32): bf16 exact; int8 (torchao weight-only) about half the transformer's memory; fp8 (torchao, "
        "needs an Ada/Hopper GPU such as L4, L40S, H100); nf4 (bitsandbytes 4-bit) about a quarter. "
        "The text encoder is quantized alike, never below 8 bits (int8 for fp8 and nf4). `av2av plan` "
        "shows what fits.",
        json_schema_extra=OURS,
    )
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw",
        title="Optimizer",
        description="adamw: fp32 AdamW state; adamw8bit: bitsandbytes' 8-bit AdamW state (a quarter of "
        "the optimizer memory).",
        json_schema_extra=OURS,
    )
    offload_activations: Literal["auto", "on", "off"] = Field(
        "auto",
        title="Offload activations",
        description="on: keep the block inputs that gradient checkpointing saves in host memory instead of "
        "on the GPU (about 3.3 GB less at the defaults, bit-identical results, some PCIe traffic); auto: only "
        "when the memory plan needs it to fit the GPU pool's declared memory; off: never.",
        json_schema_extra=OURS,
    )
    upload_checkpoints: bool = Field(
        False,
        title="Upload checkpoints",
        description="Also upload the resumable checkpoints; otherwise they stay in the GPU worker's "
        "checkpoint folder (checkpoints/ in its local cache folder).",
        json_schema_extra=OURS,
    )
    seed: int = number_field(
        0, "Random seed: the same seed and data give the same LoRA.", ge=0, le=2**31 - 1, extension=True, title="Seed"
    )
    resume_from: str = Field(
        "",
        title="Resume from",
        description="Path of a checkpoint file on the GPU worker to continue training from; empty = start fresh.",
        json_schema_extra=OURS,
    )
    checkpoint_every: int = number_field(
        0,
        "Save a resumable checkpoint (LoRA, optimizer, schedule, RNG) every N steps; 0 = never.",
        ge=0,
        le=20000,
        unit="steps",
        extension=True,
        title="Checkpoint every",
    )
    validation_every: int = number_field(
        0,
        "Also render the validation samples every N steps (always at the end); 0 = only at the end.",
        ge=0,
        le=20000,
        unit="steps",
        extension=True,
        title="Validation every",
    )

    @field_validator("number_of_frames", "validation_number_of_frames")
    @classmethod
    def _snap_frames(cls, frames: int) -> int:
        return snap_frames(frames)

    @field_validator("training_data_url")
    @classmethod
    def _source(cls, url: str) -> str:
        return check_location(url)

    @field_validator("output_url")
    @classmethod
    def _destination(cls, url: str) -> str:
        return check_location(url, WRITABLE_SCHEMES) if url else url

    @field_validator("trigger_phrase")
    @classmethod
    def _strip_trigger(cls, phrase: str) -> str:
        return phrase.strip()

    @field_validator("split_input_into_scenes", mode="before")
    @classmethod
    def _refuse_scene_split(cls, split: object) -> object:
        """Whatever pydantic reads as a bool (false, "false", 0, "off" ...) is still taken; a true
        one is refused with the reason, not a bare "should be False"."""
        if TypeAdapter(bool).validate_python(split):
            raise ValueError(
                "split_input_into_scenes=true is not supported for av2av-masked: splitting "
                "would desync the reference/target/mask triplets. Provide pre-split clips and "
                "set split_input_into_scenes=false."
            )
        return False

    @model_validator(mode="after")
    def _refuse_inexact_validation_reference(self) -> "TrainRequest":
        factor = self.reference_downscale_factor
        if self.validation and not downscale_is_exact(self.validation_bucket, factor):
            width, height = self.validation_bucket
            raise ValueError(
                f"validation_resolution={self.validation_resolution!r} with validation_aspect_ratio="
                f"{self.validation_aspect_ratio!r} ({width}x{height}) cannot hold a reference at 1/{factor}, the "
                f"reference_downscale the LoRA trains with ({width // factor}x{height // factor} is not a multiple "
                f"of {VAE_STRIDE} px). Choose a validation bucket whose sides divide by {factor * VAE_STRIDE}, or "
                "set reference_downscale=1."
            )
        return self

    @property
    def reference_downscale_factor(self) -> int:
        """The reference downscale training really uses: `reference_downscale` where the bucket
        divides exactly, else 1 (see downscale_is_exact)."""
        return self.reference_downscale if downscale_is_exact(self.bucket, self.reference_downscale) else 1

    def reference_downscale_note(self) -> str | None:
        """A warning when the bucket made the reference fall back to full resolution."""
        if self.reference_downscale_factor == self.reference_downscale:
            return None
        width, height = self.bucket
        return (
            f"reference_downscale={self.reference_downscale} does not divide the {width}x{height} bucket into "
            f"whole {VAE_STRIDE}-px latents ({width / self.reference_downscale:g}x"
            f"{height / self.reference_downscale:g}); the reference video is encoded at full resolution "
            "(factor 1, recorded in config.json and the LoRA's metadata)."
        )

    @property
    def bucket(self) -> tuple[int, int]:
        """(width, height) of the training resolution bucket."""
        return bucket_size(self.resolution, self.aspect_ratio)

    @property
    def validation_bucket(self) -> tuple[int, int]:
        return bucket_size(self.validation_resolution, self.validation_aspect_ratio)


def parameter_table() -> str:
    """README's parameter table, generated from the model so the two never disagree
    (tests/test_config.py checks README holds exactly this)."""

    def default(info) -> str:
        if info.is_required():
            return "required"
        return f"`{json.dumps(info.default)}`" if info.default not in ((), "") else "empty"

    rows = ["| parameter | default | in the spec | description |", "|---|---|---|---|"]
    for name, info in TrainRequest.model_fields.items():
        description = info.description.replace("|", "/")
        default_text = "built-in" if name == "validation_negative_prompt" else default(info)
        origin = "ours" if (info.json_schema_extra or {}).get("extension") else "yes"
        rows.append(f"| `{name}` | {default_text} | {origin} | {description} |")
    return "\n".join(rows)

"""The request: one frozen pydantic model, the single source of parameter names, defaults,
ranges and help text for the CLI, the Prefect flow signature, the UI form and prefect.yaml.

Names and semantics are the product spec's (shared/spec/av2av-masked.md); fields marked
"extension" are ours.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Resolution = Literal["low", "medium", "high"]
AspectRatio = Literal["16:9", "1:1", "9:16"]

# (width, height) per resolution and aspect ratio; all divisible by 32 (the VAE's spatial stride).
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


def snap_frames(frames: int) -> int:
    """Snap down to the nearest 8k+1: the video VAE keeps frame 0 alone, then groups of 8."""
    return (frames - 1) // 8 * 8 + 1


def bucket_size(resolution: Resolution, aspect_ratio: AspectRatio) -> tuple[int, int]:
    return BUCKETS[resolution][aspect_ratio]


class ValidationSample(BaseModel):
    model_config = FROZEN

    prompt: str = Field("", description="The text prompt.")
    video_url: str = Field(
        description="The source video; its unmasked region is kept pixel-faithful and the "
        "masked region is regenerated."
    )
    mask_url: str = Field(
        description="The mask (image or video). WHITE = regenerate, BLACK = keep."
    )
    reference_video_url: str = Field(
        description="The reference video (its audio track is also used as the audio reference) "
        "guiding the regenerated audio+video."
    )
    reference_audio_url: str | None = Field(
        None,
        description="A separate reference audio; if omitted, the reference video's own track is "
        "used and must contain audio.",
    )


class TrainRequest(BaseModel):
    """Parameters of one masked audio+video LoRA training run (the spec's names and defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="av2av-masked training request")

    # Dataset
    training_data_url: str = Field(
        title="Training data URL",
        description="URL to the .zip archive of reference/target/mask triplets (with audio): "
        "<name>_start.<ext>, <name>_end.<ext>, <name>_mask.<ext>, optional <name>.txt.",
        min_length=1,
    )
    trigger_phrase: str = Field(
        "", title="Trigger phrase",
        description="Phrase prepended to captions during training; include it at inference.",
    )
    # Training
    rank: Literal[8, 16, 32, 64, 128] = Field(
        32, title="Rank", description="LoRA capacity (alpha = rank)."
    )
    number_of_steps: int = Field(
        2000, ge=100, le=20000, title="Number of steps",
        description="Number of optimization steps.",
    )
    learning_rate: float = Field(
        2e-4, gt=0, le=1e-2, title="Learning rate", description="Optimization step size."
    )
    # Video
    number_of_frames: int = Field(
        89, ge=9, le=121, title="Number of frames",
        description="Frames per training clip. Must satisfy frames % 8 == 1; other values are "
        "snapped down to the nearest valid count.",
    )
    frame_rate: int = Field(24, ge=8, le=60, title="Frame rate", description="Target frames per second.")
    resolution: Resolution = Field(
        "medium", title="Resolution",
        description="Resolution bucket: low 512/288, medium 768/448, high 960/544 (long/short side).",
    )
    aspect_ratio: AspectRatio = Field("1:1", title="Aspect ratio", description="Aspect ratio of the bucket.")
    auto_scale_input: bool = Field(
        False, title="Auto-scale input",
        description="Fit videos to the target frame count and frame rate (stretch clips that are "
        "too short instead of skipping them).",
    )
    split_input_into_scenes: bool = Field(
        False, title="Split input into scenes",
        description="Off for this mode: scene splitting would desync the reference/target/mask "
        "triplet. Provide pre-split clips instead.",
    )
    split_input_duration_threshold: float = Field(
        30.0, ge=1.0, le=60.0, title="Split duration threshold",
        description="Duration threshold for scene splitting (only relevant if splitting were enabled).",
    )
    # Audio
    audio_normalize: bool = Field(
        True, title="Normalize audio",
        description="Peak-normalize audio for consistent loudness across the dataset.",
    )
    audio_preserve_pitch: bool = Field(
        True, title="Preserve pitch",
        description="Preserve pitch when fitting audio to video duration.",
    )
    # Validation
    validation: tuple[ValidationSample, ...] = Field(
        (), max_length=2, title="Validation samples",
        description="Up to 2 validation samples {prompt, video_url, mask_url, "
        "reference_video_url, reference_audio_url?}.",
    )
    validation_negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT, title="Validation negative prompt",
        description="Negative prompt for validation sampling (a built-in quality prompt by default).",
    )
    validation_number_of_frames: int = Field(
        89, ge=9, le=121, title="Validation number of frames",
        description="Frames per validation sample; snapped down to 8k+1.",
    )
    validation_frame_rate: int = Field(
        24, ge=8, le=60, title="Validation frame rate", description="Validation frames per second."
    )
    validation_resolution: Resolution = Field(
        "high", title="Validation resolution", description="Resolution bucket of validation samples."
    )
    validation_aspect_ratio: AspectRatio = Field(
        "1:1", title="Validation aspect ratio", description="Aspect ratio of validation samples."
    )
    stg_scale: float = Field(
        1.0, ge=0.0, le=3.0, title="STG scale",
        description="Spatio-temporal guidance scale for validation (0 disables it).",
    )
    validation_steps: int = Field(
        30, ge=2, le=100, title="Validation sampling steps (extension)",
        description="Denoising steps per validation sample (the LTX-2 pipeline uses 30-40).",
    )
    debug_dataset: bool = Field(
        False, title="Debug dataset",
        description="Return an archive of the preprocessed data for inspection.",
    )
    # Extensions (ours, not in the product spec)
    output_url: str | None = Field(
        None, title="Output URL (extension)",
        description="fsspec destination for the outputs (local path, file://, memory://, s3://, "
        "gs://). Default: a local outputs/<run> folder.",
    )
    model: Literal["ltx-2.3", "tiny"] = Field(
        "ltx-2.3", title="Model (extension)",
        description="Base model: the real LTX-2.3, or a tiny random model for tests and demos.",
    )
    model_source: str | None = Field(
        None, title="Model source (extension)",
        description="Where the LTX-2.3 weights are: a diffusers folder or hub id "
        "(diffusers/LTX-2.3-Diffusers), or Lightricks' single-file .safetensors checkpoint. "
        "Default: $AV2AV_MODEL_SOURCE on the GPU worker, else the hub id.",
    )
    text_encoder_source: str | None = Field(
        None, title="Text encoder source (extension)",
        description="Gemma 3 folder or hub id, needed with a single-file model_source (the "
        "checkpoint holds no text encoder). Default: $AV2AV_TEXT_ENCODER_SOURCE, else "
        "google/gemma-3-12b-it.",
    )
    reference_audio_positions: Literal["aligned", "before"] = Field(
        "aligned", title="Reference audio positions (extension)",
        description="Where the reference audio sits in time: aligned = the target's own positions "
        "(Lightricks' IC-LoRA convention); before = negative time, ending 0.04 s before the target "
        "(Lightricks' Dub-It convention). Inference must use the same; it is recorded in the outputs.",
    )
    reference_downscale: Literal[1, 2] = Field(
        2, title="Reference video downscale (extension)",
        description="Encode the reference video at 1/2 resolution (4x fewer reference tokens, as "
        "Lightricks' LTX-2.3 IC-LoRAs) or at full resolution (1). Recorded in the outputs.",
    )
    lora_dtype: Literal["bf16", "fp32"] = Field(
        "bf16", title="LoRA file precision (extension)",
        description="Precision of the saved LoRA weights (training always keeps them in fp32).",
    )
    upload_checkpoints: bool = Field(
        False, title="Upload checkpoints (extension)",
        description="Also upload the resumable checkpoints; otherwise they stay in the GPU worker's "
        "checkpoint folder ($AV2AV_CACHE_DIR/checkpoints/<run>).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, title="Seed (extension)", description="Random seed.")
    checkpoint_every: int | None = Field(
        None, ge=1, title="Checkpoint every (extension)",
        description="Save a resumable checkpoint (LoRA, optimizer, schedule, RNG) every N steps.",
    )
    resume_from: str | None = Field(
        None, title="Resume from (extension)",
        description="Path of a checkpoint file to continue training from.",
    )
    validation_every: int | None = Field(
        None, ge=1, title="Validation every (extension)",
        description="Also render the validation samples every N steps (always at the end).",
    )

    @field_validator("number_of_frames", "validation_number_of_frames")
    @classmethod
    def _snap_frames(cls, frames: int) -> int:
        return snap_frames(frames)

    @field_validator("trigger_phrase")
    @classmethod
    def _strip_trigger(cls, phrase: str) -> str:
        return phrase.strip()

    @model_validator(mode="after")
    def _refuse_scene_split(self) -> "TrainRequest":
        if self.split_input_into_scenes:
            raise ValueError(
                "split_input_into_scenes=true is not supported for av2av-masked: splitting "
                "would desync the reference/target/mask triplets. Provide pre-split clips and "
                "set split_input_into_scenes=false."
            )
        return self

    @property
    def bucket(self) -> tuple[int, int]:
        """(width, height) of the training resolution bucket."""
        return bucket_size(self.resolution, self.aspect_ratio)

    @property
    def validation_bucket(self) -> tuple[int, int]:
        return bucket_size(self.validation_resolution, self.validation_aspect_ratio)

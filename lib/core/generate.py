"""The generate request: apply a trained LoRA to new source, mask and reference clips.

One frozen pydantic model, the single source of parameter names, defaults, ranges and help text
for `av2av generate`, the `generate` flow's signature, its Prefect form and README's table (as
lib/core/config.py is for training). The conventions the LoRA was trained with (reference audio
positions, reference downscale, trigger phrase, rank, base model) are not fields: they are read
from the LoRA file (`LoraConventions`), so they can never be entered wrong.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lib.core.config import (
    DEFAULT_NEGATIVE_PROMPT,
    VAE_STRIDE,
    AspectRatio,
    Resolution,
    TrainRequest,
    bucket_size,
    downscale_is_exact,
    number_field,
    snap_frames,
)
from lib.core.errors import InvalidRequest
from lib.core.settings import ConditioningSettings, ConformSettings, SamplerSettings

_SAMPLER = SamplerSettings()  # the training run's validation defaults: one source for both


def _train_field(name: str):
    """A field exactly as the training request defines it (model identity and sources)."""
    info = TrainRequest.model_fields[name]
    return Field(info.default, title=info.title, description=info.description)


class GenerateRequest(BaseModel):
    """Parameters of one generation with a trained av2av-masked LoRA."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="av2av-masked generate request")

    lora_url: str = Field(
        title="LoRA URL",
        min_length=1,
        description="The trained LoRA (lora.safetensors of a training run): a local path or any URL the trainer "
        "reads. Its reference conventions, trigger phrase and rank are read from the file.",
    )
    prompt: str = Field(
        "",
        title="Prompt",
        description="What the regenerated region should show and sound like, in the training captions' style; the "
        "LoRA's trigger phrase is prepended unless the prompt already contains it.",
    )
    video_url: str = Field(
        title="Source video",
        min_length=1,
        description="The source video; its unmasked (BLACK) region is kept pixel-faithful and the masked region "
        "regenerated. It must last at least number_of_frames / frame_rate seconds and at most 7 frames more.",
    )
    mask_url: str = Field(
        title="Mask",
        min_length=1,
        description="The mask (image, or video per frame). WHITE = regenerate, BLACK = keep.",
    )
    reference_video_url: str = Field(
        title="Reference video",
        min_length=1,
        description="The reference video guiding the regenerated audio+video; its audio track is the audio "
        "reference unless reference_audio_url is given.",
    )
    reference_audio_url: str = Field(
        "",
        title="Reference audio",
        description="A separate reference audio; if empty, the reference video's own track is used and must "
        "contain audio.",
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT,
        title="Negative prompt",
        description="What classifier-free guidance steers away from (a built-in quality prompt by default, the "
        "training run's validation default).",
    )
    number_of_frames: int = number_field(
        89,
        "Frames to generate; snapped down to 8k+1 (9, 17, ..., 121, the model's window).",
        ge=9,
        le=121,
        unit="frames",
        title="Number of frames",
    )
    frame_rate: int = number_field(24, "Frame rate of the output.", ge=8, le=60, unit="fps", title="Frame rate")
    resolution: Resolution = Field(
        "high",
        title="Resolution",
        description="Resolution bucket: low 512/288, medium 768/448, high 960/544 px (long/short side).",
    )
    aspect_ratio: AspectRatio = Field("1:1", title="Aspect ratio", description="Aspect ratio of the bucket.")
    steps: int = number_field(
        _SAMPLER.steps,
        "Denoising steps (the LTX-2 pipeline uses 30-40).",
        ge=2,
        le=100,
        unit="steps",
        title="Sampling steps",
    )
    seed: int = number_field(
        0, "Random seed: the same seed and inputs give the same clip, bit for bit.", ge=0, le=2**31 - 1, title="Seed"
    )
    lora_scale: float = number_field(
        1.0, "Strength of the LoRA (1 = as trained, 0 = the base model).", ge=0.0, le=2.0, title="LoRA scale"
    )
    video_guidance_scale: float = number_field(
        _SAMPLER.video_guidance,
        "Classifier-free guidance for video (1 disables it).",
        ge=1.0,
        le=10.0,
        title="Video guidance scale",
    )
    audio_guidance_scale: float = number_field(
        _SAMPLER.audio_guidance,
        "Classifier-free guidance for audio (1 disables it).",
        ge=1.0,
        le=15.0,
        title="Audio guidance scale",
    )
    stg_scale: float = number_field(
        _SAMPLER.stg_scale, "Spatio-temporal guidance scale (0 disables it).", ge=0.0, le=3.0, title="STG scale"
    )
    modality_scale: float = number_field(
        _SAMPLER.modality_scale,
        "Modality isolation guidance (1 disables it).",
        ge=1.0,
        le=10.0,
        title="Modality isolation scale",
    )
    guidance_rescale: float = number_field(
        _SAMPLER.guidance_rescale,
        "Pulls the guided prediction's spread back towards the conditional one's (0 disables it).",
        ge=0.0,
        le=1.0,
        title="Guidance rescale",
    )
    model: Literal["ltx-2.3", "tiny"] = _train_field("model")
    model_source: str = _train_field("model_source")
    text_encoder_source: str = _train_field("text_encoder_source")
    base_precision: Literal["bf16", "int8", "fp8", "nf4"] = Field(
        "bf16",
        title="Base model precision",
        description="Precision of the frozen base weights while generating (the LoRA stays fp32 on top): bf16 "
        "exact; int8 or fp8 (torchao; fp8 needs an Ada/Hopper GPU) about half the transformer's memory; nf4 "
        "(bitsandbytes) about a quarter. `av2av plan` shows what fits.",
    )
    output_url: str = Field(
        "",
        title="Output location",
        description="Where the outputs go: a local folder, file://, memory://, s3:// or gs:// URL. Empty: a local "
        "outputs/RUN-NAME folder on the CPU worker.",
    )

    @field_validator("number_of_frames")
    @classmethod
    def _snap_frames(cls, frames: int) -> int:
        return snap_frames(frames)

    @property
    def bucket(self) -> tuple[int, int]:
        return bucket_size(self.resolution, self.aspect_ratio)

    @property
    def window_s(self) -> float:
        return self.number_of_frames / self.frame_rate

    def sampler(self) -> SamplerSettings:
        return SamplerSettings(
            steps=self.steps,
            seed=self.seed,
            video_guidance=self.video_guidance_scale,
            audio_guidance=self.audio_guidance_scale,
            stg_scale=self.stg_scale,
            modality_scale=self.modality_scale,
            guidance_rescale=self.guidance_rescale,
        )

    def conform(self) -> ConformSettings:
        """The validation samples' conform rules at this request's size (training's audio defaults:
        peak-normalized, pitch kept, never stretched), so the same inputs conform to the same clip."""
        width, height = self.bucket
        return ConformSettings(
            number_of_frames=self.number_of_frames,
            frame_rate=self.frame_rate,
            width=width,
            height=height,
            auto_scale_input=False,
            audio_normalize=True,
            audio_preserve_pitch=True,
        )


class LoraConventions(BaseModel):
    """What a LoRA file says about how it was trained: inference must do the same."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    size: int
    rank: int
    alpha: int
    base_model: str
    trigger_phrase: str = ""
    reference_audio_positions: Literal["aligned", "before"]
    reference_downscale: Literal[1, 2]
    trained_base_precision: str = "bf16"
    read_from: str = "metadata"  # "metadata" (the file's av2av header) or "config.json" (beside it)

    def conditioning(self) -> ConditioningSettings:
        return ConditioningSettings(
            reference_audio_positions=self.reference_audio_positions, reference_downscale=self.reference_downscale
        )


class GeneratePlan(BaseModel):
    """Everything the GPU half runs with, derived once on the CPU side (as lib/core/plan.py's RunPlan)."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_source: str | None
    text_encoder_source: str | None
    base_precision: Literal["bf16", "int8", "fp8", "nf4"] = "bf16"
    prompt: str  # as the model sees it (trigger phrase included)
    negative_prompt: str
    conform: ConformSettings
    sampler: SamplerSettings
    conditioning: ConditioningSettings
    lora: LoraConventions
    lora_name: str  # lora_url as messages show it (redacted)
    lora_scale: float = 1.0


def prompt_with_trigger(prompt: str, trigger_phrase: str) -> str:
    """Training prepends the trigger phrase to every caption; so does inference, unless the user
    already wrote it (a validation prompt usually does, and must stay as it is)."""
    if not trigger_phrase or trigger_phrase in prompt:
        return prompt
    return " ".join(part for part in (trigger_phrase, prompt.strip()) if part)


def refuse_contradictions(request: GenerateRequest, lora: LoraConventions, lora_name: str) -> None:
    """InvalidRequest naming the field when the request contradicts what the LoRA was trained with."""
    from lib.core.plan import base_model_name

    if lora.base_model and lora.base_model != base_model_name(request.model):
        raise InvalidRequest(
            f"model: {request.model!r} runs {base_model_name(request.model)}, but lora_url "
            f"{lora_name} was trained on {lora.base_model}; set model to the LoRA's base."
        )
    factor = lora.reference_downscale
    if not downscale_is_exact(request.bucket, factor):
        width, height = request.bucket
        raise InvalidRequest(
            f"resolution={request.resolution!r} with aspect_ratio={request.aspect_ratio!r} ({width}x{height}) cannot "
            f"hold a reference at 1/{factor}, the reference_downscale lora_url {lora_name} was trained with "
            f"({width // factor}x{height // factor} is not a multiple of {VAE_STRIDE} px). Choose a bucket whose "
            f"sides divide by {factor * VAE_STRIDE} (e.g. aspect_ratio='1:1')."
        )


def plan_generation(request: GenerateRequest, lora: LoraConventions, lora_name: str) -> GeneratePlan:
    return GeneratePlan(
        lora_name=lora_name,
        model=request.model,
        model_source=request.model_source,
        text_encoder_source=request.text_encoder_source,
        base_precision=request.base_precision,
        prompt=prompt_with_trigger(request.prompt, lora.trigger_phrase),
        negative_prompt=request.negative_prompt,
        conform=request.conform(),
        sampler=request.sampler(),
        conditioning=lora.conditioning(),
        lora=lora,
        lora_scale=request.lora_scale,
    )


def generate_parameter_table() -> str:
    """README's generate parameter table, generated from the model (tests check README holds it)."""
    rows = ["| parameter | default | description |", "|---|---|---|"]
    for name, info in GenerateRequest.model_fields.items():
        if info.is_required():
            default = "required"
        elif name == "negative_prompt":
            default = "built-in"
        else:
            default = f"`{json.dumps(info.default)}`" if info.default != "" else "empty"
        rows.append(f"| `{name}` | {default} | {info.description.replace('|', '/')} |")
    return "\n".join(rows)

"""The run plan: every setting of a run, derived once from the request and passed down.

The request (lib/core/config.py) holds what a user chooses; the plan holds what the code runs with —
conform, training, conditioning, sampler and output settings, the warmup rule and sampler steps —
so the CPU flow, the GPU flow, the torchrun workers and the outputs never re-derive them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from lib.core.cache import Cache, content_key
from lib.core.config import TrainRequest
from lib.core.settings import ConditioningSettings, ConformSettings, SamplerSettings, TrainSettings
from lib.core.storage import FileRef

WARMUP_FRACTION, WARMUP_MAX_STEPS = 0.1, 100  # linear warmup over min(100, 10 % of the steps)


class ValidationPlan(BaseModel):
    """What the reels render: the same plan serves the periodic reels and the final one."""

    model_config = ConfigDict(frozen=True)

    clips: list[FileRef] = []  # conformed validation samples, by cache entry and hash
    negative_prompt: str
    sampler: SamplerSettings
    every: int | None = None  # also render every N training steps


class ValidationInputs(BaseModel):
    """The validation samples as files on the GPU worker, found there once they are encoded: their
    conformed clips, their latents and the negative prompt's text inputs. Kept beside the run plan
    (in the training job), which stays as the CPU flow derived it."""

    model_config = ConfigDict(frozen=True)

    clips: list[str] = []
    latents: list[str] = []
    negative_text: str | None = None

    @classmethod
    def on_this_worker(
        cls, cache: Cache, clips: list[FileRef], latents: list[FileRef], negative_text: FileRef | None
    ) -> ValidationInputs:
        """`clips` and `negative_text` fetched from the cache to this worker; `latents` are here already."""
        return cls(
            clips=[str(cache.open(ref)) for ref in clips],
            latents=[ref.path for ref in latents],
            negative_text=str(cache.open(negative_text)) if negative_text is not None else None,
        )


class RunPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    model_source: str | None
    base_precision: Literal["bf16", "int8", "fp8", "nf4"] = "bf16"
    text_encoder_source: str | None
    conform: ConformSettings
    validation_conform: ConformSettings
    train: TrainSettings
    conditioning: ConditioningSettings
    validation: ValidationPlan
    lora_dtype: Literal["bf16", "fp32"]
    lora_info: dict  # recorded in the LoRA file's metadata
    upload_checkpoints: bool
    resume_from: str | None


def warmup_steps(steps: int) -> int:
    return min(WARMUP_MAX_STEPS, int(steps * WARMUP_FRACTION))


def base_model_name(model: str) -> str:
    return "LTX-2.3" if model == "ltx-2.3" else "LTX-2.3 (tiny random test preset)"


def conform_settings(request: TrainRequest) -> ConformSettings:
    width, height = request.bucket
    return ConformSettings(
        number_of_frames=request.number_of_frames,
        frame_rate=request.frame_rate,
        width=width,
        height=height,
        auto_scale_input=request.auto_scale_input,
        audio_normalize=request.audio_normalize,
        audio_preserve_pitch=request.audio_preserve_pitch,
        trigger_phrase=request.trigger_phrase,
    )


def validation_conform_settings(request: TrainRequest) -> ConformSettings:
    width, height = request.validation_bucket
    return ConformSettings(
        number_of_frames=request.validation_number_of_frames,
        frame_rate=request.validation_frame_rate,
        width=width,
        height=height,
        auto_scale_input=request.auto_scale_input,
        audio_normalize=request.audio_normalize,
        audio_preserve_pitch=request.audio_preserve_pitch,
    )


def plan_run(request: TrainRequest, validation_clips: list[FileRef] = (), plan_offloads: bool = False) -> RunPlan:
    """The run's settings. `plan_offloads`: the memory plan needs activation offloading to fit the
    GPU pool (MemoryPlan.offload_activations), which the request's "auto" follows."""
    offload = request.offload_activations == "on" or (request.offload_activations == "auto" and plan_offloads)
    conditioning = ConditioningSettings(
        reference_audio_positions=request.reference_audio_positions,
        reference_downscale=request.reference_downscale_factor,
    )
    train = TrainSettings(
        rank=request.rank,
        steps=request.number_of_steps,
        learning_rate=request.learning_rate,
        seed=request.seed,
        warmup_steps=warmup_steps(request.number_of_steps),
        checkpoint_every=request.checkpoint_every,
        optimizer=request.optimizer,
        offload_activations=offload,
    )
    sampler = SamplerSettings(steps=request.validation_steps, seed=request.seed, stg_scale=request.stg_scale)
    validation = ValidationPlan(
        clips=list(validation_clips),
        negative_prompt=request.validation_negative_prompt,
        sampler=sampler,
        every=request.validation_every,
    )
    lora_info = {
        "base_model": base_model_name(request.model),
        "trigger_phrase": request.trigger_phrase,
        "reference_audio_positions": request.reference_audio_positions,
        "reference_downscale": request.reference_downscale_factor,
        "base_precision": request.base_precision,
    }
    return RunPlan(
        model=request.model,
        model_source=request.model_source,
        base_precision=request.base_precision,
        text_encoder_source=request.text_encoder_source,
        conform=conform_settings(request),
        validation_conform=validation_conform_settings(request),
        train=train,
        conditioning=conditioning,
        validation=validation,
        lora_dtype=request.lora_dtype,
        lora_info=lora_info,
        upload_checkpoints=request.upload_checkpoints,
        resume_from=request.resume_from,
    )


# --- the run fingerprint: what makes two runs the same (dataset content + every parameter that
# shapes the LoRA); scheduled retraining skips a run whose fingerprint matches the last success ---

# Where the outputs go, where training resumes from and where activations wait for the backward
# pass (bit-identical either way) do not change what is learned.
NOT_SHAPING = {"output_url", "resume_from", "training_data_url", "offload_activations"}


def parameters_key(request: TrainRequest) -> str:
    """Stable per schedule: the parameters, minus the dataset URL's content (compared separately)."""
    shaping = request.model_dump(mode="json", exclude=NOT_SHAPING)
    return content_key("run-parameters", "1", url=request.training_data_url, parameters=shaping)[:32]


# The recipe's version: bump when the same request and data train a different LoRA, so a nightly
# retrain runs once more (2: Lightricks' σ shift, LR schedule, weight decay and mask rule).
RECIPE_VERSION = "2"


def success_variable_name(request: TrainRequest) -> str:
    """The Prefect Variable holding the last successful run with these parameters (skip_if_unchanged)."""
    return f"av2av_last_success_{parameters_key(request)}"


def run_fingerprint(request: TrainRequest, dataset_sha256: str) -> str:
    return content_key("run", RECIPE_VERSION, parameters=parameters_key(request), dataset=dataset_sha256)

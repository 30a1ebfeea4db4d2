"""The settings a run plan (lib/core/plan.py) is made of: plain frozen values, no torch, so the CPU side
(the CLI's check, the flow that derives the plan) never imports the model stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

REFERENCE_AUDIO_GAP_S = 0.04  # "before": gap between the reference audio's end and the target's start


@dataclass(frozen=True)
class TrainSettings:
    rank: int
    steps: int
    learning_rate: float
    seed: int = 0
    warmup_steps: int = 0
    checkpoint_every: int | None = None
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # or "adamw8bit" (bitsandbytes)
    # ltx-trainer's recipe (trainer.py): AdamW's default decay, LinearLR from 1.0 to 0.1
    weight_decay: float = 0.01
    lr_end_factor: float = 0.1
    offload_activations: bool = False  # checkpointed blocks' inputs kept in host memory (lib/train/offload.py)


@dataclass(frozen=True)
class ConditioningSettings:
    """How references are laid out; recorded in config.json and the LoRA's metadata, because an
    inference tool must reproduce it for the LoRA to behave as trained. No defaults: the run plan
    takes both from the request (whose reference_downscale, 2, falls back to 1 where the bucket has
    no exact half), a generation from the LoRA, and every other caller names the layout it means."""

    reference_audio_positions: Literal["aligned", "before"]
    reference_downscale: Literal[1, 2]

    def describe(self) -> dict:
        audio = (
            {"positions": "aligned", "description": "the target's own time positions"}
            if self.reference_audio_positions == "aligned"
            else {
                "positions": "before",
                "gap_s": REFERENCE_AUDIO_GAP_S,
                "description": f"negative time, ending {REFERENCE_AUDIO_GAP_S} s before the target starts",
            }
        )
        return {
            "token_order": "reference first, then target",
            "reference_video": {
                "positions": "the target's (spatial positions scaled by the downscale)",
                "downscale_factor": self.reference_downscale,
                "timestep": 0,
            },
            "reference_audio": {**audio, "timestep": 0},
        }


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 30
    seed: int = 0
    video_guidance: float = 3.0  # CFG; 1 disables
    audio_guidance: float = 7.0
    stg_scale: float = 1.0  # 0 disables
    stg_block: int = 28  # the pipeline's default block; clamped to the model's depth
    modality_scale: float = 3.0  # modality isolation; 1 disables
    guidance_rescale: float = 0.7  # 0 disables

    def passes(self) -> list[str]:
        """Transformer calls per step, in order: each enabled guidance term costs one."""
        passes = ["cond"]
        if self.video_guidance != 1 or self.audio_guidance != 1:
            passes.append("uncond")
        if self.stg_scale > 0:
            passes.append("stg")
        if self.modality_scale != 1:
            passes.append("modality")
        return passes


class ConformSettings(BaseModel):
    """The request fields that shape conformed data (and nothing else: they key the cache)."""

    model_config = ConfigDict(frozen=True)

    number_of_frames: int
    frame_rate: int
    width: int
    height: int
    auto_scale_input: bool
    audio_normalize: bool
    audio_preserve_pitch: bool
    trigger_phrase: str = ""

    @property
    def window_s(self) -> float:
        return self.number_of_frames / self.frame_rate

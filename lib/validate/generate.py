"""Generation with a trained LoRA: the validation sampler on new inputs, one sampler for both.

The inputs arrive as a clip in the validation layout (lib/ingest/generate_inputs.py) and are
encoded by lib/model/encoding.py, the LoRA file is attached to the base as training attached it,
and lib/validate/preview.render_sample samples, decodes and composites exactly as the training
run's validation reel does. So with an fp32 LoRA file, the same inputs and seed, the generated
frames are those of the training run's final validation sample.
"""

from __future__ import annotations

from pathlib import Path

from lib.core.errors import InvalidRequest
from lib.core.generate import GeneratePlan
from lib.media.encode import write_video
from lib.model import Components
from lib.model.lifetime import DECODE_PARTS, keep_only
from lib.train.lora_io import ADAPTER_NAME, add_lora, load_lora_state, read_lora
from lib.validate.preview import render_sample
from lib.validate.reel import REEL_SAMPLE_RATE, animated_previews, fit_audio_length, write_reel

GENERATED, PREVIEW, PREVIEW_IMAGE = "generated.mp4", "preview.mp4", "preview.webp"


def attach_lora(transformer, lora_path: str | Path, plan: GeneratePlan) -> None:
    """Attach the LoRA file as training attached it (fp32 adapter, alpha = rank), then its weights;
    `lora_scale` (and an alpha other than the rank) scale it. A file whose tensors do not fit is
    refused before any denoising, naming lora_url."""
    state, _ = read_lora(lora_path)
    add_lora(transformer, plan.lora.rank, seed=0)  # the init is overwritten by the file's weights
    try:
        load_lora_state(transformer, state)
    except (ValueError, RuntimeError) as error:
        raise InvalidRequest(
            f"lora_url: {plan.lora_name} does not fit {plan.model}'s transformer: {str(error).splitlines()[0][:300]}"
        ) from None
    scale = plan.lora_scale * plan.lora.alpha / plan.lora.rank
    if scale != 1.0:
        _scale_lora(transformer, scale)


def _scale_lora(transformer, scale: float) -> None:
    from peft.tuners.lora import LoraLayer

    for module in transformer.modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.scaling:
            module.set_scale(ADAPTER_NAME, scale)  # scaling = scale * alpha / r, alpha = r here


def generate_sample(
    components: Components,
    plan: GeneratePlan,
    clip_path: str,
    latents_path: str,
    negative_text: dict,
    lora_path: str | Path,
    on_step=None,
) -> dict:
    """Sample with the LoRA attached: render_sample's dict (source, mask, reference, generated with
    the kept region composited back, audio). Holds the transformer and the decoders only."""
    keep_only(components, "transformer", *DECODE_PARTS)
    transformer = components.transformer
    attach_lora(transformer, lora_path, plan)
    transformer.eval()
    return render_sample(
        components,
        clip_path,
        latents_path,
        negative_text,
        plan.sampler,
        conditioning=plan.conditioning,
        on_step=on_step,
    )


def write_outputs(sample: dict, folder: Path) -> dict[str, Path]:
    """generated.mp4 (the clip with its generated audio track), preview.mp4 (source · mask ·
    reference · generated, as the validation reel) and preview.webp (that preview, animated, small)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame_rate = sample["frame_rate"]
    seconds = len(sample["generated"]) / frame_rate
    audio = fit_audio_length(sample["audio"], sample["sample_rate"], seconds)
    write_video(folder / GENERATED, sample["generated"], frame_rate, audio, REEL_SAMPLE_RATE)
    write_reel(folder / PREVIEW, [sample], frame_rate)
    image = animated_previews(folder / PREVIEW, len(sample["generated"]), folder)[0]
    return {
        GENERATED: folder / GENERATED,
        PREVIEW: folder / PREVIEW,
        PREVIEW_IMAGE: image.rename(folder / PREVIEW_IMAGE),
    }

"""Acceptance tests of LoRA training on the tiny preset, CPU only (docs/architecture.md, "Training" and "Formats").

Two synthetic triplets are conformed (17 frames, 512x288) and encoded once per session
(tests/training_fixtures.py); every test trains a deep copy of the same base transformer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lib.model.conditioning import (
    REFERENCE_AUDIO_GAP_S,
    TIMESTEP_SCALE,
    ConditioningSettings,
    build_inputs,
    masked_loss,
    pack_audio,
    pack_video,
    predict,
)
from lib.train.lora_io import PREFIX, TARGET_MODULES, read_lora, save_lora
from lib.train.training import TrainSettings, fit, training_step
from tests.training_fixtures import (
    CPU,
    SAME_SIZE_ALIGNED,
    evaluation_loss,
    fixed_draw,
    fixed_inputs,
    fresh_transformer,
    single_thread,
    train_fresh,
    training_data,
)

__all__ = ["single_thread", "training_data"]  # fixtures, imported so pytest finds them here
pytestmark = pytest.mark.usefixtures("single_thread")
PROJECT = Path(__file__).resolve().parents[1]


def _targeted_linear_names(transformer) -> list[str]:
    """Linear modules peft's suffix rule selects for TARGET_MODULES (name == t or ends with '.t')."""
    return [
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(name == target or name.endswith(f".{target}") for target in TARGET_MODULES)
    ]


# --- 1. overfitting -------------------------------------------------------------------------


@pytest.mark.slow
def test_overfits_two_triplets(training_data):
    transformer = fresh_transformer(training_data)
    before = evaluation_loss(transformer, training_data.examples)
    settings = TrainSettings(rank=32, learning_rate=1e-2, steps=120, seed=0)
    result = fit(transformer, training_data.examples, settings, conditioning=SAME_SIZE_ALIGNED)
    after = evaluation_loss(transformer, training_data.examples)
    drop = 1 - after / before
    print(
        f"fixed-draw loss {before:.3f} -> {after:.3f} ({100 * drop:.1f} % drop); "
        f"training loss first 10 {sum(result.losses[:10]) / 10:.3f}, last 10 {sum(result.losses[-10:]) / 10:.3f}"
    )
    assert len(result.losses) == 120 and all(map(math.isfinite, result.losses))
    assert drop >= 0.5, (before, after)


# --- 2. masking -----------------------------------------------------------------------------


class _LeafOutputs:
    """Stands in for the model in `predict`: runs the transformer, returns its FULL outputs
    (target + reference tokens) as leaves, so d loss / d output can be read per token."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.video = self.audio = None

    def __call__(self, **kwargs):
        with torch.no_grad():
            video, audio = self.transformer(**kwargs)
        self.video, self.audio = video.clone().requires_grad_(), audio.clone().requires_grad_()
        return self.video, self.audio


def test_loss_gradient_is_zero_at_kept_and_reference_tokens(training_data):
    base = training_data.components.transformer
    for example in training_data.examples:
        regenerated = example.video_mask.reshape(-1)
        assert regenerated.any() and not regenerated.all()  # both kinds of token are present
        video_tokens, audio_tokens = regenerated.numel(), pack_audio(example.target_audio).shape[0]
        recorder = _LeafOutputs(base)
        loss, _ = training_step(
            base, recorder, [example], torch.Generator().manual_seed(5), CPU, conditioning=SAME_SIZE_ALIGNED
        )
        loss.backward()
        video_grad, audio_grad = recorder.video.grad[0], recorder.audio.grad[0]
        assert video_grad.shape[0] == 2 * video_tokens and audio_grad.shape[0] == 2 * audio_tokens
        target_grad = video_grad[video_tokens:]  # [reference | target]
        assert torch.count_nonzero(video_grad[:video_tokens]) == 0  # reference video
        assert torch.count_nonzero(target_grad[~regenerated]) == 0  # kept target video
        assert (target_grad[regenerated].abs().sum(dim=1) > 0).all()  # every regenerated token
        assert torch.count_nonzero(audio_grad[:audio_tokens]) == 0  # reference audio
        assert (audio_grad[audio_tokens:].abs().sum(dim=1) > 0).all()  # every target audio token


def test_kept_region_targets_carry_no_loss(training_data):
    """Changing the target latents only where mask = 0 changes those tokens' flow-matching
    targets, yet not the loss for the same predictions; the same change counts once the mask
    is ignored, and a change in the regenerated region counts."""
    base = training_data.components.transformer
    example = training_data.examples[0]
    draw = fixed_draw(example)
    kept_cells = ~example.video_mask  # (F, h, w)
    shifted = example.target_video + 3.0 * kept_cells[None].float()
    original = build_inputs(base, example, *draw, conditioning=SAME_SIZE_ALIGNED)
    changed = build_inputs(
        base, dataclasses.replace(example, target_video=shifted), *draw, conditioning=SAME_SIZE_ALIGNED
    )
    kept = ~example.video_mask.reshape(-1)
    assert not torch.equal(original.video_velocity[kept], changed.video_velocity[kept])
    assert torch.equal(original.video_velocity[~kept], changed.video_velocity[~kept])
    assert torch.count_nonzero(changed.kwargs["timestep"][0, : len(kept)][kept]) == 0

    with torch.no_grad():
        video, audio = predict(base, original)
    loss_original, terms_original = masked_loss(video, audio, original)
    loss_changed, terms_changed = masked_loss(video, audio, changed)
    assert loss_changed.item() == loss_original.item() and terms_changed == terms_original

    def ignoring_mask(inputs):
        return dataclasses.replace(inputs, video_mask=torch.ones_like(inputs.video_mask))

    assert masked_loss(video, audio, ignoring_mask(changed))[0] != masked_loss(video, audio, ignoring_mask(original))[0]

    regenerated_shift = example.target_video + 3.0 * example.video_mask[None].float()
    elsewhere = build_inputs(
        base, dataclasses.replace(example, target_video=regenerated_shift), *draw, conditioning=SAME_SIZE_ALIGNED
    )
    assert masked_loss(video, audio, elsewhere)[0] != loss_original


def test_reference_conditions_the_prediction(training_data):
    base = training_data.components.transformer
    first, second = training_data.examples
    assert not torch.equal(first.reference_video, second.reference_video)
    draw = fixed_draw(first)

    def inputs(example):
        return build_inputs(base, example, *draw, conditioning=SAME_SIZE_ALIGNED)

    with torch.no_grad():
        video, audio = predict(base, inputs(first))
        again_video, again_audio = predict(base, inputs(first))
        swapped_video, _ = predict(base, inputs(dataclasses.replace(first, reference_video=second.reference_video)))
        _, swapped_audio = predict(base, inputs(dataclasses.replace(first, reference_audio=second.reference_audio)))
    assert torch.equal(video, again_video) and torch.equal(audio, again_audio)
    video_change = (swapped_video - video).abs().max().item()
    audio_change = (swapped_audio - audio).abs().max().item()
    print(
        f"max change at target tokens: reference video swap {video_change:.3g}, reference audio swap {audio_change:.3g}"
    )
    assert video_change > 1e-3 and audio_change > 1e-3


def test_model_inputs_layout(training_data):
    from diffusers import LTX2Pipeline

    base = training_data.components.transformer
    example = training_data.examples[1]
    video_sigma, audio_sigma, video_noise, audio_noise = draw = fixed_draw(example)
    inputs = build_inputs(base, example, *draw, conditioning=SAME_SIZE_ALIGNED)
    kwargs = inputs.kwargs
    frames, height, width = example.video_mask.shape
    nv = frames * height * width
    clean = pack_video(example.target_video)
    reference = pack_video(example.reference_video)
    clean_audio, reference_audio = pack_audio(example.target_audio), pack_audio(example.reference_audio)
    na = clean_audio.shape[0]
    regenerated = example.video_mask.reshape(-1)

    # packing agrees with the pipeline's (patch size 1) and hence with the rope's token order
    assert torch.equal(clean, LTX2Pipeline._pack_latents(example.target_video[None])[0])
    assert torch.equal(clean_audio, LTX2Pipeline._pack_audio_latents(example.target_audio[None])[0])

    # video: [reference | target], as ltx-trainer's flexible strategy; kept target tokens clean at
    # timestep 0, regenerated ones noised at sigma
    hidden, timestep = kwargs["hidden_states"][0], kwargs["timestep"][0]
    target, target_t = hidden[nv:], timestep[nv:]
    assert hidden.shape == (2 * nv, clean.shape[1]) and timestep.shape == (2 * nv,)
    assert torch.equal(hidden[:nv], reference) and torch.count_nonzero(timestep[:nv]) == 0
    assert torch.equal(target[~regenerated], clean[~regenerated])
    assert torch.count_nonzero(target_t[~regenerated]) == 0
    noised = (1 - video_sigma) * clean + video_sigma * video_noise
    assert torch.equal(target[regenerated], noised[regenerated])
    assert torch.allclose(target_t[regenerated], video_sigma * TIMESTEP_SCALE)
    assert torch.allclose(kwargs["sigma"], (video_sigma * TIMESTEP_SCALE).reshape(1))
    assert torch.allclose(kwargs["audio_sigma"], (audio_sigma * TIMESTEP_SCALE).reshape(1))
    assert kwargs["use_cross_timestep"] is True

    # audio: [reference clean at timestep 0 | target noised at its own sigma]
    audio_hidden, audio_t = kwargs["audio_hidden_states"][0], kwargs["audio_timestep"][0]
    assert torch.equal(audio_hidden[na:], (1 - audio_sigma) * clean_audio + audio_sigma * audio_noise)
    assert torch.allclose(audio_t[na:], audio_sigma * TIMESTEP_SCALE)
    assert torch.equal(audio_hidden[:na], reference_audio) and torch.count_nonzero(audio_t[:na]) == 0

    # velocity targets
    assert torch.equal(inputs.video_velocity, video_noise - clean)
    assert torch.equal(inputs.audio_velocity, audio_noise - clean_audio)

    # coordinates: reference video at the target's positions, in the rope's frame-major order
    video_coords = kwargs["video_coords"]
    assert video_coords.shape == (1, 3, 2 * nv, 2)
    assert torch.equal(video_coords[:, :, :nv], video_coords[:, :, nv:])
    expected = base.rope.prepare_video_coords(1, frames, height, width, CPU, fps=example.frame_rate)
    assert torch.equal(video_coords[:, :, nv:], expected)
    f, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    assert torch.equal(video_coords[0, 1, nv:, 0], 32.0 * h.reshape(-1))
    assert torch.equal(video_coords[0, 2, nv:, 0], 32.0 * w.reshape(-1))
    assert (video_coords[0, 0, nv:, 0].diff() >= 0).all()  # time never decreases along the tokens
    # "aligned": the reference audio takes the target's own time positions
    audio_coords = kwargs["audio_coords"][0, 0]
    assert audio_coords.shape == (2 * na, 2)
    target_audio_coords = base.audio_rope.prepare_audio_coords(1, na, CPU)[0, 0]
    assert torch.equal(audio_coords[na:], target_audio_coords) and torch.equal(audio_coords[:na], target_audio_coords)

    # "before": strictly before the target, ending GAP seconds before 0, same spacing
    before_layout = ConditioningSettings(reference_audio_positions="before", reference_downscale=1)
    before = build_inputs(base, example, *draw, conditioning=before_layout).kwargs["audio_coords"][0, 0]
    assert torch.equal(before[na:], target_audio_coords)
    assert (before[:na] < 0).all()
    assert before[:na, 1].max().item() == pytest.approx(-REFERENCE_AUDIO_GAP_S, abs=1e-6)
    assert torch.allclose(before[:na].diff(dim=0), before[na:].diff(dim=0))


def test_half_resolution_reference_covers_the_target_frame(training_data):
    from tests.training_fixtures import synthetic_example

    base = training_data.components.transformer
    full = synthetic_example(training_data.components, frames=3, height=8, width=8)
    half = synthetic_example(training_data.components, frames=3, height=8, width=8, reference_scale=2)
    tokens = {}
    for name, example, downscale in (("full", full, 1), ("half", half, 2)):
        draw = fixed_draw(example)
        layout = ConditioningSettings(reference_audio_positions="aligned", reference_downscale=downscale)
        inputs = build_inputs(base, example, *draw, conditioning=layout)
        tokens[name] = inputs.kwargs["hidden_states"].shape[1] - inputs.video_tokens
        coords = inputs.kwargs["video_coords"][0]
        reference, target = coords[:, : tokens[name]], coords[:, tokens[name] :]
        assert reference[1:].max() == target[1:].max() and reference[1:].min() == target[1:].min()
        assert torch.equal(reference[0].unique(), target[0].unique())  # same frames in time
    assert tokens["half"] * 4 == tokens["full"] == 3 * 8 * 8


# --- 3. reproducibility ---------------------------------------------------------------------


def _trained_lora_bytes(data, seed: int, path: Path, global_seed: int) -> bytes:
    torch.manual_seed(global_seed)  # the run must not depend on the global RNG
    transformer, _ = train_fresh(data, TrainSettings(rank=8, steps=5, learning_rate=1e-3, seed=seed))
    save_lora(transformer, path, 8, {"base_model": "tiny"})
    return path.read_bytes()


@pytest.mark.slow
def test_same_seed_same_lora_bytes(training_data, tmp_path):
    first = _trained_lora_bytes(training_data, 0, tmp_path / "a.safetensors", global_seed=1)
    second = _trained_lora_bytes(training_data, 0, tmp_path / "b.safetensors", global_seed=2)
    other = _trained_lora_bytes(training_data, 1, tmp_path / "c.safetensors", global_seed=1)
    assert first == second
    tensors_a, _ = read_lora(tmp_path / "a.safetensors")
    tensors_c, _ = read_lora(tmp_path / "c.safetensors")
    assert tensors_a.keys() == tensors_c.keys()
    assert all(not torch.equal(tensors_a[k], tensors_c[k]) for k in tensors_a if ".lora_B." in k)
    assert other != first


# --- 4. the LoRA file -----------------------------------------------------------------------


def test_lora_file_loads_into_diffusers_pipeline(training_data, tmp_path):
    from lib.model import build_tiny, to_pipeline

    rank = 8
    transformer, _ = train_fresh(training_data, TrainSettings(rank=rank, steps=4, learning_rate=1e-2, seed=0))
    path = save_lora(
        transformer,
        tmp_path / "lora.safetensors",
        rank,
        {"base_model": "tiny", "trigger_phrase": "x"},
        dtype=torch.float32,
    )

    tensors, info = read_lora(path)
    targeted = _targeted_linear_names(training_data.components.transformer)
    assert all(k.startswith(PREFIX) and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in tensors)
    assert len(tensors) == 2 * len(targeted)
    assert set(tensors) == {f"{PREFIX}{name}.lora_{ab}.weight" for name in targeted for ab in "AB"}
    assert all(tensors[f"{PREFIX}{n}.lora_A.weight"].shape[0] == rank for n in targeted)
    assert all(tensors[f"{PREFIX}{n}.lora_B.weight"].shape[1] == rank for n in targeted)
    assert info["rank"] == info["alpha"] == rank and info["trigger_phrase"] == "x"
    with safe_open(str(path), framework="pt") as handle:
        adapter = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert adapter["transformer.r"] == adapter["transformer.lora_alpha"] == rank

    pipe = to_pipeline(build_tiny())
    pipe.load_lora_weights(str(path))
    for example in training_data.examples:
        inputs = fixed_inputs(transformer, example)
        with torch.no_grad():
            trained = transformer(**inputs.kwargs)
            loaded = pipe.transformer(**inputs.kwargs)
            base = training_data.components.transformer(**inputs.kwargs)
        loaded_diff = max((a - b).abs().max().item() for a, b in zip(trained, loaded))
        base_diff = min((a - b).abs().max().item() for a, b in zip(trained, base))
        print(
            f"max |diffusers-loaded - peft| = {loaded_diff:.3g}; min over modalities of "
            f"max |peft - base| = {base_diff:.3g}"
        )
        assert loaded_diff <= 1e-5
        assert base_diff > 1e-3

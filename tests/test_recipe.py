"""The LTX-2 recipe: noise levels as ltx-trainer draws them, and the validation sampler's guidance
terms with the pipeline's defaults."""

from __future__ import annotations

import pytest
import torch

from lib.model import build_tiny
from lib.train import training
from lib.validate.sampling import SamplerSettings, sample
from tests.training_fixtures import SAME_SIZE_ALIGNED, synthetic_example

DRAWS = 1_000_000
# Sampling error of a quantile of 1M draws is < 0.003 here (density >= 0.1 between the 1st and
# 99th percentiles, even at 14,400 tokens where the 10 % uniform fallback is all of the low tail);
# 0.01 leaves room for both samples' noise and catches any change of the formula (a shift capped
# at 4,096 tokens moves the video median at 6,912 tokens by 0.06).
QUANTILE_TOLERANCE = 0.01
QUANTILES = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


def ltx_trainer_sigmas(count: int, seq_length: int, generator: torch.Generator) -> torch.Tensor:
    """ltx-trainer's ShiftedLogitNormalTimestepSampler.sample, restated line by line."""
    slope = (2.05 - 0.95) / (4096 - 1024)
    mu = slope * seq_length + 0.95 - slope * 1024
    logitnormal = torch.sigmoid(torch.randn(count, generator=generator) * 1.0 + mu)
    p999 = torch.sigmoid(torch.tensor(mu + 3.0902))
    p005 = torch.sigmoid(torch.tensor(mu - 2.5758))
    raw = (logitnormal - p005) / (p999 - p005)
    stretched = torch.where(raw >= 1e-3, raw, 2 * 1e-3 - raw).clamp(0, 1)
    uniform = (1 - 1e-3) * torch.rand(count, generator=generator) + 1e-3
    prob = torch.rand(count, generator=generator)
    return torch.where(prob > 0.1, stretched, uniform)


# Audio of the default request: 89 frames at 24 fps -> 93 latents; video: 12 x 24 x 24 = 6912 tokens;
# 14400 = high 960x960 at 121 frames (16 x 30 x 30).
@pytest.mark.parametrize("tokens", [93, 1024, 2500, 6912, 14400])
def test_sigma_quantiles_match_ltx_trainer(tokens):
    ours = training.sample_sigmas(torch.Generator().manual_seed(1), tokens, DRAWS).double()
    theirs = ltx_trainer_sigmas(DRAWS, tokens, torch.Generator().manual_seed(2)).double()
    difference = (torch.quantile(ours, QUANTILES) - torch.quantile(theirs, QUANTILES)).abs().max().item()
    assert difference < QUANTILE_TOLERANCE, difference
    assert ours.min() > 0 and ours.max() <= 1


def test_audio_sigmas_at_the_default_request_reach_low_noise():
    audio = training.sample_sigmas(torch.Generator().manual_seed(0), 93, DRAWS)
    video = training.sample_sigmas(torch.Generator().manual_seed(0), 6912, DRAWS)
    assert audio.median().item() == pytest.approx(0.61, abs=0.02)
    assert (audio < 0.3).float().mean().item() == pytest.approx(0.15, abs=0.01)
    # long video sequences are trained at higher noise: shift 3.06, not the 2.05 of a 4096-token cap
    assert video.median().item() == pytest.approx(0.875, abs=0.01)
    assert (video > 0.9).float().mean().item() == pytest.approx(0.42, abs=0.01)


def test_each_modality_draws_with_its_own_token_count(monkeypatch):
    components = build_tiny()
    example = synthetic_example(components, frames=2, height=4, width=6, audio_latents=7)
    seen = []
    real = training.sample_sigmas

    def recording(generator, tokens, count=1):
        seen.append(tokens)
        return real(generator, tokens, count)

    monkeypatch.setattr(training, "sample_sigmas", recording)
    training._draw(torch.Generator().manual_seed(0), [example])
    assert seen == [2 * 4 * 6, 7]


# --- the sampler ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler_case():
    components = build_tiny()
    example = synthetic_example(components, frames=2, height=3, width=4, audio_latents=6)
    negative = {**example.text, "encoder_hidden_states": torch.zeros_like(example.text["encoder_hidden_states"])}
    return components, example, negative


def _run(sampler_case, **settings):
    components, example, negative = sampler_case
    transformer = components.transformer
    calls = []
    original = transformer.forward

    def counting(*args, **kwargs):
        calls.append(
            "stg"
            if kwargs.get("spatio_temporal_guidance_blocks")
            else "modality"
            if kwargs.get("isolate_modalities")
            else "plain"
        )
        return original(*args, **kwargs)

    transformer.forward = counting
    try:
        video, audio = sample(
            transformer,
            components.scheduler,
            example,
            negative,
            SamplerSettings(steps=3, **settings),
            conditioning=SAME_SIZE_ALIGNED,
        )
    finally:
        transformer.forward = original
    return video, audio, calls


@pytest.mark.parametrize(
    "settings, per_step",
    [
        ({}, ["plain", "plain", "stg", "modality"]),  # the pipeline's defaults
        ({"modality_scale": 1.0}, ["plain", "plain", "stg"]),
        ({"stg_scale": 0.0}, ["plain", "plain", "modality"]),
        ({"video_guidance": 1.0, "audio_guidance": 1.0}, ["plain", "stg", "modality"]),
        ({"video_guidance": 1.0, "audio_guidance": 1.0, "stg_scale": 0.0, "modality_scale": 1.0}, ["plain"]),
        ({"guidance_rescale": 0.0}, ["plain", "plain", "stg", "modality"]),  # rescale costs no call
    ],
)
def test_transformer_calls_per_step(sampler_case, settings, per_step):
    _, _, calls = _run(sampler_case, **settings)
    assert calls == per_step * 3
    assert len(SamplerSettings(**settings).passes()) == len(per_step)


@pytest.mark.parametrize("change", [{"modality_scale": 1.0}, {"guidance_rescale": 0.0}])
def test_modality_isolation_and_rescale_change_the_output(sampler_case, change):
    video, audio, _ = _run(sampler_case)
    again_video, again_audio, _ = _run(sampler_case)
    other_video, other_audio, _ = _run(sampler_case, **change)
    assert torch.equal(video, again_video) and torch.equal(audio, again_audio)  # seeded
    assert not torch.allclose(video, other_video) and not torch.allclose(audio, other_audio)


@pytest.mark.parametrize("positions, downscale", [("aligned", 2), ("before", 1)])
def test_reference_conventions_are_recorded_in_config_json(positions, downscale):
    from lib.core.config import TrainRequest
    from lib.core.plan import plan_run
    from lib.publish.outputs import config_document

    request = TrainRequest(
        training_data_url="x.zip", reference_audio_positions=positions, reference_downscale=downscale
    )
    plan = plan_run(request)
    document = config_document(request, plan)
    assert document["reference_audio_positions"] == positions
    assert document["reference_downscale_factor"] == downscale
    assert document["conditioning"]["reference_audio"]["positions"] == positions
    assert document["conditioning"]["token_order"] == "reference first, then target"
    assert (
        plan.lora_info["reference_audio_positions"] == positions and plan.lora_info["reference_downscale"] == downscale
    )
    assert document["lora_dtype"] == "bf16" and document["validation_sampler"]["guidance_rescale"] == 0.7


# --- the optimizer and the inference schedule ------------------------------------------------


def test_optimizer_follows_ltx_trainer_decay_and_linear_schedule_and_config_json_says_so():
    from lib.core.config import TrainRequest
    from lib.core.plan import plan_run
    from lib.publish.outputs import config_document

    request = TrainRequest(training_data_url="x.zip", number_of_steps=1000)
    plan = plan_run(request)
    factor = training.lr_factor(plan.train)
    warmup = plan.train.warmup_steps
    assert warmup == 100 and factor(0) == pytest.approx(0.01) and factor(warmup) == 1.0
    # after the warmup, torch's LinearLR(1.0 -> 0.1) over the remaining steps
    assert factor(warmup + 450) == pytest.approx(0.55) and factor(999) == pytest.approx(0.1, abs=1e-3)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert training.build_optimizer(params, plan.train).param_groups[0]["weight_decay"] == 0.01
    recipe = config_document(request, plan)["optimizer"]
    assert recipe["weight_decay"] == 0.01 and recipe["schedule"]["end_factor"] == 0.1


def ltx_core_sigmas(steps: int, tokens: int) -> torch.Tensor:
    """ltx-core's LTX2Scheduler.execute (components/schedulers.py), restated line by line."""
    import math

    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    shift = tokens * (2.05 - 0.95) / (4096 - 1024) + 0.95 - (2.05 - 0.95) / (4096 - 1024) * 1024
    sigmas = torch.where(sigmas != 0, math.exp(shift) / (math.exp(shift) + (1 / sigmas - 1)), 0)
    nonzero = sigmas != 0
    one_minus = 1.0 - sigmas[nonzero]
    sigmas[nonzero] = 1.0 - one_minus / (one_minus[-1] / (1.0 - 0.1))
    return sigmas


@pytest.mark.parametrize("tokens", [6912, 14400])
def test_inference_schedule_uses_the_same_unclamped_shift_as_training(tokens):
    from lib.validate.sampling import sigma_schedule

    ours = sigma_schedule(build_tiny().scheduler, 30, tokens)
    assert torch.allclose(ours, ltx_core_sigmas(30, tokens), atol=1e-5)
    assert training.sequence_shift(tokens) == pytest.approx({6912: 3.0575, 14400: 5.7396}[tokens], abs=1e-3)


# --- the reference's scale: only exact integer factors, as Lightricks' code ------------------


@pytest.mark.parametrize(
    "resolution, aspect, factor",
    [
        ("low", "1:1", 2),
        ("medium", "16:9", 2),
        ("medium", "9:16", 2),
        ("high", "1:1", 2),
        ("low", "16:9", 1),
        ("low", "9:16", 1),
        ("high", "16:9", 1),
        ("high", "9:16", 1),
    ],
)
def test_reference_downscale_is_exact_or_falls_back_to_1_and_the_outputs_record_it(resolution, aspect, factor):
    from lib.core.config import TrainRequest
    from lib.core.plan import plan_run
    from lib.model.encoding import reference_size
    from lib.publish.outputs import config_document
    from lib.train.lora_io import lora_metadata

    request = TrainRequest(training_data_url="x.zip", resolution=resolution, aspect_ratio=aspect, reference_downscale=2)
    plan = plan_run(request)
    assert plan.conditioning.reference_downscale == factor
    assert config_document(request, plan)["reference_downscale_factor"] == factor
    assert lora_metadata(32, plan.lora_info)["reference_downscale_factor"] == str(factor)
    width, height = request.bucket
    assert reference_size(height, width, factor) == (height // factor, width // factor)
    assert (request.reference_downscale_note() is None) == (factor == 2)
    from lib.train.memory_plan import latent_shapes  # the memory plan counts the reference actually encoded

    target, reference, _ = latent_shapes(request)
    assert reference == (target[0], target[1] // factor, target[2] // factor)


def test_fallback_note_names_the_field_and_the_bucket():
    from lib.core.config import TrainRequest

    note = TrainRequest(training_data_url="x.zip", resolution="low", aspect_ratio="16:9").reference_downscale_note()
    assert note.startswith("reference_downscale=2 does not divide the 512x288 bucket") and "256x144" in note


def test_an_inexact_reference_is_never_encoded():
    from lib.model.encoding import reference_size

    with pytest.raises(ValueError, match="512x288 clip has no exact 1/2 reference"):
        reference_size(288, 512, 2)


def test_a_validation_bucket_that_cannot_hold_the_trained_reference_scale_is_refused_by_name():
    from pydantic import ValidationError

    from lib.core.config import TrainRequest

    sample = {"prompt": "p", "video_url": "v.mp4", "mask_url": "m.png", "reference_video_url": "r.mp4"}
    with pytest.raises(ValidationError, match="validation_resolution='high' with validation_aspect_ratio='16:9'"):
        TrainRequest(training_data_url="x.zip", validation=[sample], validation_aspect_ratio="16:9")
    # a training bucket that falls back to 1 lets any validation bucket through
    TrainRequest(
        training_data_url="x.zip",
        validation=[sample],
        validation_aspect_ratio="16:9",
        resolution="low",
        aspect_ratio="16:9",
    )

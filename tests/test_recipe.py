"""The LTX-2 recipe: noise levels as ltx-trainer draws them, and the validation sampler's guidance
terms with the pipeline's defaults."""
from __future__ import annotations

import pytest
import torch

from lib.train import training
from lib.model import build_tiny
from lib.validate.sampling import SamplerSettings, sample
from tests.training_fixtures import synthetic_example

DRAWS = 100_000
# Sampling error of a quantile of 100k draws is < 0.004 here (density >= 0.3 between the 1st
# and 99th percentiles); 0.01 leaves room for both samples' noise and catches any change of the
# formula (the old clamped shift moves the audio median by 0.27).
QUANTILE_TOLERANCE = 0.01
QUANTILES = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


def ltx_trainer_sigmas(count: int, seq_length: int, generator: torch.Generator) -> torch.Tensor:
    """ltx-trainer's ShiftedLogitNormalTimestepSampler.sample, restated line by line."""
    slope = (2.05 - 0.95) / (4096 - 1024)
    mu = slope * min(seq_length, 4096) + 0.95 - slope * 1024
    logitnormal = torch.sigmoid(torch.randn(count, generator=generator) * 1.0 + mu)
    p999 = torch.sigmoid(torch.tensor(mu + 3.0902))
    p005 = torch.sigmoid(torch.tensor(mu - 2.5758))
    raw = (logitnormal - p005) / (p999 - p005)
    stretched = torch.where(raw >= 1e-3, raw, 2 * 1e-3 - raw).clamp(0, 1)
    uniform = (1 - 1e-3) * torch.rand(count, generator=generator) + 1e-3
    prob = torch.rand(count, generator=generator)
    return torch.where(prob > 0.1, stretched, uniform)


# Audio of the default request: 89 frames at 24 fps -> 93 latents; video: 12 x 24 x 24 = 6912 tokens.
@pytest.mark.parametrize("tokens", [93, 1024, 2500, 6912])
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
    assert video.median().item() > 0.78   # long video sequences are trained at higher noise


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
        calls.append("stg" if kwargs.get("spatio_temporal_guidance_blocks") else
                     "modality" if kwargs.get("isolate_modalities") else "plain")
        return original(*args, **kwargs)

    transformer.forward = counting
    try:
        video, audio = sample(transformer, components.scheduler, example, negative, SamplerSettings(steps=3, **settings))
    finally:
        transformer.forward = original
    return video, audio, calls


@pytest.mark.parametrize("settings, per_step", [
    ({}, ["plain", "plain", "stg", "modality"]),                       # the pipeline's defaults
    ({"modality_scale": 1.0}, ["plain", "plain", "stg"]),
    ({"stg_scale": 0.0}, ["plain", "plain", "modality"]),
    ({"video_guidance": 1.0, "audio_guidance": 1.0}, ["plain", "stg", "modality"]),
    ({"video_guidance": 1.0, "audio_guidance": 1.0, "stg_scale": 0.0, "modality_scale": 1.0}, ["plain"]),
    ({"guidance_rescale": 0.0}, ["plain", "plain", "stg", "modality"]),   # rescale costs no call
])
def test_transformer_calls_per_step(sampler_case, settings, per_step):
    _, _, calls = _run(sampler_case, **settings)
    assert calls == per_step * 3
    assert len(SamplerSettings(**settings).passes()) == len(per_step)


@pytest.mark.parametrize("change", [{"modality_scale": 1.0}, {"guidance_rescale": 0.0}])
def test_modality_isolation_and_rescale_change_the_output(sampler_case, change):
    video, audio, _ = _run(sampler_case)
    again_video, again_audio, _ = _run(sampler_case)
    other_video, other_audio, _ = _run(sampler_case, **change)
    assert torch.equal(video, again_video) and torch.equal(audio, again_audio)   # seeded
    assert not torch.allclose(video, other_video) and not torch.allclose(audio, other_audio)


@pytest.mark.parametrize("positions, downscale", [("aligned", 2), ("before", 1)])
def test_reference_conventions_are_recorded_in_config_json(positions, downscale):
    from lib.core.config import TrainRequest
    from lib.publish.outputs import config_document
    from lib.core.plan import plan_run

    request = TrainRequest(training_data_url="x.zip", reference_audio_positions=positions,
                           reference_downscale=downscale)
    plan = plan_run(request)
    document = config_document(request, plan)
    assert document["reference_audio_positions"] == positions
    assert document["reference_downscale_factor"] == downscale
    assert document["conditioning"]["reference_audio"]["positions"] == positions
    assert document["conditioning"]["token_order"] == "reference first, then target"
    assert plan.lora_info["reference_audio_positions"] == positions and plan.lora_info["reference_downscale"] == downscale
    assert document["lora_dtype"] == "bf16" and document["validation_sampler"]["guidance_rescale"] == 0.7

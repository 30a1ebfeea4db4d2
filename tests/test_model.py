"""The lib/model package (its components and loading) and lib/model/latents.py on the tiny preset:
determinism, the real loading path, shapes, normalization identical to the diffusers pipeline's, and
a transformer forward on our outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib.core.errors import ModelUnavailable
from lib.model import (
    LTX23_FLAGS,
    MODULE_NAMES,
    build_tiny,
    check_model_source,
    config_hash,
    load_model,
    model_spec,
    save_pretrained,
    to_pipeline,
)
from lib.model import latents as L


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


def _state(components, name):
    return getattr(components, name).state_dict()


def _assert_same_weights(a, b):
    for name in MODULE_NAMES:
        left, right = _state(a, name), _state(b, name)
        assert left.keys() == right.keys(), name
        assert all(torch.equal(left[k], right[k]) for k in left), name


def _frames(n=17, h=64, w=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _waveform(seconds=0.5, seed=0):
    t = np.arange(int(16000 * seconds)) / 16000
    noise = 0.05 * np.random.default_rng(seed).standard_normal((2, t.size))
    return (0.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def _tokens_video(latents):  # (C, F, H, W) -> (1, F*H*W, C): patch size 1, frame-major
    return latents.permute(1, 2, 3, 0).flatten(0, 2).unsqueeze(0)


def _tokens_audio(latents):  # (C, L, M) -> (1, L, C*M), the pipeline's packing
    return latents.transpose(0, 1).flatten(1).unsqueeze(0)


def _forward(components, video, audio, prompts, timestep, audio_timestep, sigma):
    _, frames, height, width = video.shape
    return components.transformer(
        hidden_states=_tokens_video(video),
        audio_hidden_states=_tokens_audio(audio),
        encoder_hidden_states=prompts["encoder_hidden_states"],
        audio_encoder_hidden_states=prompts["audio_encoder_hidden_states"],
        encoder_attention_mask=prompts["encoder_attention_mask"],
        audio_encoder_attention_mask=prompts["encoder_attention_mask"],
        timestep=timestep,
        audio_timestep=audio_timestep,
        sigma=sigma,
        use_cross_timestep=True,
        num_frames=frames,
        height=height,
        width=width,
        fps=24.0,
        audio_num_frames=audio.shape[1],
        return_dict=False,
    )


def test_build_tiny_is_deterministic_small_and_23(tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny()
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    _assert_same_weights(tiny, again)
    assert again.identity == tiny.identity and tiny.identity.startswith("tiny|seed0|float32|cfg-")
    assert build_tiny(seed=1).identity != tiny.identity
    assert not torch.equal(
        _state(build_tiny(seed=1), "transformer")["proj_in.weight"], _state(tiny, "transformer")["proj_in.weight"]
    )
    config = tiny.transformer.config
    assert {k: config[k] for k in LTX23_FLAGS} == LTX23_FLAGS
    assert tiny.connectors.config.per_modality_projections
    assert type(tiny.vocoder).__name__ == "LTX2VocoderWithBWE"
    total = sum(p.numel() for name in MODULE_NAMES for p in getattr(tiny, name).parameters())
    assert total < 2_000_000
    assert not any(getattr(tiny, name).training for name in MODULE_NAMES)
    assert (tiny.device, tiny.dtype) == (torch.device("cpu"), torch.float32)


def test_model_spec_tiny(tiny):
    spec = model_spec(tiny)
    assert spec["spatial_compression"] == 32 and spec["temporal_compression"] == 8
    assert spec["audio_latents_per_second"] == 25.0
    assert (spec["audio_sample_rate"], spec["audio_hop_length"], spec["vocoder_sample_rate"]) == (16000, 160, 48000)
    assert (spec["video_latent_channels"], spec["audio_latent_channels"], spec["mel_bins"]) == (8, 4, 16)
    assert spec["num_layers"] == 2
    assert spec["max_sequence_length"] == 32 and spec["max_sequence_length"] % 8 == 0


def test_load_model_presets(tiny):
    again = load_model("tiny", device="cpu")
    assert again.dtype == torch.float32 and again.identity == tiny.identity
    half = load_model("tiny", device="cpu", dtype=torch.bfloat16)
    assert half.transformer.dtype == torch.bfloat16 and "|bfloat16|" in half.identity
    with pytest.raises(ValueError, match="unknown model"):
        load_model("ltx-2.0")


@pytest.mark.slow
def test_save_then_load_through_the_real_path(tiny, tmp_path, offline, monkeypatch):
    save_pretrained(tiny, tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    loaded = load_model("ltx-2.3", source=tmp_path, device="cpu", dtype=torch.float32)
    _assert_same_weights(tiny, loaded)
    assert config_hash(loaded) == config_hash(tiny)
    assert loaded.identity == f"ltx-2.3|{tmp_path.resolve()}|float32|cfg-{config_hash(tiny)}"
    assert model_spec(loaded) == model_spec(tiny)
    assert loaded.tokenizer("a cat").input_ids == tiny.tokenizer("a cat").input_ids

    generator = torch.Generator().manual_seed(0)
    video = torch.randn(8, 2, 2, 2, generator=generator)
    audio = torch.randn(4, 5, 4, generator=generator)
    prompts = {
        "encoder_hidden_states": torch.randn(1, 32, 16, generator=generator),
        "audio_encoder_hidden_states": torch.randn(1, 32, 16, generator=generator),
        "encoder_attention_mask": torch.ones(1, 32, dtype=torch.int64),
    }
    t = torch.tensor([700.0])
    with torch.no_grad():
        expected = _forward(tiny, video, audio, prompts, t, t, t)
        got = _forward(loaded, video, audio, prompts, t, t, t)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))

    monkeypatch.setenv("AV2AV_MODEL_SOURCE", str(tmp_path))  # a deployment's env var stands in for the hub id
    assert load_model("ltx-2.3", device="cpu").identity == loaded.identity


def test_loading_refuses_a_non_23_transformer(tiny, tmp_path, offline):
    import json

    save_pretrained(tiny, tmp_path)
    config_file = tmp_path / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "cross_attn_mod": False}))
    with pytest.raises(ModelUnavailable, match="not an LTX-2.3"):
        load_model("ltx-2.3", source=tmp_path, device="cpu")
    with pytest.raises(ModelUnavailable, match="not an LTX-2.3"):
        check_model_source("ltx-2.3", str(tmp_path))


def test_log_mel_shape_and_values():
    wave = _waveform(0.5)
    mel = L.log_mel(wave, n_mels=64)
    assert mel.shape == (1, 2, 8000 // 160 + 1, 64) and mel.dtype == torch.float32
    assert torch.isfinite(mel).all() and mel.min() >= math.log(1e-5) - 1e-4
    mono = L.log_mel(wave[:1], n_mels=16)  # mono is duplicated to stereo
    torch.testing.assert_close(mono[0, 0], mono[0, 1])
    # 440 Hz is the loudest band: the mel bin containing it beats the top bin.
    assert mel[0, 0, :, :20].mean() > mel[0, 0, :, -1].mean()


def test_encode_video_normalizes_like_the_pipeline(tiny):
    from diffusers import LTX2Pipeline

    frames = _frames()
    latents = L.encode_video(tiny, frames)
    assert latents.shape == (8, 3, 2, 3) and latents.dtype == torch.float32
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1
    with torch.no_grad():
        raw = tiny.vae.encode(pixels).latent_dist.mode()
    expected = LTX2Pipeline._normalize_latents(
        raw, tiny.vae.latents_mean, tiny.vae.latents_std, tiny.vae.config.scaling_factor
    )
    torch.testing.assert_close(latents, expected[0])
    assert not torch.allclose(latents, raw[0])  # the tiny stats are not the identity

    decoded = L.decode_video(tiny, latents)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    with pytest.raises(ValueError, match="8k\\+1"):
        L.encode_video(tiny, _frames(n=12))
    with pytest.raises(ValueError, match="multiples of 32"):
        L.encode_video(tiny, _frames(n=9, h=48))


def test_encode_audio_normalizes_like_the_pipeline(tiny):
    from diffusers import LTX2Pipeline

    wave = _waveform(0.5)
    latents = L.encode_audio(tiny, wave)
    mel_frames = 8000 // 160 + 1
    assert latents.shape == (4, math.ceil(mel_frames / 4), 4)  # (C, 13, mel_bins / 4): ~25/s
    with torch.no_grad():
        raw = tiny.audio_vae.encode(L.log_mel(wave, 16)).latent_dist.mode()
    packed = LTX2Pipeline._normalize_audio_latents(
        LTX2Pipeline._pack_audio_latents(raw), tiny.audio_vae.latents_mean, tiny.audio_vae.latents_std
    )
    expected = LTX2Pipeline._unpack_audio_latents(packed, raw.shape[2], num_mel_bins=raw.shape[3])
    torch.testing.assert_close(latents, expected[0])

    waveform, rate = L.decode_audio(tiny, latents)
    assert rate == 48000
    assert waveform.shape == (2, (4 * latents.shape[1] - 3) * 160 * 3) and waveform.dtype == np.float32
    assert np.isfinite(waveform).all()


def test_encode_prompts_match_what_the_pipeline_feeds_the_transformer(tiny):
    prompts = L.encode_prompts(tiny, ["a red ball bounces", "Quiet night, 2 owls!"])
    assert set(prompts) == {"encoder_hidden_states", "audio_encoder_hidden_states", "encoder_attention_mask"}
    assert prompts["encoder_hidden_states"].shape == (2, 32, 16)
    assert prompts["audio_encoder_hidden_states"].shape == (2, 32, 16)
    assert prompts["encoder_attention_mask"].shape == (2, 32)
    assert all(v.device.type == "cpu" for v in prompts.values())

    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("kwargs", kwargs)

    pipe = to_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    handle = tiny.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        pipe(
            prompt="a red ball bounces",
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=2,
            guidance_scale=1.0,
            audio_guidance_scale=1.0,
            stg_scale=0.0,
            audio_stg_scale=0.0,
            modality_scale=1.0,
            audio_modality_scale=1.0,
            max_sequence_length=32,
            output_type="latent",
        )
    finally:
        handle.remove()
    single = L.encode_prompts(tiny, ["a red ball bounces"])
    for key in single:
        torch.testing.assert_close(single[key], seen["kwargs"][key].cpu(), rtol=0, atol=0)
    torch.testing.assert_close(single["encoder_hidden_states"], prompts["encoder_hidden_states"][:1])


def test_transformer_accepts_our_outputs_with_per_token_timesteps(tiny):
    video = L.encode_video(tiny, _frames())
    audio = L.encode_audio(tiny, _waveform(0.5))
    prompts = L.encode_prompts(tiny, ["a red ball bounces"])
    n_video, n_audio = video[0].numel(), audio.shape[1]
    generator = torch.Generator().manual_seed(0)
    timestep = torch.rand(1, n_video, generator=generator) * 1000
    timestep[:, : n_video // 2] = 0.0  # kept tokens: clean, t = 0
    audio_timestep = torch.full((1, n_audio), 600.0)
    with torch.no_grad():
        out_video, out_audio = _forward(
            tiny, video, audio, prompts, timestep, audio_timestep, sigma=torch.tensor([600.0])
        )
    assert out_video.shape == (1, n_video, 8) and out_audio.shape == (1, n_audio, 16)
    assert torch.isfinite(out_video).all() and torch.isfinite(out_audio).all()

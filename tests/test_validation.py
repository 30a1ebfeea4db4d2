"""Validation: samples checked before training, the sampler (CFG + STG), the reel."""

from __future__ import annotations

import av
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from lib.core.cache import Cache
from lib.core.config import TrainRequest, ValidationSample
from lib.core.plan import validation_conform_settings
from lib.ingest.validation import InvalidValidationSample, prepare_samples
from lib.media.synthetic import make_box_mask, make_clip
from lib.model import build_tiny
from lib.model.encoding import encode_clip, load_example
from lib.model.latents import encode_prompts
from lib.validate.preview import render_reel, render_sample
from lib.validate.reel import feather_band_px
from lib.validate.sampling import SamplerSettings, sample
from tests.training_fixtures import SAME_SIZE_ALIGNED  # encode_clip below keeps the reference at the target's size

FRAMES = 9


def _request(tmp_path, **sample_fields) -> TrainRequest:
    return TrainRequest(
        training_data_url="unused.zip",
        model="tiny",
        validation=[ValidationSample(**sample_fields)],
        resolution="low",
        aspect_ratio="16:9",
        validation_number_of_frames=FRAMES,
        validation_resolution="low",
        validation_aspect_ratio="16:9",
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validation")
    fields = dict(
        prompt="a square",
        video_url=str(make_clip(folder / "source.mp4", 0.5, seed=1)),
        mask_url=str(make_box_mask(folder / "mask.png", (320, 180), (0.3, 0.3, 0.7, 0.7))),
        reference_video_url=str(make_clip(folder / "reference.mp4", 0.5, seed=2)),
    )
    request = _request(folder, **fields)
    clip = prepare_samples(request.validation, validation_conform_settings(request), Cache.at(folder))[0]
    components = build_tiny()
    latents = encode_clip(components, clip, Cache.at(folder))
    negative = encode_prompts(components, [request.validation_negative_prompt])
    return dict(folder=folder, clip=clip, latents=latents, components=components, negative=negative, request=request)


def _counting(transformer):
    calls = []
    original = transformer.forward

    def forward(*args, **kwargs):
        calls.append(kwargs.get("spatio_temporal_guidance_blocks"))
        return original(*args, **kwargs)

    transformer.forward = forward
    return calls, lambda: setattr(transformer, "forward", original)


def test_kept_region_is_the_source_pixel_for_pixel(prepared):
    rendered = render_sample(
        prepared["components"],
        prepared["clip"].path,
        prepared["latents"].path,
        prepared["negative"],
        SamplerSettings(steps=2),
        conditioning=SAME_SIZE_ALIGNED,
    )
    mask = rendered["mask"]
    assert rendered["generated"].shape == rendered["source"].shape == (FRAMES, 288, 512, 3)
    kept = ~binary_dilation(mask, structure=np.ones((1, 3, 3)), iterations=feather_band_px() + 1)
    assert kept.mean() > 0.5
    assert np.array_equal(rendered["generated"][kept], rendered["source"][kept])
    # Inside the mask the pixels are the model's, not the source's.
    assert not np.array_equal(rendered["generated"][mask], rendered["source"][mask])
    assert np.array_equal(rendered["generated"][mask], rendered["raw_generated"][mask])


def test_stg_changes_the_output_and_zero_skips_the_extra_pass(prepared):
    components, example = prepared["components"], load_example(prepared["latents"].path)
    transformer = components.transformer
    outputs = {}
    for stg in (0.0, 1.0):
        calls, restore = _counting(transformer)
        try:
            outputs[stg] = sample(
                transformer,
                components.scheduler,
                example,
                prepared["negative"],
                SamplerSettings(steps=3, stg_scale=stg),
                conditioning=SAME_SIZE_ALIGNED,
            )
        finally:
            restore()
        perturbed = [c for c in calls if c]
        # cond, uncond, modality isolation (+ STG) per step; tests/test_recipe.py covers the rest
        assert len(calls) == 3 * (4 if stg else 3) and len(perturbed) == (3 if stg else 0)
    assert not np.allclose(outputs[0.0][0].numpy(), outputs[1.0][0].numpy())
    again = sample(
        transformer,
        components.scheduler,
        example,
        prepared["negative"],
        SamplerSettings(steps=3),
        conditioning=SAME_SIZE_ALIGNED,
    )
    assert np.array_equal(again[0].numpy(), outputs[1.0][0].numpy()), "seeded: same settings, same output"


def test_reel_geometry_frames_and_audio(prepared):
    path = render_reel(
        prepared["components"],
        [prepared["clip"].path] * 2,
        [prepared["latents"].path] * 2,
        prepared["negative"],
        SamplerSettings(steps=2),
        prepared["folder"] / "reel.mp4",
        conditioning=SAME_SIZE_ALIGNED,
    )
    with av.open(str(path)) as reel:
        video, audio = reel.streams.video[0], reel.streams.audio[0]
        assert (video.width, video.height) == (4 * 512, 288)
        frames = sum(1 for _ in reel.decode(video))
    assert frames == 2 * FRAMES
    with av.open(str(path)) as reel:
        samples = sum(frame.samples for frame in reel.decode(audio=0))
    assert audio.codec_context.name == "aac" and video.codec_context.name == "h264"
    assert samples / audio.rate == pytest.approx(2 * FRAMES / 24, abs=0.05)


def test_silent_reference_without_reference_audio_is_a_422(tmp_path, media):
    request = _request(
        tmp_path,
        prompt="p",
        video_url=str(media / "h264_aac_854x480_25fps_9s_editlist.mp4"),
        mask_url=str(media / "masks" / "runningcar_mask_square_432x240.png"),
        reference_video_url=str(media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4"),
    )
    with pytest.raises(InvalidValidationSample, match="422.*silent_audio"):
        prepare_samples(request.validation, validation_conform_settings(request), Cache.at(tmp_path))


def test_separate_reference_audio_rescues_a_silent_reference(tmp_path, media):
    request = _request(
        tmp_path,
        prompt="p",
        video_url=str(media / "h264_aac_854x480_25fps_9s_editlist.mp4"),
        mask_url=str(media / "masks" / "runningcar_mask_square_432x240.png"),
        reference_video_url=str(media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4"),
        reference_audio_url=str(media / "h264_mp3_640x360_25fps_9.6s_chaplin.mp4"),
    )
    clip = prepare_samples(request.validation, validation_conform_settings(request), Cache.at(tmp_path))[0]
    from safetensors.numpy import load_file

    assert np.abs(load_file(clip.path)["reference_audio"]).max() > 0.1


def test_unreachable_url_is_a_422(tmp_path):
    request = _request(
        tmp_path, prompt="p", video_url=str(tmp_path / "missing.mp4"), mask_url="m.png", reference_video_url="r.mp4"
    )
    with pytest.raises(InvalidValidationSample, match="missing.mp4"):
        prepare_samples(request.validation, validation_conform_settings(request), Cache.at(tmp_path))

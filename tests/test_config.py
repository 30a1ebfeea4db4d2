"""The request model: the spec's names, defaults, ranges and rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lib.core.config import TrainRequest

URL = "file:///data/triplets.zip"


def test_spec_defaults():
    request = TrainRequest(training_data_url=URL)
    assert (request.rank, request.number_of_steps, request.learning_rate) == (32, 2000, 2e-4)
    assert (request.number_of_frames, request.frame_rate) == (89, 24)
    assert (request.resolution, request.aspect_ratio, request.bucket) == ("medium", "1:1", (768, 768))
    assert request.audio_normalize and request.audio_preserve_pitch and not request.auto_scale_input
    assert (request.validation_resolution, request.stg_scale, request.validation) == ("high", 1.0, ())
    assert request.split_input_duration_threshold == 30.0 and not request.debug_dataset


@pytest.mark.parametrize("frames, snapped", [(96, 89), (89, 89), (9, 9), (16, 9), (121, 121), (120, 113)])
def test_frames_snap_down_to_8k_plus_1(frames, snapped):
    request = TrainRequest(training_data_url=URL, number_of_frames=frames, validation_number_of_frames=frames)
    assert request.number_of_frames == snapped == request.validation_number_of_frames


@pytest.mark.parametrize(
    "resolution, aspect, bucket",
    [
        ("low", "16:9", (512, 288)),
        ("low", "9:16", (288, 512)),
        ("medium", "16:9", (768, 448)),
        ("high", "1:1", (960, 960)),
        ("high", "9:16", (544, 960)),
    ],
)
def test_buckets(resolution, aspect, bucket):
    request = TrainRequest(training_data_url=URL, resolution=resolution, aspect_ratio=aspect)
    assert request.bucket == bucket and all(side % 32 == 0 for side in bucket)


@pytest.mark.parametrize(
    "field, value",
    [
        ("rank", 12),
        ("number_of_steps", 99),
        ("number_of_steps", 20001),
        ("number_of_frames", 8),
        ("number_of_frames", 122),
        ("frame_rate", 61),
        ("resolution", "ultra"),
        ("aspect_ratio", "4:3"),
        ("stg_scale", 3.5),
        ("split_input_duration_threshold", 0.5),
        ("model", "sdxl"),
        ("unknown_field", 1),
    ],
)
def test_out_of_range_is_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as caught:
        TrainRequest(training_data_url=URL, **{field: value})
    assert field in str(caught.value)


@pytest.mark.parametrize("split", [True, 1, "true", "on"])
def test_scene_split_refused_with_reason(split):
    with pytest.raises(ValidationError, match="desync"):
        TrainRequest(training_data_url=URL, split_input_into_scenes=split)


@pytest.mark.parametrize("split", [False, 0, "false", "off"])
def test_scene_split_off_is_taken_however_it_is_written(split):
    assert TrainRequest(training_data_url=URL, split_input_into_scenes=split).split_input_into_scenes is False


def test_at_most_two_validation_samples():
    sample = {"prompt": "p", "video_url": "a.mp4", "mask_url": "m.png", "reference_video_url": "r.mp4"}
    assert len(TrainRequest(training_data_url=URL, validation=[sample, sample]).validation) == 2
    with pytest.raises(ValidationError, match="validation"):
        TrainRequest(training_data_url=URL, validation=[sample] * 3)


def test_frozen_and_every_field_described():
    request = TrainRequest(training_data_url=URL)
    with pytest.raises(ValidationError):
        request.rank = 8
    for name, info in TrainRequest.model_fields.items():
        assert info.description and info.title, name


def test_readme_documents_every_parameter():
    from pathlib import Path

    from lib.core.config import parameter_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in TrainRequest.model_fields if f"| `{name}`" not in readme]
    assert missing == []
    assert parameter_table() in readme, "README's parameter table differs from the request model's help"


def test_run_form_text_renders():
    """What Prefect's run form shows: no angle brackets (stripped as HTML), no jargon in titles,
    every numeric range stated in the help, and no optional-None toggle where a default exists."""
    schema = TrainRequest.model_json_schema()
    for name, prop in schema["properties"].items():
        assert "<" not in prop.get("description", "") and ">" not in prop.get("description", ""), name
        assert "extension" not in prop.get("title", "").lower(), name
        assert "anyOf" not in prop or name == "validation", (name, prop)  # no `str | None` toggles
        if {"minimum", "maximum", "exclusiveMinimum"} & set(prop):
            assert "Range:" in prop["description"], name
    sample = schema["$defs"]["ValidationSample"]["properties"]
    assert all("anyOf" not in prop for prop in sample.values())
    assert [prop["title"] for prop in sample.values()] == [
        "Prompt",
        "Source video URL",
        "Mask URL",
        "Reference video URL",
        "Reference audio URL",
    ]
    # help in the user's words: which fields are ours is for the README, not the form
    assert not [name for name, prop in schema["properties"].items() if "to the spec" in prop["description"].lower()]
    assert schema["properties"]["seed"]["extension"] is True and "extension" not in schema["properties"]["rank"]
    assert list(schema["properties"])[:5] == [
        "training_data_url",
        "trigger_phrase",
        "model",
        "model_source",
        "output_url",
    ]  # a trial run's first choices come first


def test_a_location_whose_package_is_missing_is_refused_naming_the_extra(monkeypatch):
    import importlib.util

    from lib.core import config

    real = importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None if name == "gcsfs" else real(name))
    with pytest.raises(
        ValidationError,
        match=r"gs:// needs the gcsfs package on this machine: "
        r"pip install 'av2av-trainer\[gcs\]'",
    ):
        TrainRequest(training_data_url="x.zip", output_url="gs://bucket/loras")

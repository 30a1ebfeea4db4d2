"""`av2av sample` + `av2av train` + `av2av generate` on the tiny model, in-process: the generated
mp4 (one video and one audio stream, the requested frames and size), the kept region faithful to
the source, bit-identical reruns, and with an fp32 LoRA file exactly the training run's final
validation sample (one sampler, not two)."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from flows.cli import main
from lib.core.cache import Cache
from lib.core.generate import GenerateRequest
from lib.core.storage import sha256_file
from lib.ingest.generate_inputs import prepare_inputs
from tests.training_fixtures import torch_threads

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEPT_PSNR_DB, ERODE_PX = 35.0, 8


@pytest.fixture
def rendered(monkeypatch) -> list[np.ndarray]:
    """The generated frames of every sample rendered (validation reels and generations alike),
    before any video encoding."""
    import lib.validate.generate
    import lib.validate.preview

    frames, real = [], lib.validate.preview.render_sample

    def recording(*args, **kwargs):
        sample = real(*args, **kwargs)
        frames.append(sample["generated"])
        return sample

    monkeypatch.setattr(lib.validate.preview, "render_sample", recording)
    monkeypatch.setattr(lib.validate.generate, "render_sample", recording)
    return frames


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


@pytest.mark.slow
def test_sample_train_generate(tmp_path, rendered, capsys):
    assert main(["sample", str(tmp_path / "demo")]) == 0
    request = json.loads((tmp_path / "demo" / "request.json").read_text())
    request |= {"lora_dtype": "fp32", "output_url": str(tmp_path / "run")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    sample = request["validation"][0]
    generate = {
        "lora_url": str(tmp_path / "run" / "lora.safetensors"),
        "model": "tiny",
        **sample,
        "number_of_frames": request["validation_number_of_frames"],
        "resolution": "low",
        "aspect_ratio": "16:9",
        "steps": request["validation_steps"],
        "seed": request["seed"] if "seed" in request else 0,
    }
    with torch_threads(1):
        assert main(["train", "--config", str(tmp_path / "request.json")]) == 0
        validation = rendered[-1]  # the training run's final validation sample
        for run in ("first", "second"):
            (tmp_path / f"{run}.json").write_text(json.dumps(generate | {"output_url": str(tmp_path / run)}))
            assert main(["generate", "--config", str(tmp_path / f"{run}.json")]) == 0, capsys.readouterr().err
    first = tmp_path / "first"
    result = json.loads((first / "result.json").read_text())
    assert set(result["outputs"]) == {"generated.mp4", "preview.mp4"}
    assert result["lora"]["sha256"] == sha256_file(tmp_path / "run" / "lora.safetensors")
    assert result["conventions"] == {
        "reference_audio_positions": "aligned",
        "reference_downscale_factor": 1,
        "trigger_phrase": "repl4ce",
        "read_from": "metadata",
    }
    assert result["settings"]["steps"] == 8 and result["prompt_used"] == sample["prompt"]

    frames = _frames(first / "generated.mp4")
    assert len(frames) == 17 and frames[0].shape == (288, 512, 3)
    preview = _frames(first / "preview.mp4")
    assert len(preview) == 17 and preview[0].shape == (288, 4 * 512, 3)  # source · mask · reference · generated

    clip = prepare_inputs(GenerateRequest(**generate), sample["prompt"], Cache.current())  # the cached conform
    from safetensors.numpy import load_file

    conformed = load_file(clip.path)
    kept = binary_erosion(~conformed["mask"][0], iterations=ERODE_PX)
    psnr = _psnr(frames[0][kept], conformed["target"][0][kept])
    print(f"\nkept region PSNR, frame 0, mask eroded by {ERODE_PX} px: {psnr:.2f} dB")
    assert kept.mean() > 0.3 and psnr >= KEPT_PSNR_DB

    assert sha256_file(first / "generated.mp4") == sha256_file(tmp_path / "second" / "generated.mp4")
    assert np.array_equal(rendered[-1], rendered[-2]), "the same seed gives the same clip"
    assert np.array_equal(rendered[-2], validation), "an fp32 LoRA file generates the final validation sample"

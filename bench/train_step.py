"""Training-step benchmark on the tiny preset. Prints one JSON object as its last line:

- step_over_bare: a full training step (draw an example from the latent cache, sigma + noise,
  conditioning and masking, forward, masked loss, backward, clip, AdamW, LR schedule) divided by
  a bare transformer forward + backward + AdamW step on the same, pre-built tensors. Goal <= 1.15.
- cache_hit_over_encode: returning cached latents for a clip divided by encoding it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.core.cache import Cache  # noqa: E402
from lib.core.settings import ConditioningSettings  # noqa: E402
from lib.core.storage import FileRef  # noqa: E402
from lib.ingest.conform import ConformSettings, check_triplet, conform_triplet  # noqa: E402
from lib.ingest.dataset import Triplet  # noqa: E402
from lib.media.synthetic import make_box_mask, make_clip  # noqa: E402
from lib.model import build_tiny  # noqa: E402
from lib.model.conditioning import build_inputs  # noqa: E402
from lib.model.encoding import encode_clip, load_example  # noqa: E402
from lib.train.training import TrainSettings, setup, step  # noqa: E402

# encode_clip's default keeps the reference at the target's size; the reference audio is aligned
SAME_SIZE_ALIGNED = ConditioningSettings(reference_audio_positions="aligned", reference_downscale=1)

STEPS = 60


def conformed_clip(scratch: Path) -> FileRef:
    start = make_clip(scratch / "a_start.mp4", 1.0, seed=1)
    end = make_clip(scratch / "a_end.mp4", 1.0, seed=2)
    mask = make_box_mask(scratch / "a_mask.png", (320, 180), (0.25, 0.25, 0.75, 0.75))
    triplet = Triplet(name="a", start=FileRef.of(start), end=FileRef.of(end), mask=FileRef.of(mask))
    settings = ConformSettings(
        number_of_frames=17,
        frame_rate=24,
        width=512,
        height=288,
        auto_scale_input=False,
        audio_normalize=True,
        audio_preserve_pitch=True,
    )
    return conform_triplet(triplet, check_triplet(triplet), settings, Cache.at(scratch)).clip


def per_step(run, steps: int = STEPS) -> float:
    for _ in range(5):
        run()
    began = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - began) / steps


def main() -> None:
    torch.set_num_threads(1)  # a stable, noise-free comparison on a shared 2-core box
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip = conformed_clip(scratch)
        components = build_tiny()
        began = time.perf_counter()
        latents_file = encode_clip(components, clip, Cache.at(scratch))
        encode_s = time.perf_counter() - began
        hit_s = min(_timed(lambda: encode_clip(components, clip, Cache.at(scratch))) for _ in range(5))
        examples = [load_example(latents_file.path)]

        transformer = components.transformer
        trainer = setup(
            transformer, TrainSettings(rank=32, steps=10_000, learning_rate=1e-4), conditioning=SAME_SIZE_ALIGNED
        )
        optimizer = trainer.optimizer

        def full_step():
            step(trainer, examples)  # the loop's own step: draw, condition, forward, loss, backward, AdamW

        example = examples[0]
        fixed = build_inputs(
            transformer,
            example,
            torch.tensor(0.5),
            torch.tensor(0.5),
            torch.randn(example.video_mask.numel(), example.target_video.shape[0]),
            torch.randn(example.target_audio.shape[1], example.target_audio.shape[0] * example.target_audio.shape[2]),
            conditioning=SAME_SIZE_ALIGNED,
        )

        def bare_step():
            video, audio = transformer(**fixed.kwargs)
            (video.float().pow(2).mean() + audio.float().pow(2).mean()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        full_s, bare_s = per_step(full_step), per_step(bare_step)
    print(
        json.dumps(
            {
                "full_step_ms": round(full_s * 1e3, 2),
                "bare_step_ms": round(bare_s * 1e3, 2),
                "step_over_bare": round(full_s / bare_s, 3),
                "goal_step_over_bare": 1.15,
                "encode_ms": round(encode_s * 1e3, 1),
                "cache_hit_ms": round(hit_s * 1e3, 3),
                "cache_hit_over_encode": round(hit_s / encode_s, 5),
                "video_tokens": 2 * example.video_mask.numel(),
                "steps_timed": STEPS,
            }
        )
    )


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


if __name__ == "__main__":
    main()

"""`generate` end to end, on the stack of tests/e2e_stack.py: started through the REST API as the
README shows, the CPU flow hands the heavy half to `generate-gpu` on the `gpu` pool, the two
workers share only the bucket, and the outputs are listed in result.json at output_url."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e_helpers import BUCKET
from tests.e2e_stack import FAILING_RUN_S

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
GENERATE_RUN_S = 420


def _serve_lora(stack) -> str:
    """A tiny-model LoRA as a training run writes it (lib/train/lora_io.save_lora), served over HTTP."""
    from lib.core.plan import base_model_name
    from lib.model import build_tiny
    from lib.train.lora_io import add_lora, save_lora

    components = build_tiny()
    add_lora(components.transformer, 8, seed=0)
    info = {
        "base_model": base_model_name("tiny"),
        "trigger_phrase": "repl4ce",
        "reference_audio_positions": "aligned",
        "reference_downscale": 1,
        "base_precision": "bf16",
    }
    save_lora(components.transformer, stack.served / "lora.safetensors", 8, info)
    return f"{stack.base_url}/lora.safetensors"


def test_generate_runs_on_both_pools_and_lists_its_outputs(stack):
    generate = stack.deployment("generate", "generate")
    assert generate["work_pool_name"] == "cpu" and generate["enforce_parameter_schema"]
    assert stack.deployment("generate-gpu", "generate-gpu")["work_pool_name"] == "gpu"
    request = {
        "lora_url": _serve_lora(stack),
        "model": "tiny",
        "prompt": "the square",
        "video_url": f"{stack.base_url}/val_source.mp4",
        "mask_url": f"{stack.base_url}/val_mask.png",
        "reference_video_url": f"{stack.base_url}/val_reference.mp4",
        "number_of_frames": 9,
        "resolution": "low",
        "aspect_ratio": "16:9",
        "steps": 2,
        "output_url": f"s3://{BUCKET}/generated/one",
    }
    assert stack.create_flow_run(generate["id"], {"request": request | {"steps": 1}}).status_code == 409
    started = time.monotonic()
    response = stack.create_flow_run(generate["id"], {"request": request})
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], GENERATE_RUN_S)
    print(f"\n[e2e] generate run {run['name']}: {run['state_type']} after {time.monotonic() - started:.1f}s")
    assert run["state_type"] == "COMPLETED", stack.describe(run)

    stack.s3.invalidate_cache()
    result = json.loads(stack.s3.cat_file(f"{BUCKET}/generated/one/result.json"))
    assert set(result["outputs"]) == {"generated.mp4", "preview.mp4"}
    assert result["prompt_used"] == "repl4ce the square" and result["frames"] == 9
    for name, info in result["outputs"].items():
        assert info["url"] == f"s3://{BUCKET}/generated/one/{name}" and stack.s3.size(info["url"]) == info["size"]
    gpu_runs = stack.flow_runs(flow_runs={"name": {"any_": [f"{run['name']}-gpu"]}})
    assert [(r["state_type"], r["work_pool_name"]) for r in gpu_runs] == [("COMPLETED", "gpu")]
    assert gpu_runs[0]["parameters"]["lora"]["entry"].startswith("runs/"), "the LoRA crossed through the bucket"
    artifacts = {
        a["key"]: a
        for a in stack.client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        ).json()
    }
    assert artifacts["generate-progress"]["data"] == 100.0
    assert artifacts["generate-outputs"]["data"].count("](data:image/webp;base64,") == 1
    assert "denoising: 2/2 step" in stack.flow_run_logs(run["id"], limit=200)
    assert not stack.bucket_entries("runs"), "the staging area is removed after the upload"


def test_a_lora_of_another_width_fails_invalid_request(stack, tmp_path):
    import torch
    from safetensors.torch import save_file

    key = "diffusion_model.transformer_blocks.0.attn1.to_q"
    save_file(
        {f"{key}.lora_A.weight": torch.zeros(8, 64), f"{key}.lora_B.weight": torch.zeros(64, 8)},
        str(stack.served / "wide.safetensors"),
    )
    generate = stack.deployment("generate", "generate")
    response = stack.create_flow_run(
        generate["id"],
        {
            "request": {
                "lora_url": f"{stack.base_url}/wide.safetensors",
                "model": "tiny",
                "video_url": f"{stack.base_url}/val_source.mp4",
                "mask_url": f"{stack.base_url}/val_mask.png",
                "reference_video_url": f"{stack.base_url}/val_reference.mp4",
                "output_url": str(tmp_path / "out"),
            }
        },
    )
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], FAILING_RUN_S)
    assert run["state_type"] == "FAILED" and run["state_name"] == "InvalidRequest", stack.describe(run)
    assert run["state"]["message"].startswith("lora_url: ") and "64-wide" in run["state"]["message"]
    assert not (tmp_path / "out").exists()

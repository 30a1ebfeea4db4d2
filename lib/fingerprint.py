"""What makes two training runs the same: the dataset's content and every parameter that shapes
the LoRA. Scheduled retraining skips a run whose fingerprint matches the last successful one."""
from __future__ import annotations

import hashlib
import json

from lib.config import TrainRequest

# Where the outputs go and where training resumes from do not change what is learned.
NOT_SHAPING = {"output_url", "resume_from", "training_data_url"}


def parameters_key(request: TrainRequest) -> str:
    """Stable per schedule: the parameters, minus the dataset URL's content (compared separately)."""
    shaping = request.model_dump(mode="json", exclude=NOT_SHAPING)
    payload = json.dumps({"url": request.training_data_url, "parameters": shaping}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def run_fingerprint(request: TrainRequest, dataset_sha256: str) -> str:
    return hashlib.sha256(f"{parameters_key(request)}:{dataset_sha256}".encode()).hexdigest()

"""Batch retraining manifests: many LoRAs, one file. A manifest (YAML or JSON) lists entries
`{name, request}`; `defaults` are applied under every entry's request, and each entry's outputs go
to `<output_url>/<name>`. Every entry is validated on its own: a bad one is reported and skipped,
the others still run.

    output_url: s3://studio-loras/nightly
    defaults: {rank: 32, number_of_steps: 2000, trigger_phrase: repl4ce}
    entries:
      - name: voice-anna
        request: {training_data_url: "s3://studio-data/anna.zip"}
      - name: smoke-fx
        request: {training_data_url: "https://example.com/smoke.zip", rank: 16}
"""

from __future__ import annotations

import json
import posixpath
from datetime import datetime, timezone
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lib.core.config import TrainRequest
from lib.core.errors import InvalidRequest
from lib.core.redact import redact_json, redact_text

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class BatchEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Names the LoRA, its output folder and its runs.")
    request: dict[str, Any] = Field(default_factory=dict, description="train-lora's request fields.")


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    output_url: str = Field("", description="Each entry's outputs go to <output_url>/<name>.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Request fields for every entry.")
    entries: list[BatchEntry] = Field(min_length=1)


class ResolvedEntry(BaseModel):
    """One entry with the defaults applied and validated: its request, or why it cannot run."""

    model_config = ConfigDict(frozen=True)

    name: str
    request: TrainRequest | None = None
    problem: str = ""


def _explain(error: ValidationError) -> str:
    return redact_text(
        "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']} (got {e.get('input')!r})" for e in error.errors()
        )
    )


def parse_manifest(text: str, source: str) -> Manifest:
    """YAML (JSON is YAML too) -> Manifest; InvalidRequest naming `source` and the rule broken."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidRequest(f"manifest {source}: not valid YAML or JSON ({error}).") from error
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as error:
        raise InvalidRequest(f"manifest {source}: {_explain(error)}") from error
    names = [entry.name for entry in manifest.entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequest(f"manifest {source}: entry names must be unique; repeated: {', '.join(duplicates)}")
    return manifest


def resolve_entries(manifest: Manifest) -> list[ResolvedEntry]:
    """Every entry's request = defaults, then its own fields, then its output folder."""
    resolved = []
    for entry in manifest.entries:
        fields = manifest.defaults | entry.request
        if manifest.output_url and "output_url" not in entry.request:
            fields["output_url"] = posixpath.join(manifest.output_url.rstrip("/"), entry.name)
        try:
            resolved.append(ResolvedEntry(name=entry.name, request=TrainRequest.model_validate(fields)))
        except ValidationError as error:
            resolved.append(ResolvedEntry(name=entry.name, problem=_explain(error)))
    return resolved


def child_run_name(prefix: str, name: str, now: datetime | None = None) -> str:
    """`nightly-<entry>-<date>`: the entry's train-lora run, findable by name in the UI."""
    return f"{prefix}-{name}-{(now or datetime.now(timezone.utc)):%Y-%m-%d}"


class EntryOutcome(BaseModel):
    """One row of the batch summary."""

    model_config = ConfigDict(frozen=True)

    entry: str
    status: str  # trained | skipped-unchanged | invalid | failed
    child_run: str = ""
    billing_units: int = 0
    output: str = ""
    seconds: float = 0.0
    message: str = ""


def one_line(message: str) -> str:
    """A message for a table cell or a log line: every line of it, joined (nothing cut off)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def child_started(entry: str, run_name: str) -> str:
    return f"{entry}: train-lora run {run_name} started"


def child_ended(entry: str, run_name: str, state_name: str, completed: bool, seconds: float, message: str = "") -> str:
    """`voice-anna: train-lora run nightly-voice-anna-2026-12-03 Completed in 4.2 min`, or
    `... Failed: <the state's whole message>`."""
    if completed:
        return f"{entry}: train-lora run {run_name} {state_name} in {seconds / 60:.1f} min"
    return redact_text(f"{entry}: train-lora run {run_name} {state_name}: {one_line(message) or 'no message'}")


def still_running(running: dict[str, str], seconds: float) -> str:
    """The periodic line while children train: `{entry: run name}` of those not finished yet."""
    names = ", ".join(f"{entry} ({run})" for entry, run in running.items())
    return f"{len(running)} train-lora run(s) still running after {seconds / 60:.1f} min: {names}"


def summary_rows(outcomes: list[EntryOutcome]) -> list[dict]:
    return [redact_json(json.loads(outcome.model_dump_json())) for outcome in outcomes]


def failed_message(outcomes: list[EntryOutcome]) -> str:
    """The batch run's failure message: every entry that neither trained nor was skipped."""
    bad = [o for o in outcomes if o.status in ("invalid", "failed")]
    lines = [f"{len(bad)} of {len(outcomes)} entries did not train:"]
    lines += [f"- {o.entry}: {o.status}: {o.message}" for o in bad]
    return redact_text("\n".join(lines))

"""What both CLI front ends (flows/cli.py, flows/cli_generate.py) share: exit statuses, reading a
--config request, and saying a refusal or a bad request in the user's words."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ValidationError

from lib.core.errors import REFUSALS
from lib.core.redact import redact_text

# 0 success; 2 the request, the dataset or the model's weights are unusable; 1 anything else.
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def explain(error: ValidationError) -> str:
    """A bad request's problems, one line per field, URLs redacted."""
    return redact_text(
        "\n".join(
            f"- {'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']} (got {e.get('input')!r})"
            for e in error.errors()
        )
    )


def refusal_of(error: BaseException) -> tuple[int, str] | None:
    """An expected refusal -> (exit status, the one line to print, URLs redacted); None for a real bug.
    Each refusal declares both on its class (lib/core/errors.py)."""
    if isinstance(error, REFUSALS):
        return error.exit_status, redact_text(error.refusal_line())
    return None


def read_config(path: str, model: type[BaseModel], label: str):
    """The `model` request in --config, or the exit status after saying why it cannot be used."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        print(f"Cannot read --config {path}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        print(f"Invalid {label} in {path}:\n{explain(error)}", file=sys.stderr)
        return EXIT_INVALID

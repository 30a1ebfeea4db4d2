"""`av2av generate --config generate.json` and `av2av plan --config generate.json`: the generate
flow locally (no server needed) and its memory plan. A LoRA that cannot work is refused before the
flow (and Prefect) starts, in seconds; the flow checks it again for runs started elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.cli_common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, read_config, refusal_of
from lib.core.errors import REFUSAL_STATE_NAMES, Av2AvError
from lib.core.generate import GenerateRequest
from lib.core.redact import redact_text, redact_url


def add_parser(commands) -> None:
    generate = commands.add_parser(
        "generate", help="Apply a trained LoRA to a source video, a mask and a reference (the generate flow, locally)."
    )
    generate.add_argument(
        "--config",
        required=True,
        metavar="generate.json",
        help="A JSON object with the generate parameters (see README, 'Use your LoRA').",
    )


def is_generate_config(path: str) -> bool:
    """A plan request for a generation: its JSON names a LoRA."""
    try:
        return "lora_url" in json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_request(path: str) -> GenerateRequest | int:
    return read_config(path, GenerateRequest, "generate request")


def read_lora(request: GenerateRequest):
    """Fetch lora_url and read its conventions, without Prefect (what `generate` refuses first)."""
    from lib.core.cache import Cache
    from lib.core.generate import refuse_contradictions
    from lib.core.storage import fetch_with_retries
    from lib.train.lora_file import open_lora

    shown = redact_url(request.lora_url)
    downloads = Path(Cache.current().local) / "downloads"
    _, lora = open_lora(request.lora_url, downloads, request.model, fetch_with_retries, shown)
    refuse_contradictions(request, lora, shown)
    return lora


def run_generate(args: argparse.Namespace) -> int:
    request = read_request(args.config)
    if isinstance(request, int):
        return request
    try:
        read_lora(request)
    except Av2AvError as error:
        return _refuse(error)
    state = _run_flow(request)
    if isinstance(state, int):
        return state
    if state.is_completed():
        print(json.dumps(state.result(), indent=2))
        return EXIT_OK
    error = state.result(raise_on_failure=False)
    if isinstance(error, Av2AvError) and refusal_of(error) is not None:
        return _refuse(error)
    print(redact_text(f"Failed ({state.name}): {state.message}"), file=sys.stderr)
    return EXIT_FAILED


def _run_flow(request: GenerateRequest):
    """The generate flow on its own temporary Prefect server, stopped cleanly on Ctrl-C or SIGTERM
    (as `av2av train` runs train-lora); an int is the exit status when it could not run."""
    from flows.cli_stop import exit_now, quiet_console, stop_signal, stop_signals
    from flows.local_server import ServerStartFailed, local_server

    try:
        with stop_signals(), local_server():
            from flows.generate import generate

            with quiet_console(REFUSAL_STATE_NAMES):
                return generate(request, return_state=True)
    except ServerStartFailed as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILED
    except BaseException as error:
        signum = stop_signal(error)
        if signum is None:
            raise
        print(stop_line(), file=sys.stderr)
        exit_now(128 + signum)


def stop_line() -> str:
    from lib.core.progress import LATEST

    done, total = LATEST.get("denoising", (0, 0))
    where = f"at denoising step {done} of {total}" if done else "before denoising"
    return f"Interrupted {where}. Nothing was uploaded."


def _refuse(error: Av2AvError) -> int:
    found = refusal_of(error)
    if found is None:
        raise error
    print(found[1], file=sys.stderr)
    return found[0]


def run_plan(args: argparse.Namespace) -> int:
    """The generation's memory plan: the LoRA's rank and reference downscale come from its file."""
    from lib.train.memory_plan import declared_gpu_memory
    from lib.validate.inference_memory import format_generate_plan, plan_generate_memory

    request = read_request(args.config)
    if isinstance(request, int):
        return request
    try:
        lora = read_lora(request)
        gpu_memory = args.gpu_memory if args.gpu_memory is not None else declared_gpu_memory()
    except Av2AvError as error:
        return _refuse(error)
    plan = plan_generate_memory(
        request, lora.rank, lora.reference_downscale, "cuda" if request.model != "tiny" else "cpu", gpu_memory
    )
    print(
        json.dumps(plan.as_dict())
        if args.json
        else format_generate_plan(plan, request, lora.rank, lora.reference_downscale)
    )
    return EXIT_OK if plan.fits else EXIT_INVALID

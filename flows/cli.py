"""`av2av`: run the same flows locally, no server needed.

    av2av check <zip or URL> [--frames N --fps F --resolution R --aspect-ratio A
                 --auto-scale-input --debug-dataset OUT.zip --report report.json]
    av2av train --config request.json
    av2av plan --config request.json [--gpu-memory GB] [--json]
    av2av sample DIR
    av2av generate --config generate.json      (flows/cli_generate.py; `plan` takes a generate.json too)

Flags take their help, defaults and choices from the request model (lib/core/config.py). `check` runs
the dataset stage without Prefect (no server, no model libraries), so it starts in about a second.
Expected refusals print one line per problem, never a traceback. Exit status: 0 success; 2 the
request, the dataset or the model's weights are unusable (nothing qualifies, a bad parameter,
ModelUnavailable); 1 a download or upload failed, or anything else went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from pathlib import Path

from pydantic import ValidationError

from flows.cli_common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, explain, read_config, refusal_of
from flows.serve import quiet_telemetry
from lib.core.config import TrainRequest
from lib.core.errors import REFUSAL_STATE_NAMES, Av2AvError, InvalidDataset, InvalidRequest
from lib.core.progress import MODE_ENV
from lib.core.redact import redact_text, redact_url

CHECK_FLAGS = {  # flag -> request field
    "--frames": "number_of_frames",
    "--fps": "frame_rate",
    "--resolution": "resolution",
    "--aspect-ratio": "aspect_ratio",
    "--auto-scale-input": "auto_scale_input",
    "--trigger-phrase": "trigger_phrase",
}


def _add_field_flag(parser: argparse.ArgumentParser, flag: str, field_name: str) -> None:
    info = TrainRequest.model_fields[field_name]
    # argparse %-formats help strings: a literal % (e.g. "frames % 8") must be doubled
    help_text = f"{info.description} (default: {info.default})".replace("%", "%%")
    if info.annotation is bool:
        parser.add_argument(flag, dest=field_name, action="store_true", default=None, help=help_text)
        return
    choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
    kind = type(choices[0]) if choices else info.annotation
    parser.add_argument(flag, dest=field_name, type=kind, choices=choices, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="av2av", description="Masked audio+video LoRA trainer for LTX-2.3.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="Check a dataset zip and print the per-triplet report.")
    check.add_argument("training_data_url", help=TrainRequest.model_fields["training_data_url"].description)
    for flag, field_name in CHECK_FLAGS.items():
        _add_field_flag(check, flag, field_name)
    check.add_argument("--debug-dataset", metavar="OUT.zip", help="Write an archive of the conformed data here.")
    check.add_argument("--report", metavar="report.json", help="Write the report as JSON here.")
    train = commands.add_parser("train", help="Run the whole train-lora flow locally from a request JSON.")
    train.add_argument(
        "--config",
        required=True,
        metavar="request.json",
        help="A JSON object with the request parameters (see README).",
    )
    train.add_argument("--json", action="store_true", help="End with result.json's full document instead of a summary.")
    plan = commands.add_parser(
        "plan", help="Print the GPU memory a request needs, per part and stage; exit 2 if it does not fit --gpu-memory."
    )
    plan.add_argument("--config", required=True, metavar="request.json", help="The request JSON (see README).")
    plan.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GB",
        help="GPU memory to check against (default: $AV2AV_GPU_MEMORY_GB, else this machine's GPU).",
    )
    plan.add_argument("--json", action="store_true", help="Print the plan as one JSON object.")
    from flows import cli_generate

    cli_generate.add_parser(commands)
    sample = commands.add_parser(
        "sample",
        help="Write a synthetic sample dataset (the layout to follow), "
        "a validation sample and a request.json for the tiny model.",
    )
    sample.add_argument("folder", help="Folder to write into.")
    return parser


def _request(args: argparse.Namespace) -> TrainRequest:
    fields = {name: getattr(args, name) for name in CHECK_FLAGS.values() if getattr(args, name) is not None}
    return TrainRequest(training_data_url=args.training_data_url, **fields)


def run_check(args: argparse.Namespace) -> int:
    request = _request(args)
    print(f"Checking {redact_url(request.training_data_url)} ...", file=sys.stderr, flush=True)
    from flows.prepare import local_operations, prepare_dataset  # no Prefect: nothing to start, nothing to log
    from lib.core.cache import Cache, check_cache_location
    from lib.ingest.report import render_text

    try:
        cache = Cache.current()
        check_cache_location(cache)
        document = prepare_dataset(
            request,
            report_path=args.report,
            debug_dataset_path=args.debug_dataset,
            operations=local_operations(),
            cache=cache,
        ).report
    except Av2AvError as error:
        refusal = refusal_of(error)
        if refusal is None:
            raise
        if isinstance(error, InvalidDataset) and error.report.get("triplets"):  # a table only when it has rows
            print(render_text(error.report))
        print(refusal[1], file=sys.stderr)
        return refusal[0]
    print(render_text(document))
    for label, path in (("debug dataset", args.debug_dataset), ("report", args.report)):
        if path:
            print(f"{label}: {path}")
    return EXIT_OK


def _read_request(path: str) -> TrainRequest | int:
    return read_config(path, TrainRequest, "request")


def run_plan(args: argparse.Namespace) -> int:
    from flows import cli_generate
    from lib.train.memory_plan import declared_gpu_memory, format_plan, plan_memory

    if cli_generate.is_generate_config(args.config):  # a generate request: the inference plan
        return cli_generate.run_plan(args)
    request = _read_request(args.config)
    if isinstance(request, int):
        return request
    try:
        gpu_memory = args.gpu_memory if args.gpu_memory is not None else declared_gpu_memory()
    except InvalidRequest as error:
        print(error.refusal_line(), file=sys.stderr)
        return EXIT_INVALID
    plan = plan_memory(request, "cuda" if request.model != "tiny" else "cpu", gpu_memory)
    print(json.dumps(plan.as_dict()) if args.json else format_plan(plan, request))
    return EXIT_OK if plan.fits else EXIT_INVALID


def run_train(args: argparse.Namespace) -> int:
    request = _read_request(args.config)
    if isinstance(request, int):
        return request
    if request.resume_from and not Path(request.resume_from).is_file():  # before Prefect (and torch) start
        print(f"Invalid request: resume_from: no checkpoint file at {request.resume_from}.", file=sys.stderr)
        return EXIT_INVALID
    from flows.cli_stop import exit_now, quiet_console, started, stop_line, stop_signal, stop_signals
    from flows.local_server import ServerStartFailed, local_server

    began = started()
    try:
        with stop_signals(), local_server():
            from flows.train_lora import train_lora

            with quiet_console(REFUSAL_STATE_NAMES):
                state = train_lora(request, return_state=True)
    except ServerStartFailed as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILED
    except BaseException as error:
        signum = stop_signal(error)
        if signum is None:
            raise
        print(stop_line(began), file=sys.stderr)
        exit_now(128 + signum)
    return _train_outcome(state, args.json, time.time() - began)


def _summary(result: dict, seconds: float) -> str:
    """What a person reads at the end of `av2av train`: the run in one line, then each output."""
    if "outputs" not in result:  # skipped: unchanged since the last success
        return str(result)
    head = (
        f"Trained {result['steps']} steps on {result['accepted_triplets']} triplet(s) in {seconds / 60:.1f} min, "
        f"final loss {result['final_loss']:.4f}."
    )
    width = max(len(name) for name in result["outputs"])
    rows = [f"  {name:<{width}}  {info['url']}" for name, info in result["outputs"].items()]
    folder = str(Path(next(iter(result["outputs"].values()))["url"]).parent)
    return "\n".join([head, f"Outputs in {folder} (result.json lists their sizes and sha256):", *rows])


def _train_outcome(state, as_json: bool, seconds: float) -> int:
    if state.is_completed():
        result = state.result()
        print(json.dumps(result, indent=2) if as_json else _summary(result, seconds))
        return EXIT_OK
    from lib.ingest.report import render_text

    error = state.result(raise_on_failure=False)
    refusal = refusal_of(error) if isinstance(error, BaseException) else None
    if refusal is None:
        print(redact_text(f"Failed ({state.name}): {state.message}"), file=sys.stderr)
        return EXIT_FAILED
    if isinstance(error, InvalidDataset) and error.report.get("triplets"):  # a table only when it has rows
        print(render_text(error.report))
    print(refusal[1], file=sys.stderr)
    return refusal[0]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The local ephemeral API's telemetry write would also race its own startup on SQLite
    # ("database is locked").
    quiet_telemetry()
    # A live bar on a terminal, plain progress lines when piped (lib/core/progress.py); for this command
    # only, so an in-process caller (a test, a notebook) keeps its own setting afterwards.
    previous = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = previous or ("bar" if sys.stderr.isatty() else "lines")
    try:
        return _command(argv)
    finally:
        if previous is None:
            os.environ.pop(MODE_ENV, None)


def _command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args)
        if args.command == "train":
            return run_train(args)
        if args.command == "generate":
            from flows import cli_generate

            return cli_generate.run_generate(args)
        if args.command == "plan":
            return run_plan(args)
        if args.command == "sample":
            from lib.media.synthetic import make_demo

            for name, path in make_demo(Path(args.folder)).items():
                print(f"{name}: {path}")
            return EXIT_OK
    except ValidationError as error:
        print(f"Invalid request:\n{explain(error)}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())

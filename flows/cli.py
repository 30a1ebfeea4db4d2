"""`av2av`: run the same flows locally, no server needed.

    av2av check <zip or URL> [--frames N --fps F --resolution R --aspect-ratio A
                 --auto-scale-input --debug-dataset OUT.zip --report report.json]

Flags take their help, defaults and choices from the request model (lib/config.py).
Exit status: 0 at least one triplet qualifies, 2 none does / the request is invalid / the model's
weights cannot be found, 1 download error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from lib.config import TrainRequest
from lib.errors import ArchiveError, Av2AvError, DownloadError, InvalidDataset, ModelUnavailable
from lib.report import render_text

CHECK_FLAGS = {  # flag -> request field
    "--frames": "number_of_frames",
    "--fps": "frame_rate",
    "--resolution": "resolution",
    "--aspect-ratio": "aspect_ratio",
    "--auto-scale-input": "auto_scale_input",
    "--trigger-phrase": "trigger_phrase",
}
EXIT_OK, EXIT_DOWNLOAD, EXIT_INVALID = 0, 1, 2


def _add_field_flag(parser: argparse.ArgumentParser, flag: str, field_name: str) -> None:
    info = TrainRequest.model_fields[field_name]
    help_text = f"{info.description} (default: {info.default})"
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
    train.add_argument("--config", required=True, metavar="request.json",
                       help="A JSON object with the request parameters (see README).")
    sample = commands.add_parser("sample", help="Write a synthetic sample dataset (the layout to follow), "
                                 "a validation sample and a request.json for the tiny model.")
    sample.add_argument("folder", help="Folder to write into.")
    return parser


def _request(args: argparse.Namespace) -> TrainRequest:
    fields = {name: getattr(args, name) for name in CHECK_FLAGS.values() if getattr(args, name) is not None}
    return TrainRequest(training_data_url=args.training_data_url, **fields)


def _explain(error: ValidationError) -> str:
    return "\n".join(f"- {'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']} (got {e.get('input')!r})"
                     for e in error.errors())


def _run_flow(run) -> int:
    """Run a flow; turn our errors into the exit codes and messages users act on."""
    try:
        result = run()
    except InvalidDataset as error:
        if error.report:
            print(render_text(error.report))
        print(error.message, file=sys.stderr)
        return EXIT_INVALID
    except ArchiveError as error:  # defensive: archive errors normally arrive as InvalidDataset
        print(f"Invalid dataset (422): {error.code}: {error.message}", file=sys.stderr)
        return EXIT_INVALID
    except ModelUnavailable as error:
        print(f"Model unavailable: {error.message}", file=sys.stderr)
        return EXIT_INVALID
    except DownloadError as error:  # uploads too (UploadError): the message says which
        print(error.message if "upload" in error.code else f"Download failed: {error.message}", file=sys.stderr)
        return EXIT_DOWNLOAD
    except Av2AvError as error:
        print(f"Failed: {error.message}", file=sys.stderr)
        return EXIT_DOWNLOAD
    return result


def run_check(args: argparse.Namespace) -> int:
    from flows.train_lora import check_dataset  # imports Prefect: only once the arguments are sound

    request = _request(args)

    def check() -> int:
        document = check_dataset(request, report_path=args.report, debug_dataset_path=args.debug_dataset)
        print(render_text(document))
        for label, path in (("debug dataset", args.debug_dataset), ("report", args.report)):
            if path:
                print(f"{label}: {path}")
        return EXIT_OK
    return _run_flow(check)


def run_train(args: argparse.Namespace) -> int:
    try:
        text = Path(args.config).read_text()
    except OSError as error:
        print(f"Cannot read --config {args.config}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID
    request = TrainRequest.model_validate_json(text)
    from flows.train_lora import train_lora

    def train() -> int:
        print(json.dumps(train_lora(request), indent=2))
        return EXIT_OK
    return _run_flow(train)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The local ephemeral API's telemetry write races its own startup on SQLite ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args)
        if args.command == "train":
            return run_train(args)
        if args.command == "sample":
            from lib.synthetic import make_demo

            for name, path in make_demo(Path(args.folder)).items():
                print(f"{name}: {path}")
            return EXIT_OK
    except ValidationError as error:
        print(f"Invalid request:\n{_explain(error)}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())

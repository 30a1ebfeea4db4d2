"""The outputs artifact of a run (a markdown page on the run): figures, inline previews (data URIs:
they show wherever the outputs went) and a table of the uploaded files, each a link only where the
link opens something (http(s), or a presigned URL for object storage)."""

from __future__ import annotations

import base64
from pathlib import Path

from lib.core.redact import redact_url


def outputs_markdown(result: dict, extra: dict, loss_plot: Path | None, previews: list[str], output_url: str) -> str:
    """A training run's outputs: its figures, the validation previews, the files, the loss curve."""
    metrics = "\n".join(
        f"- **{key}**: {_figure(key, value)}"
        for key, value in extra.items()
        if value is not None and not isinstance(value, (dict, list))
    )
    rows = "\n".join(
        [
            *(
                f"| {_file_cell(name, info['url'])} | {info['size']:,} | `{info['sha256'][:12]}` |"
                for name, info in result["outputs"].items()
            ),
            "| result.json | | this list, written last: its presence means the run is complete |",
        ]
    )
    sections = [
        f"# LoRA training outputs\n\n{metrics}\n\nSaved to `{redact_url(output_url)}`.",
        *[
            f"## Validation sample {index}\n\nsource · mask · reference · generated\n\n"
            f"{_inline_image(Path(path), 'image/webp', f'validation sample {index}')}"
            for index, path in enumerate(previews, 1)
        ],
        f"## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n{rows}",
    ]
    if loss_plot is not None and Path(loss_plot).is_file():
        sections.append(f"## Loss\n\n{_inline_image(Path(loss_plot), 'image/png', 'loss curve')}")
    return "\n\n".join(sections) + "\n"


def generated_markdown(result: dict, extra: dict, preview: Path | None, output_url: str) -> str:
    """A generation's outputs: the LoRA and settings used, the preview, the files."""
    settings = extra["settings"]
    lines = [
        f"# Generated clip\n\nLoRA `{extra['lora']['sha256'][:12]}` ({extra['lora']['url']}), "
        f"{extra['frames']} frames at {settings['frame_rate']} fps, {extra['width']}x{extra['height']}, "
        f"seed {settings['seed']}, {settings['steps']} steps. Saved to `{redact_url(output_url)}`."
    ]
    if preview is not None and Path(preview).is_file():
        data = base64.b64encode(Path(preview).read_bytes()).decode()
        lines.append(
            f"## Preview\n\nsource · mask · reference · generated\n\n![preview](data:image/webp;base64,{data})"
        )
    rows = [
        f"| {_file_cell(name, info['url'])} | {info['size']:,} | `{info['sha256'][:12]}` |"
        for name, info in result["outputs"].items()
    ]
    lines.append("## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(lines) + "\n"


def _figure(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value[:12]}`" if key == "fingerprint" else str(value)


def _inline_image(path: Path, mime: str, alt: str) -> str:
    return f"![{alt}](data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()})"


def _file_cell(name: str, url: str) -> str:
    link = url if url.startswith(("http://", "https://")) else presigned_url(url)
    return f"[{name}]({link})" if link else name  # the folder is stated once above the table


def presigned_url(url: str, expiration_s: int = 7 * 24 * 3600) -> str | None:
    """A temporary https link for object storage (s3://, gs://, ...); None where there is none."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        signed = fs.sign(path, expiration=expiration_s)
    except Exception:  # local and memory filesystems cannot sign (NotImplementedError), nor can some stores
        return None
    return signed if str(signed).startswith(("http://", "https://")) else None

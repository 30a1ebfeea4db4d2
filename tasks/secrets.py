"""`secret://NAME` URLs: the real URL (a presigned one, say) lives in a Prefect Secret block, so
the run's parameters, which Prefect stores in its database and shows in the UI, hold only the
block's name. Resolved on the worker, at the moment of the download. A name that resolves to
nothing is a DownloadError (the data cannot be fetched; never retried), so every caller's
download handling applies (exit 1 in the CLI, DownloadFailed in a flow)."""

from __future__ import annotations

from lib.core.errors import DownloadError
from lib.core.redact import is_secret_reference, secret_name


def resolve_url(url: str, field: str = "training_data_url") -> str:
    """`url` itself, or for `secret://NAME` the URL stored in the Prefect Secret block NAME."""
    if not is_secret_reference(url):
        return url
    from prefect.blocks.system import Secret

    name = secret_name(url)
    try:
        value = Secret.load(name).get()
    except Exception as error:  # ValueError for an unknown name; the API's own errors otherwise
        raise DownloadError(
            f"{field}: {url} names no readable Prefect Secret block ({type(error).__name__}); "
            f"create it with Secret(value='https://…').save('{name}')."
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise DownloadError(f"{field}: the Prefect Secret block '{name}' must hold the URL as a string.")
    return value.strip()


VALIDATION_URL_FIELDS = ("video_url", "mask_url", "reference_video_url", "reference_audio_url")


def resolve_samples(samples):
    """Validation samples with every `secret://NAME` URL resolved (the request keeps the names)."""
    return [
        sample.model_copy(
            update={
                field: resolve_url(getattr(sample, field), f"validation.{field}")
                for field in VALIDATION_URL_FIELDS
                if is_secret_reference(getattr(sample, field) or "")
            }
        )
        for sample in samples
    ]

"""One rule for showing URLs: drop the query string, the fragment and any user:password, keep the
scheme, host and path. A presigned URL (`…?X-Amz-Signature=…&token=…`) carries its secret in the
query, a basic-auth URL in its user part; neither belongs in a message, a log line, a report, an
artifact, config.json or result.json.

`redact_url` shows one URL; `redact_text` applies it to every URL inside a message; `redact_json`
to every string of a JSON-like document. Local paths are left as they are (a file name may hold
a `?`).

`secret://NAME` in `training_data_url` names a Prefect Secret block holding the real URL; the
flow resolves it on the worker (tasks/secrets.py), so the run's stored parameters hold only the
name.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

SECRET_SCHEME = "secret://"
# scheme://… up to whitespace, a quote or an angle bracket (how URLs end inside messages and reprs)
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """`scheme://host/path` of `url`: no query, no fragment, no user:password. Not a URL: unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: keep only what surely holds no secret
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{re.split(r'[/?#]', rest.rpartition('@')[2].split('?')[0], maxsplit=1)[0]}"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_text(text: str) -> str:
    """`text` with every URL in it shown by `redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def redact_json(value):
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(item) for item in value]
    return value


def is_secret_reference(url: str) -> bool:
    return url.startswith(SECRET_SCHEME)


def secret_name(url: str) -> str:
    return url[len(SECRET_SCHEME) :].strip("/")

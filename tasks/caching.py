"""Cache keys by file *content*: a FileRef counts by its sha256, never by its path.

The key also covers the task's source and the source of the lib/ modules it wraps, so a code
change invalidates exactly the steps it touches.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from lib.storage import FileRef


def content_view(value: Any) -> Any:
    """A JSON-able stand-in for `value` in which every FileRef is reduced to its sha256."""
    if isinstance(value, FileRef):
        return {"sha256": value.sha256}
    if isinstance(value, BaseModel):
        return {k: content_view(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): content_view(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [content_view(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    if hasattr(value, "value") and hasattr(value, "name"):  # enums
        return value.value
    return value


def _source_hash(modules: tuple[ModuleType, ...]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()


@dataclass
class FileContent(CachePolicy):
    """Key = inputs (FileRefs by content) + task source + the wrapped lib modules' source."""

    lib_modules: tuple[ModuleType, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        task_source = inspect.getsource(task_ctx.task.fn) if task_ctx else ""
        return hash_objects(content_view(inputs), task_source, _source_hash(self.lib_modules),
                            raise_on_failure=True)

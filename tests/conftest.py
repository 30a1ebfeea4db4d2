"""Shared test fixtures. Real media is read from ../shared/media, never copied into the project."""
from __future__ import annotations

from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture(scope="session")
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"shared media folder not found at {MEDIA}")
    return MEDIA

"""Titles for a flow's plain parameters on the run form. Prefect titles each parameter by its
Python name (`manifest_url`); a title given in `json_schema_extra` survives its schema builder."""

from __future__ import annotations

from pydantic import Field


def titled(title: str):
    """`Annotated[str, titled("Manifest URL")]`: the form shows "Manifest URL"."""
    return Field(json_schema_extra={"title": title})

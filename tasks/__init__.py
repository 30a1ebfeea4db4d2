"""Thin Prefect tasks: retries, logging and artifacts around one lib/ call each. None is
Prefect-cached: the content-addressed cache (lib.core.cache) is the one authority on what was
computed before."""

"""Thin Prefect tasks: caching, retries, artifacts and logging around one lib/ call each."""

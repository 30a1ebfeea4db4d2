"""Prefect flows: orchestration only (which tasks, in what order, on which pool)."""

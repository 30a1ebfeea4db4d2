"""The work itself: importable and testable without Prefect (tests/test_layering.py enforces it)."""

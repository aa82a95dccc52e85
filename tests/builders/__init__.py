"""Builders of the test fixtures that are too large to keep in git (the test models)."""

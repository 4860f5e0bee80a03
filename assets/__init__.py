"""Dagster assets and asset checks: thin wrappers that call ``ops`` and attach metadata."""

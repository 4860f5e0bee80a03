"""Dagster Definitions: resources, jobs, schedules and sensors. Wiring only."""

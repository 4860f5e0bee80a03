"""Resources: ``params.yaml`` (every asset of a run reads the same values) and MLflow tracking.

The file stays the single source of configuration; a run's config (the launchpad) may
override single values without editing it. The named fields are the overrides people reach
for most and are typed, so Dagster rejects a misspelt or ill-typed one before the run starts;
``overrides`` reaches any other key by its dotted path, checked when the run loads the file.
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from ops.config import DEFAULT_PARAMS_PATH, Params, has_key, load_params
from ops.tracking import Tracker


class ParamsResource(ConfigurableResource):
    """``params.yaml`` plus this run's overrides, as the typed :class:`ops.config.Params`."""

    path: str = Field(
        default=str(DEFAULT_PARAMS_PATH),
        description="The params file; relative paths (this one and those inside it) are taken "
        "from the working directory, the repository root.",
    )
    epochs: int | None = Field(
        default=None, description="Override <task>.train.epochs for this run (e.g. 2 for a quick try)."
    )
    input_size: int | None = Field(
        default=None,
        description="Override <task>.model.input_size for this run (a multiple of 32; tasks whose "
        "model has no fixed input size ignore it).",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other value by its dotted key, e.g. {'traffic.train.lr': 0.004}.",
    )

    def override_map(self, task: str) -> dict[str, Any]:
        """The dotted overrides this run applies to ``task``'s parameters."""
        named = {f"{task}.train.epochs": self.epochs, f"{task}.model.input_size": self.input_size}
        # a named override applies to the tasks that have the key (restorers have no input size)
        named = {key: value for key, value in named.items() if value is not None and has_key(key)}
        return {**self.overrides, **named}

    def load(self, task: str) -> Params:
        """Read and validate the file with this run's overrides (raises ``ConfigError`` naming the key)."""
        return load_params(self.path, self.override_map(task))


class TrackingResource(ConfigurableResource):
    """MLflow for the assets: a thin wrapper around :class:`ops.tracking.Tracker` (no dagster-mlflow).

    Where runs go comes from ``params.yaml`` (``tracking.*``; ``MLFLOW_TRACKING_URI`` wins); a
    run's config may only switch tracking off, e.g. for a quick experiment not worth recording.
    Each asset opens the tracker before its step, so an unreachable server fails the step at
    once, not after training.
    """

    enabled: bool | None = Field(
        default=None,
        description="Override tracking.enabled for this run; false runs offline (each asset warns "
        "that nothing is recorded, and the release refuses).",
    )

    def open(self, params: Params) -> Tracker:
        """A connected tracker for ``params`` (raises ``TrackingError`` if the server is unreachable)."""
        if self.enabled is not None:
            params = params.model_copy(
                update={"tracking": params.tracking.model_copy(update={"enabled": self.enabled})}
            )
        return Tracker(params)

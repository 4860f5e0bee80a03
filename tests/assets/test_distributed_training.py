"""The model asset launches torchrun like the CLI, and rank 0's output reaches the run's log."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterEventType, instance_for_test

from ops.config import load_params
from ops.tasks import task_steps
from pipelines.definitions import defs
from tests.conftest import tiny_params_dict, write_params

pytestmark = pytest.mark.slow


def test_the_model_asset_trains_with_two_processes_and_streams_rank_0(tmp_path):
    raw = tiny_params_dict(tmp_path)
    raw["sidd"]["train"].update(epochs=1, batch_size=4, crops_per_epoch=16)
    params_path = write_params(tmp_path, raw)
    task_steps("sidd").ingest(load_params(params_path))
    run_config = {
        "resources": {"params": {"config": {"path": str(params_path), "overrides": {}}}},
        "ops": {"sidd__model": {"config": {"nproc": 2}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    with instance_for_test() as instance:
        result = defs.resolve_job_def("retrain_sidd").execute_in_process(
            run_config=run_config, instance=instance, asset_selection=[AssetKey(["sidd", "model"])]
        )
        assert result.success
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        materialization = instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)[0]
    metadata = materialization.dagster_event.event_specific_data.materialization.metadata
    assert metadata["device"].value == "cpu (float32) x 2 processes"
    assert metadata["epochs"].value == 1
    assert any(m.startswith("[default0]:") and "epoch 1/1" in m for m in messages), messages
    assert not any(m.startswith("[default1]:") for m in messages)

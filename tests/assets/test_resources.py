"""Run config: params.yaml through the resource, single values overridden per run, bad keys refused
by Dagster before a run starts."""

from __future__ import annotations

import pytest
from dagster import DagsterInvalidConfigError, validate_run_config

from assets.resources import ParamsResource
from ops.errors import ConfigError
from pipelines.definitions import defs
from tests.conftest import tiny_params_dict, write_params


def test_named_and_dotted_overrides_reach_the_params(tmp_path):
    path = write_params(tmp_path, tiny_params_dict(tmp_path))
    resource = ParamsResource(path=str(path), epochs=5, input_size=96, overrides={"traffic.train.lr": 0.004})
    params = resource.load("traffic")
    assert params.traffic.train.epochs == 5
    assert params.traffic.model.input_size == 96
    assert params.traffic.train.lr == 0.004
    assert ParamsResource(path=str(path)).load("traffic").traffic.train.epochs == 2


def test_a_named_override_reaches_only_the_tasks_that_have_the_key(tmp_path):
    path = write_params(tmp_path, tiny_params_dict(tmp_path))
    resource = ParamsResource(path=str(path), epochs=1, input_size=96)
    params = resource.load("sidd")  # the restorer takes any size: input_size is not its key
    assert params.sidd.train.epochs == 1
    assert params.traffic.model.input_size == 128  # the file's value: this load was sidd's
    assert resource.load("traffic").traffic.model.input_size == 96


def test_an_unknown_dotted_override_names_the_key(tmp_path):
    path = write_params(tmp_path, tiny_params_dict(tmp_path))
    with pytest.raises(ConfigError, match="epoch"):
        ParamsResource(path=str(path), overrides={"traffic.train.epoch": 3}).load("traffic")


def test_an_invalid_value_is_refused_by_the_params_model(tmp_path):
    path = write_params(tmp_path, tiny_params_dict(tmp_path))
    with pytest.raises(ConfigError, match="input_size"):
        ParamsResource(path=str(path), input_size=100).load("traffic")  # not a multiple of 32


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"epoch": 3}, "epoch"),  # unknown key
        ({"epochs": "three"}, "epochs"),  # ill-typed
        ({"input_size": 1.5}, "input_size"),
    ],
)
def test_bad_run_config_is_rejected_before_the_run_naming_the_key(config, named):
    job = defs.resolve_job_def("retrain_traffic")
    with pytest.raises(DagsterInvalidConfigError, match=named):
        validate_run_config(job, {"resources": {"params": {"config": config}}})


def test_launchpad_config_for_the_model_and_validation_steps_is_typed():
    job = defs.resolve_job_def("retrain_traffic")
    validate_run_config(
        job,
        {
            "resources": {"params": {"config": {"epochs": 1, "input_size": 128}}},
            "ops": {
                "traffic__model": {"config": {"resume": True}},
                "traffic__validation": {"config": {"benchmark": False}},
            },
        },
    )
    with pytest.raises(DagsterInvalidConfigError, match="resume"):
        validate_run_config(job, {"ops": {"traffic__model": {"config": {"resume": "sometimes"}}}})

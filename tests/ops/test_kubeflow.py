"""The Kubeflow pipeline compiled offline by the real kfp compiler, read back and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ops.config import load_params
from ops.errors import ConfigError
from ops.kubeflow import JOB_ID, PipelineOptions, compile_pipeline, parameter_name, pipeline_steps
from ops.stages import task_stages
from ops.tasks import TASKS
from tests.conftest import REPO_ROOT, run_cli

IMAGE = "registry.example/visionforge:1.2"


@pytest.fixture(scope="module")
def params():
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def compiled(params, tmp_path_factory) -> tuple[dict, dict]:
    """Every task, 2 GPUs for training: (the pipeline spec, the Kubernetes platform spec)."""
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    compile_pipeline(params, path, options=PipelineOptions(image=IMAGE, gpus=2))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _executor(spec: dict, task_name: str) -> dict:
    component = spec["root"]["dag"]["tasks"][task_name]["componentRef"]["name"]
    label = spec["components"][component]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"] | {"label": label}


def test_one_component_per_dvc_stage_and_the_release_in_each_tasks_chain(params, compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for task in TASKS:
        expected = [f"{task}-{s.name}" for s in task_stages(params, task) if s.in_dvc] + [f"{task}-promote"]
        assert {name for name in tasks if name.startswith(f"{task}-")} == set(expected)
    assert len(tasks) == sum(len(pipeline_steps(params, task)) for task in TASKS)


def test_steps_run_after_the_steps_whose_files_they_read(params, compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for task in TASKS:
        order = [step.name for step in pipeline_steps(params, task)]
        for name in order:
            for before in tasks[name].get("dependentTasks", []):
                assert order.index(before) < order.index(name), f"{name} depends on a later {before}"
        assert "dependentTasks" not in tasks[f"{task}-ingest"]
        assert f"{task}-ingest" in tasks[f"{task}-train"]["dependentTasks"]
        assert f"{task}-train" in tasks[f"{task}-export"]["dependentTasks"]
        assert f"{task}-export" in tasks[f"{task}-quantize"]["dependentTasks"]
        assert {f"{task}-validate", f"{task}-quantize"} <= set(tasks[f"{task}-promote"]["dependentTasks"])
        assert all(t["cachingOptions"].get("enableCache") is not True for t in tasks.values())


def test_each_pod_runs_the_cli_in_the_image_with_its_params(params, compiled):
    spec, platform = compiled
    for task in TASKS:
        for step in pipeline_steps(params, task):
            container = _executor(spec, step.name)
            assert container["image"] == IMAGE
            assert container["command"] == ["visionforge"]
            assert container["args"][:4] == [step.command, task, "--pipeline-run", JOB_ID]
            sets = [json.loads(a)["Concat"] for a in container["args"] if a.startswith('{"Concat"')]
            assert [
                (key, f"{{{{$.inputs.parameters['{parameter_name(key)}']}}}}") for key in step.params
            ] == [(prefix.removesuffix("="), placeholder) for prefix, placeholder in sets]
            kube = platform[container["label"]]
            assert kube["secretAsEnv"][0]["secretName"] == "visionforge-credentials"
            assert {m["envVar"] for m in kube["secretAsEnv"][0]["keyToEnv"]} == {
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            }
            assert kube["configMapAsVolume"][0]["configMapName"] == "visionforge-params"
            overlay = {e["name"]: e["value"] for e in container["env"]}["VISIONFORGE_PARAMS_OVERLAY"]
            assert overlay.startswith(kube["configMapAsVolume"][0]["mountPath"] + "/")


def test_only_training_requests_gpus_and_runs_one_process_per_gpu(compiled):
    spec, _ = compiled
    for task in TASKS:
        for name, container in ((n, _executor(spec, n)) for n in spec["root"]["dag"]["tasks"]):
            if name == f"{task}-train":
                assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
                assert container["resources"]["accelerator"]["resourceCount"] == "2"
                assert container["args"][4:6] == ["--nproc", "2"]
            elif name.startswith(f"{task}-"):
                assert "accelerator" not in container.get("resources", {})


def test_pipeline_parameters_default_to_params_yaml_and_parse_back_through_set(params, compiled):
    spec, _ = compiled
    defaults = {
        name: entry["defaultValue"] for name, entry in spec["root"]["inputDefinitions"]["parameters"].items()
    }
    keys = {key for task in TASKS for step in pipeline_steps(params, task) for key in step.params}
    assert set(defaults) == {parameter_name(key) for key in keys}
    # what a pod's `--set key=<value>` makes of each default: the params it started from
    overrides = {key: yaml.safe_load(defaults[parameter_name(key)]) for key in sorted(keys)}
    assert load_params(REPO_ROOT / "params.yaml", overrides) == params
    assert json.loads(defaults["traffic_train"])["epochs"] == params.traffic.train.epochs


def test_the_compiled_file_loads_back_into_kfp(params, tmp_path):
    from kfp import components

    path = compile_pipeline(params, tmp_path / "sidd.yaml", ["sidd"])
    pipeline = components.load_component_from_file(str(path))
    assert pipeline.name == "visionforge-sidd"
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_cli_compiles_one_task_and_refuses_an_unknown_one(tmp_path):
    out = tmp_path / "gopro.yaml"
    done = run_cli("kfp", "compile", "--task", "gopro", "--output", str(out), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["steps"]["gopro"][-1] == "gopro-promote"
    assert out.is_file()
    refused = run_cli(
        "kfp", "compile", "--task", "mnist", "--output", str(tmp_path / "x.yaml"), cwd=REPO_ROOT
    )
    assert refused.returncode == 2 and "invalid choice: 'mnist'" in refused.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_unknown_tasks_and_negative_gpus_are_config_errors(params, tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'mnist'"):
        compile_pipeline(params, tmp_path / "x.yaml", ["mnist"])
    with pytest.raises(ConfigError, match="--gpus must be 0 or more"):
        compile_pipeline(params, tmp_path / "x.yaml", options=PipelineOptions(gpus=-1))
    assert not Path(tmp_path / "x.yaml").exists()

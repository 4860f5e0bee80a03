"""The Kubernetes manifests in docker/k8s/: core kinds validated against the API's schemas
(kubernetes-validate, offline), the PyTorchJob (a custom resource) parsed and checked, and every
command they run parsed by visionforge's own CLI."""

from __future__ import annotations

import copy
import shlex

import kubernetes_validate
import pytest
import yaml

from ops.cli import build_parser
from ops.config import load_params
from ops.kubeflow import CREDENTIAL_KEYS, OVERLAY_MOUNT, PipelineOptions
from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "docker" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _by_kind(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in _documents(name)}


def _train_args(command: list[str]):
    """``visionforge train ...`` as the CLI parses it (Kubernetes' $(VAR) left as text)."""
    assert command[0] == "visionforge"
    return build_parser().parse_args(command[1:])


@pytest.mark.parametrize("name", ["storage.yaml", "train-indexed-job.yaml"])
def test_core_manifests_validate_strictly_against_the_kubernetes_schemas(name):
    for doc in _documents(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    job = copy.deepcopy(_by_kind("train-indexed-job.yaml")["Job"])
    job["spec"]["completionsMode"] = job["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_the_indexed_job_meets_at_pod_0_through_its_headless_service():
    manifests = _by_kind("train-indexed-job.yaml")
    service, job = manifests["Service"], manifests["Job"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = container["args"][0]
    train = shlex.split(script[script.index("visionforge train") :])
    args = _train_args(train)
    assert args.task == "traffic"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == args.nnodes
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == args.nproc
    assert 'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then visionforge ingest traffic; fi' in script


def test_the_pytorchjob_is_a_training_operator_job_running_the_same_cli():
    (job,) = _documents("train-pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(spec["replicas"] for spec in replicas.values())
    for role, spec in replicas.items():
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch", "the operator finds the training container by name"
        args = _train_args(container["command"])
        assert (args.command, args.task, args.nnodes) == ("train", "traffic", nodes)
        assert args.rdzv_endpoint == "$(MASTER_ADDR):$(MASTER_PORT)"
        assert (
            args.nproc
            == int(job["spec"]["nprocPerNode"])
            == container["resources"]["limits"]["nvidia.com/gpu"]
        )
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {
            "/opt/visionforge/data",
            "/opt/visionforge/artifacts",
            OVERLAY_MOUNT,
        }
        # every pod's spec also validates as a core PodSpec
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role.lower()}, "spec": pod},
            KUBERNETES_VERSION,
            strict=True,
        )
    (ingest,) = replicas["Master"]["template"]["spec"]["initContainers"]
    assert build_parser().parse_args(ingest["command"][1:]).command == "ingest"


def test_manifests_and_the_kubeflow_pipeline_name_the_same_secret_and_overlay(tmp_path, monkeypatch):
    storage = _by_kind("storage.yaml")
    config_map = storage["ConfigMap"]
    defaults = PipelineOptions()
    assert config_map["metadata"]["name"] == defaults.overlay_config_map
    overlay = tmp_path / "params.deploy.yaml"
    overlay.write_text(config_map["data"]["params.deploy.yaml"])
    monkeypatch.setenv("VISIONFORGE_PARAMS_OVERLAY", str(overlay))
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.storage.remote == "s3" and params.storage.s3.endpoint_url.startswith("http://")
    for name in ("train-indexed-job.yaml", "train-pytorchjob.yaml"):
        text = (K8S / name).read_text()
        assert f"secretRef: {{name: {defaults.secret}}}" in text
        assert f"value: {OVERLAY_MOUNT}/params.deploy.yaml" in text
        assert f"configMap: {{name: {defaults.overlay_config_map}}}" in text
        assert not any(key in text for key in CREDENTIAL_KEYS), "credentials come from the secret"

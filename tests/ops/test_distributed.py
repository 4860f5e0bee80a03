"""Training across processes with torchrun and gloo, against training in one process.

The restorer is the model these tests train: LayerNorm and a loss averaged over images make
DDP's averaged gradient the one-process gradient, so the weights must agree. Every launch is
a real torchrun with real gloo processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ops.config import Params, load_params
from ops.distributed import (
    DistributedTrainingError,
    GlobalOrderSampler,
    Launch,
    World,
    _describe_failure,
    per_rank_batch,
    train_task,
)
from ops.errors import CheckpointError, ConfigError
from ops.tasks import task_steps
from ops.train import _check_resume_layout, load_checkpoint
from tests.conftest import REPO_ROOT, run_cli, tiny_params_dict, write_params
from tests.ops.faulty_rank import FAULT_ENV
from tests.services import free_port

pytestmark = pytest.mark.slow

FAULTY_RANK = "tests.ops.faulty_rank"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mlflow_template_db) -> Path:
    """A tiny sidd dataset, 2 epochs of 4 global batches of 4 crops; MLflow in the directory."""
    workdir = tmp_path_factory.mktemp("ddp")
    raw = tiny_params_dict(workdir)
    raw["sidd"]["train"].update(epochs=2, batch_size=4, crops_per_epoch=16, dist_timeout_s=60)
    shutil.copyfile(mlflow_template_db, workdir / "mlruns.db")
    task_steps("sidd").ingest(load_params(write_params(workdir, raw)))
    return workdir


def _params(workdir: Path, run: str, **overrides) -> Params:
    """The module's params with outputs in their own directory (the dataset is shared)."""
    return load_params(workdir / "params.yaml", {"project.artifacts_dir": str(workdir / run), **overrides})


def _weights(params: Params) -> dict[str, torch.Tensor]:
    path = Path(params.project.artifacts_dir) / "sidd" / "model" / "model.pt"
    return torch.load(path, weights_only=True)["model_state"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=f"parameter {name} differs", **tolerance)


@pytest.fixture(scope="module")
def one_process(workdir) -> Params:
    params = _params(workdir, "one")
    result = train_task("sidd", params)
    assert result.device == "cpu (float32)"
    return params


@pytest.fixture(scope="module")
def two_processes(workdir) -> tuple[Params, dict]:
    """``visionforge train sidd --nproc 2``, as a user runs it."""
    run = run_cli(
        "train", "sidd", "--nproc", "2", "--params", str(workdir / "params.yaml"),
        "--set", f"project.artifacts_dir={workdir / 'two'}",
        cwd=workdir,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return _params(workdir, "two"), json.loads(run.stdout[run.stdout.index("{\n") :])


def test_the_sampler_shards_the_order_the_one_process_loop_always_drew():
    """One rank draws exactly what a seeded shuffling DataLoader draws (so one-process training
    kept its order); two ranks' batches of each step are together the one-process batch."""
    dataset, seed = list(range(37)), 7 * 100_003
    for epoch in range(3):
        loader = DataLoader(
            dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed + epoch)
        )
        expected = [int(i) for batch in loader for i in batch]
        one = GlobalOrderSampler(len(dataset), seed, World())
        one.set_epoch(epoch)
        assert list(one) == expected
        ranks = [GlobalOrderSampler(len(dataset), seed, World(rank=r, world_size=2)) for r in range(2)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in ranks]
        assert len(shards[0]) == len(shards[1]) == 19
        steps = [shards[0][i : i + 2] + shards[1][i : i + 2] for i in range(0, 18, 2)]
        assert [sorted(step) for step in steps] == [sorted(expected[i : i + 4]) for i in range(0, 36, 4)]


def test_two_gloo_processes_train_the_weights_one_process_trains(one_process, two_processes):
    params, outcome = two_processes
    assert outcome["device"] == "cpu (float32) x 2 processes"
    assert outcome["epochs"] == 2
    history_one = json.loads(
        (Path(one_process.project.artifacts_dir) / "sidd/model/history.json").read_text()
    )
    history_two = json.loads((Path(params.project.artifacts_dir) / "sidd/model/history.json").read_text())
    for row_one, row_two in zip(history_one, history_two, strict=True):
        assert row_two == pytest.approx(row_one, rel=1e-4)
    _assert_same_weights(_weights(one_process), _weights(params), rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote, and the launch's scratch directory is gone after success
    assert list((Path(params.project.artifacts_dir) / "sidd/model/distributed").iterdir()) == []


def test_a_distributed_run_is_recorded_once_in_mlflow(workdir, two_processes):
    from mlflow import MlflowClient

    _, outcome = two_processes
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    run = client.get_run(outcome["mlflow"]["run_id"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    train_runs = [
        r for r in client.search_runs(experiments) if r.data.tags.get("mlflow.runName", "").endswith("train")
    ]
    assert [r.info.run_id for r in train_runs] == [run.info.run_id]
    assert outcome["mlflow"]["registered"] == {"pytorch": "sidd-denoiser-pytorch v1"}


def test_a_killed_rank_fails_the_job_and_resume_continues_exactly(
    workdir, one_process, two_processes, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, "1:2:2:kill")  # rank 1, epoch 2, batch 2: SIGKILL
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    params = _params(workdir, "killed")
    with pytest.raises(DistributedTrainingError, match=r"rank 1 failed: killed by SIGKILL") as failure:
        train_task(
            "sidd", params, launch=Launch(nproc=2), worker_module=FAULTY_RANK, on_output=lambda _: None
        )
    model_dir = Path(params.project.artifacts_dir) / "sidd" / "model"
    assert load_checkpoint(model_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (model_dir / "model.pt").exists()
    logs = Path(str(failure.value).rsplit("log: ", 1)[1].rstrip(")"))
    assert logs.is_dir() and list(logs.rglob("stdout.log")), "each rank's log is kept for the failure"

    # the same two processes continue from epoch 1 to the uninterrupted run's weights
    monkeypatch.delenv(FAULT_ENV)
    resumed = train_task("sidd", params, resume=True, launch=Launch(nproc=2), on_output=lambda _: None)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    _assert_same_weights(_weights(two_processes[0]), _weights(params))


def test_the_rank_that_failed_is_named_not_the_one_torchrun_stopped_in_the_same_second(tmp_path):
    """torchrun's own report (its ChildFailedError), with the SIGKILLed rank and the rank it
    then SIGTERMed timed to the same second: torchrun calls the SIGTERMed rank the root cause."""
    import signal

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    stopped = ProcessFailure(local_rank=0, pid=100, exitcode=-signal.SIGTERM, error_file="<N/A>")
    killed = ProcessFailure(local_rank=1, pid=101, exitcode=-signal.SIGKILL, error_file="<N/A>")
    stopped.timestamp = killed.timestamp
    report = ChildFailedError("ops.distributed", {0: stopped, 1: killed}).format_msg()
    assert "Root Cause" in report and report.index("SIGKILL") < report.index("Root Cause")  # the tie

    described = _describe_failure(1, report.splitlines(), tmp_path, Launch(nproc=2), 60.0)
    assert described.startswith("training rank 1 failed: killed by SIGKILL")
    # a job SIGTERMed as a whole still names torchrun's root cause
    everyone = {rank: ProcessFailure(rank, 100 + rank, -signal.SIGTERM, "<N/A>") for rank in (0, 1)}
    report = ChildFailedError("ops.distributed", everyone).format_msg()
    assert _describe_failure(1, report.splitlines(), tmp_path, Launch(nproc=2), 60.0).startswith(
        "training rank 0 failed: killed by SIGTERM"
    )


def test_a_checkpoint_of_two_processes_resumes_in_one(workdir, one_process, monkeypatch):
    """Same global batches whatever the process count, so one process continues the run."""
    monkeypatch.setenv(FAULT_ENV, "0:2:1:raise")  # stop 2 processes right after epoch 1
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    params = _params(workdir, "cross")
    with pytest.raises(DistributedTrainingError, match="rank 0 failed: RuntimeError: injected failure"):
        train_task(
            "sidd", params, launch=Launch(nproc=2), worker_module=FAULTY_RANK, on_output=lambda _: None
        )
    state = load_checkpoint(Path(params.project.artifacts_dir) / "sidd" / "model" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["world_size"]) == (1, 2)
    resumed = train_task("sidd", params, resume=True)
    assert resumed.device == "cpu (float32)"
    _assert_same_weights(_weights(one_process), _weights(params), rtol=1e-4, atol=1e-5)


def test_a_rank_that_raises_stops_every_rank_with_its_error(workdir, monkeypatch):
    params = _params(workdir, "raised")
    monkeypatch.setenv(FAULT_ENV, "1:1:2:raise")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(DistributedTrainingError) as failure:
        train_task("sidd", params, launch=Launch(nproc=2), worker_module=FAULTY_RANK, on_output=lines.append)
    assert time.monotonic() - started < params.sidd.train.dist_timeout_s, "rank 0 waited out the timeout"
    assert "training rank 1 failed: RuntimeError: injected failure at epoch 1 step 2" in str(failure.value)
    assert any(line.startswith("[default0]:") for line in lines), "rank 0's output reaches the caller"
    assert not any(line.startswith("[default1]:") for line in lines), "only rank 0 is streamed"


def test_two_nodes_meet_at_the_rendezvous_endpoint(workdir, two_processes):
    """Two launches of one process each, as two machines would run them, train as --nproc 2."""
    params = _params(workdir, "nodes")
    launch = Launch(nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", rdzv_id="nodes-test")
    results: dict[int, object] = {}

    def node(index: int) -> None:
        try:
            results[index] = train_task("sidd", params, launch=launch, on_output=lambda _: None)
        except Exception as exc:  # surfaced below
            results[index] = exc

    threads = [threading.Thread(target=node, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    values = list(results.values())
    assert not [v for v in values if isinstance(v, Exception)], values
    assert sorted(v is None for v in values) == [False, True], "exactly one node hosted rank 0"
    _assert_same_weights(_weights(two_processes[0]), _weights(params))


def test_a_rendezvous_that_never_completes_fails_naming_the_endpoint(workdir):
    params = _params(workdir, "alone", **{"sidd.train.dist_timeout_s": 5})
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(DistributedTrainingError, match=rf"rendezvous at {endpoint} timed out after 5 s"):
        train_task(
            "sidd", params, launch=Launch(nproc=1, nnodes=2, rdzv_endpoint=endpoint), on_output=lambda _: None
        )


def test_impossible_launches_are_refused_before_any_process_starts(workdir):
    params = _params(workdir, "refused")
    cores = os.cpu_count()
    with pytest.raises(ConfigError, match=rf"--nproc {cores + 1} .* has {cores} CPU core"):
        train_task("sidd", params, launch=Launch(nproc=cores + 1))
    if not torch.cuda.is_available():
        cuda = _params(workdir, "refused", **{"sidd.train.device": "cuda"})
        with pytest.raises(ConfigError, match="has 0 GPUs"):
            train_task("sidd", cuda, launch=Launch(nproc=2))
    with pytest.raises(ConfigError, match="--nnodes 2 needs --rdzv-endpoint"):
        train_task("sidd", params, launch=Launch(nnodes=2))
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        train_task("sidd", params, launch=Launch(nnodes=2, rdzv_endpoint="node-0"))
    brief = _params(workdir, "refused", **{"sidd.train.dist_timeout_s": 2})
    with pytest.raises(DistributedTrainingError, match="nowhere.invalid:29400 was unreachable .* for 2 s"):
        train_task("sidd", brief, launch=Launch(nnodes=2, rdzv_endpoint="nowhere.invalid:29400"))
    with pytest.raises(ConfigError, match="must divide evenly over 3 processes"):
        per_rank_batch(4, World(world_size=3))
    assert not (Path(params.project.artifacts_dir) / "sidd" / "model").exists()


def test_the_cli_names_an_impossible_nproc(workdir):
    run = run_cli("train", "sidd", "--nproc", "64", "--params", str(workdir / "params.yaml"), cwd=workdir)
    assert run.returncode == 2
    assert "visionforge train: error: --nproc 64 asks for 64 training processes" in run.stderr


def test_a_checkpoint_whose_steps_per_epoch_differ_is_refused_naming_both(tmp_path):
    state = {"world_size": 3, "steps_per_epoch": 5}
    with pytest.raises(CheckpointError, match=r"3 training process\(es\) with 5 steps .* 1 with 4"):
        _check_resume_layout(tmp_path / "last.pt", state, World(), steps_per_epoch=4)
    _check_resume_layout(tmp_path / "last.pt", {}, World(), steps_per_epoch=4)  # older checkpoints

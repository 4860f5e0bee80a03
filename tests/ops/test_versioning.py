"""DVC: dvc.yaml from the stage table, the dataset's data version, and a real `dvc repro` of the
tiny pipeline in a temporary git repository (no-op rerun, params change, push/pull, drift)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ops.config import load_params
from ops.errors import VersioningError
from ops.stages import task_stages
from ops.versioning import (
    changed_stages,
    dataset_status,
    dataset_version,
    init_repo,
    pull,
    push,
    recorded_version,
    render_dvc_yaml,
    repro,
    run_dvc,
)
from tests.conftest import REPO_ROOT, run_cli, tiny_params_dict, write_params


def test_the_committed_dvc_yaml_is_the_rendered_stage_table():
    rendered = render_dvc_yaml(load_params(REPO_ROOT / "params.yaml"))
    assert (REPO_ROOT / "dvc.yaml").read_text() == rendered, "run `python -m ops.versioning render`"


def test_every_stage_param_is_a_key_of_params_and_every_stage_a_cli_command():
    from ops.cli import build_parser

    params = load_params(REPO_ROOT / "params.yaml")
    tree = params.model_dump()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for stage in task_stages(params, "traffic"):
        assert stage.name in commands
        for dotted in stage.params:
            node = tree
            for part in dotted.split("."):
                node = node[part]  # KeyError names a stale key


def _dataset(root: Path) -> Path:
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "0001.jpg").write_bytes(b"\xff\xd8image-one")
    (root / "images" / "train" / "0002.jpg").write_bytes(b"\xff\xd8image-two")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    return root


def test_data_version_depends_on_names_and_bytes_not_place_or_time(tmp_path):
    a, b = _dataset(tmp_path / "a"), _dataset(tmp_path / "b")
    version = dataset_version(a)
    assert version.endswith(".dir") and version == dataset_version(b)
    image = a / "images" / "train" / "0001.jpg"
    os.utime(image, (1, 1))
    assert dataset_version(a) == version
    image.write_bytes(b"\xff\xd8image-1")
    changed = dataset_version(a)
    image.rename(a / "images" / "train" / "0003.jpg")
    renamed = dataset_version(a)
    assert len({version, changed, renamed}) == 3
    with pytest.raises(VersioningError, match="no dataset"):
        dataset_version(tmp_path / "absent")


def test_a_dvc_failure_is_one_error_with_dvcs_message(tmp_path):
    with pytest.raises(VersioningError, match=r"dvc status.*failed"):
        run_dvc(["status"], tmp_path)  # not a DVC repository


# DVC's own `dvc`, SIGKILLed as it starts collecting its second output's objects: the first
# output's list is committed to DVC's cache, the second's not (where a killed push left it).
_KILL_AT_THE_SECOND_OUTPUT = """
import os, signal, sys
import dvc_data.index.collect as collect
from dvc.cli import main
original, outputs = collect._collect_from_index, []
def collect_or_die(*args, **kwargs):
    outputs.append(args[3])
    if len(outputs) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
collect._collect_from_index = collect_or_die
sys.exit(main(sys.argv[1:]))
"""


def _objects(remote: Path) -> set[str]:
    """The remote's objects (DVC's hidden upload leftovers are none)."""
    files = (p for p in remote.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {p.relative_to(remote).as_posix() for p in files}


def test_a_push_after_a_killed_push_uploads_everything_where_dvc_push_skips(tmp_path):
    from ops.versioning import dvc_python

    root, remote = tmp_path / "repo", tmp_path / "remote"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    run_dvc(["init", "--quiet"], root)
    run_dvc(["remote", "add", "--default", "local", str(remote)], root)
    for name in ("first", "second"):
        _dataset(root / name)
        (root / name / f"{name}.txt").write_text(name)
    run_dvc(["add", "--quiet", "first", "second"], root)
    run_dvc(["push"], root)
    complete = _objects(remote)
    assert len(complete) == 3 + 2 * 2  # the three files both hold, each one's own file and listing

    def killed_push() -> None:
        shutil.rmtree(remote)
        killed = subprocess.run(
            [dvc_python(), "-c", _KILL_AT_THE_SECOND_OUTPUT, "push"], cwd=root, capture_output=True
        )
        assert killed.returncode == -9, killed.stderr

    killed_push()
    run_dvc(["push"], root)  # DVC's own push trusts the half-collected list, and says it succeeded
    assert complete - _objects(remote), "DVC now finishes a killed push: ops.dvc_transfer is not needed"

    killed_push()
    assert push(root).endswith("files pushed")
    assert _objects(remote) == complete
    assert push(root) == "Everything is up to date."


# --- a real `dvc repro` -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny pipeline reproduced once by DVC in a fresh git repository (shared by the tests below,
    which run in file order and leave the repository consistent)."""
    workdir = tmp_path_factory.mktemp("dvc-repo")
    raw = tiny_params_dict(workdir)
    raw["project"] = {"data_dir": "data", "artifacts_dir": "artifacts"}  # DVC outs live in the repo
    raw["traffic"]["dataset"]["root"] = "data/traffic"
    raw["sidd"]["dataset"]["root"] = "data/sidd"
    raw["sidd"]["train"]["epochs"] = 1
    raw["gopro"]["dataset"]["root"] = "data/gopro"
    raw["gopro"]["train"]["epochs"] = 1
    raw["traffic"]["train"]["epochs"] = 1
    raw["traffic"]["export"]["parity_images"] = 4
    raw["traffic"]["quantize"]["calibration_images"] = 4
    raw["traffic"]["benchmark"].update(compile=False, runs=2, warmup=0)
    raw["traffic"]["prune"]["finetune_epochs"] = 0
    raw["tracking"]["enabled"] = False  # MLflow from the CLI is tested elsewhere; here it only costs time
    raw["storage"]["local_dir"] = str(tmp_path_factory.mktemp("dvc-remote"))
    write_params(workdir, raw)
    shutil.copyfile(REPO_ROOT / "dvc.yaml", workdir / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    params = load_params(workdir / "params.yaml")
    init_repo(workdir, params)
    ran = repro(workdir)
    return {"root": workdir, "params": params, "ran": ran, "remote": Path(raw["storage"]["local_dir"])}


@pytest.mark.slow
def test_repro_runs_every_stage_then_nothing(repo):
    stages = yaml.safe_load((repo["root"] / "dvc.yaml").read_text())["stages"]
    assert sorted(repo["ran"]) == sorted(stages)
    assert repro(repo["root"]) == []
    assert changed_stages(repo["root"]) == []


@pytest.mark.slow
def test_dvc_lock_records_the_data_version(repo):
    root, params = repo["root"], repo["params"]
    recorded = recorded_version(root, "data/traffic")
    assert recorded == dataset_version(root / "data" / "traffic")
    os.chdir(root)  # params paths are relative to the repository, as for the CLI
    try:
        assert dataset_status(params, "traffic", root).state == "committed"
    finally:
        os.chdir(REPO_ROOT)


@pytest.mark.slow
def test_metrics_and_plots_are_shown_by_dvc(repo):
    metrics = json.loads(run_dvc(["metrics", "show", "--json"], repo["root"]).stdout)
    data = next(iter(metrics.values()))["data"]
    pytorch = data["artifacts/traffic/metrics/pytorch.json"]["data"]
    assert 0.0 <= pytorch["map50"] <= 1.0
    assert data["artifacts/traffic/validation/gates.json"]["data"]["passed"] in (True, False)
    assert data["artifacts/traffic/benchmark/trained/benchmark.json"]["data"]["threads"] == 2
    plots = json.loads(run_dvc(["plots", "show", "--json"], repo["root"]).stdout)["data"]
    assert "artifacts/traffic/model/history.json" in plots
    assert "artifacts/traffic/eval/onnx-int8/pr_curve.png" in plots
    sidd = data["artifacts/sidd/metrics/onnx-int8.json"]["data"]
    assert sidd["psnr_input"] > 0 and "psnr" in sidd
    assert "artifacts/sidd/eval/onnx-int8/samples.png" in plots
    assert data["artifacts/gopro/metrics/onnx-int8.json"]["data"]["psnr_input"] > 0


@pytest.mark.slow
def test_a_params_change_reruns_exactly_the_stages_that_depend_on_it(repo):
    root = repo["root"]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["traffic"]["validation"]["min_output_cosine"] = 0.998
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dependent = [
        name
        for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items()
        if any("traffic.validation.min_output_cosine".startswith(key) for key in stage["params"])
    ]
    assert dependent == ["traffic-validate"]  # stages are named <task>-<step>
    assert changed_stages(root) == dependent
    assert repro(root) == dependent  # its outputs' other files are unchanged: nothing downstream reruns
    assert repro(root) == []


@pytest.mark.slow
def test_push_and_pull_round_trip_through_the_local_remote(repo):
    root = repo["root"]
    push(root)
    assert any(repo["remote"].rglob("*"))
    weights = root / "artifacts" / "traffic" / "model" / "model.pt"
    expected = {p: dataset_version(p) for p in (root / "data" / "traffic", weights)}
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data" / "traffic")
    weights.unlink()
    pull(root)
    assert {p: dataset_version(p) for p in expected} == expected
    assert changed_stages(root) == []


@pytest.mark.slow
def test_a_dataset_changed_without_dvc_commit_is_detected_and_reported(repo):
    root, params = repo["root"], repo["params"]
    image = next((root / "data" / "traffic" / "images" / "val").glob("*.jpg"))
    original = image.read_bytes()
    image.write_bytes(original[:-10])
    os.chdir(root)
    try:
        status = dataset_status(params, "traffic", root)
    finally:
        os.chdir(REPO_ROOT)
    assert status.state == "modified"
    assert "dvc commit" in status.describe() and status.recorded in status.describe()
    assert "traffic-ingest" in changed_stages(root)  # DVC agrees
    cli = run_cli("status", "traffic", cwd=root, timeout=120)
    assert cli.returncode == 1 and "changed on disk" in cli.stderr
    assert json.loads(cli.stdout)["state"] == "modified"
    run_dvc(["checkout", "--force", "data/traffic"], root)
    assert image.read_bytes() == original
    assert changed_stages(root) == []

from pathlib import Path

import pytest
import yaml

from ops.config import PARAMS_OVERLAY_ENV, load_params
from ops.errors import ConfigError
from tests.conftest import REPO_ROOT, tiny_params_dict, write_params


def test_repository_params_load():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.traffic.model.input_size % 32 == 0
    assert params.traffic.dataset.generator.min_objects >= 1


def test_unknown_key_is_rejected_by_name(tmp_path: Path):
    raw = tiny_params_dict(tmp_path)
    raw["traffic"]["train"]["epochz"] = 3
    with pytest.raises(ConfigError, match=r"traffic\.train\.epochz: unknown key"):
        load_params(write_params(tmp_path, raw))


def test_missing_key_is_rejected_by_name(tmp_path: Path):
    raw = tiny_params_dict(tmp_path)
    del raw["traffic"]["train"]["lr"]
    with pytest.raises(ConfigError, match=r"traffic\.train\.lr: missing required key"):
        load_params(write_params(tmp_path, raw))


def test_ill_typed_value_is_rejected_by_name(tmp_path: Path):
    raw = tiny_params_dict(tmp_path)
    raw["traffic"]["model"]["input_size"] = 100
    with pytest.raises(ConfigError, match=r"traffic\.model\.input_size.*multiple of 32"):
        load_params(write_params(tmp_path, raw))
    raw["traffic"]["model"]["input_size"] = "big"
    with pytest.raises(ConfigError, match=r"traffic\.model\.input_size"):
        load_params(write_params(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("traffic: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_overrides_change_one_value_and_reject_unknown_keys(tiny_params_file: Path):
    params = load_params(tiny_params_file, {"traffic.train.epochs": 7})
    assert params.traffic.train.epochs == 7
    assert params.traffic.train.lr == yaml.safe_load(tiny_params_file.read_text())["traffic"]["train"]["lr"]
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_params(tiny_params_file, {"traffic.train.epoch": 7})


def test_a_deployment_overlay_merges_over_the_file_and_overrides_win(tiny_params_file, tmp_path, monkeypatch):
    overlay = tmp_path / "deploy.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "tracking": {"uri": "http://mlflow:5000"},
                "storage": {"remote": "s3", "s3": {"endpoint_url": "http://s3:9000"}},
            }
        )
    )
    monkeypatch.setenv(PARAMS_OVERLAY_ENV, str(overlay))
    params = load_params(tiny_params_file, {"storage.s3.bucket": "other"})
    assert params.tracking.uri == "http://mlflow:5000"
    assert params.storage.remote == "s3"
    assert params.storage.s3.endpoint_url == "http://s3:9000"
    assert params.storage.s3.bucket == "other"  # the override, over the file's "visionforge"
    assert params.storage.s3.region == "us-east-1"  # untouched siblings stay the file's
    assert params.tracking.experiment_prefix == "visionforge-"


def test_a_bad_overlay_is_named(tiny_params_file, tmp_path, monkeypatch):
    monkeypatch.setenv(PARAMS_OVERLAY_ENV, str(tmp_path / "absent.yaml"))
    with pytest.raises(
        ConfigError, match=rf"params overlay \({PARAMS_OVERLAY_ENV}\) not found: .*absent.yaml"
    ):
        load_params(tiny_params_file)
    typo = tmp_path / "typo.yaml"
    typo.write_text("storage:\n  remtoe: s3\n")
    monkeypatch.setenv(PARAMS_OVERLAY_ENV, str(typo))
    with pytest.raises(ConfigError, match=r"with the overlay .*typo.yaml[\s\S]*storage.remtoe"):
        load_params(tiny_params_file)

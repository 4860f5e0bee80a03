"""The restoration family's training, evaluation, export and INT8, and the SIDD task end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ops.config import RestorerConfig, load_params
from ops.deploy.export import OnnxMetadata, RestorerMetadata, export_onnx, read_onnx_contract
from ops.deploy.optimize import QuantizeSettings, quantize_int8
from ops.deploy.runtime import RESTORER, OnnxRuntimePredictor, TorchPredictor
from ops.errors import CheckpointError, DatasetError, ExportError
from ops.restoration.evaluate import evaluate_restorer
from ops.restoration.nafnet import NAFNet, NAFNetConfig
from ops.restoration.pairs import PairSplit, psnr
from ops.restoration.training import (
    CropDataset,
    build_restorer,
    load_restorer,
    psnr_loss,
    restorer_signature,
    save_restorer,
    to_tensor,
)
from ops.restoration.transformer import TransformerRestorer
from tests.conftest import run_cli, tiny_params_dict, write_params

TINY = RestorerConfig(arch="nafnet", width=4, enc_blocks=[1], middle_blocks=1, dec_blocks=[1])


def _pairs(count: int = 3, size: int = 40, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        clean = rng.integers(0, 200, (size, size + 8, 3), dtype=np.uint8)
        pairs.append((clean + 50, clean))  # degraded = clean + 50 everywhere: alignment is visible
    return pairs


def test_crops_are_a_function_of_seed_epoch_and_index_and_stay_aligned():
    dataset = CropDataset(_pairs(), crop_size=16, crops_per_epoch=10, flips_rotations=True, seed=3)
    first = [dataset[i] for i in range(10)]
    again = [dataset[i] for i in range(10)]
    for (a, ta), (b, tb) in zip(first, again, strict=True):
        assert torch.equal(a, b) and torch.equal(ta["clean"], tb["clean"])
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][0]) for i, (a, _) in enumerate(first))
    for degraded, targets in first:
        assert degraded.shape == targets["clean"].shape == (3, 16, 16)
        # every flip and rotation moved both images alike: the difference is still exactly +50
        assert torch.allclose(degraded - targets["clean"], torch.full_like(degraded, 50 / 255), atol=1e-6)


def test_pairs_smaller_than_the_crop_are_refused_naming_them():
    with pytest.raises(DatasetError, match="smaller than train.crop_size 64"):
        CropDataset(_pairs(size=40), crop_size=64, crops_per_epoch=4, flips_rotations=False, seed=0)


def test_psnr_loss_is_minus_the_psnr_in_db():
    clean = torch.zeros(2, 3, 8, 8)
    restored = torch.full_like(clean, 0.1)  # MSE 0.01 -> PSNR 20 dB at data range 1
    assert psnr_loss(restored, clean).item() == pytest.approx(-20.0, abs=1e-4)


def test_a_checkpoint_of_another_width_is_refused_naming_the_difference(tmp_path):
    path = save_restorer(tmp_path / "model.pt", build_restorer(TINY), TINY)
    wider = TINY.model_copy(update={"width": 8})
    with pytest.raises(CheckpointError, match="different model config") as error:
        load_restorer(path, wider)
    assert "model.width: checkpoint has 4, config has 8" in str(error.value)
    assert load_restorer(path, TINY).model_cfg == TINY


TINY_TRANSFORMER = RestorerConfig(
    arch="transformer", width=4, enc_blocks=[1], middle_blocks=1, dec_blocks=[1], heads=[1, 2]
)


def test_the_arch_picks_the_network_and_a_checkpoint_of_the_other_is_refused(tmp_path):
    cnn, transformer = build_restorer(TINY), build_restorer(TINY_TRANSFORMER)
    assert isinstance(cnn, NAFNet) and isinstance(transformer, TransformerRestorer)
    path = save_restorer(tmp_path / "transformer.pt", transformer, TINY_TRANSFORMER)
    with pytest.raises(CheckpointError, match="different model config") as error:
        load_restorer(path, TINY)  # a transformer's weights under a CNN config
    assert "ChannelAttentionTransformer" in str(error.value) and "NAFNet" in str(error.value)
    loaded = load_restorer(path)  # without a config, the file says what it holds
    assert isinstance(loaded.model, TransformerRestorer) and loaded.model_cfg == TINY_TRANSFORMER
    image = torch.rand(1, 3, 13, 9)  # odd, and smaller than nothing: still the input's shape
    assert loaded.model(image).shape == image.shape


def test_restorer_config_names_what_each_arch_needs():
    with pytest.raises(ValueError, match="arch 'transformer' needs heads"):
        RestorerConfig(arch="transformer", width=4, enc_blocks=[1], middle_blocks=1, dec_blocks=[1])
    with pytest.raises(ValueError, match="heads applies to arch 'transformer' only"):
        RestorerConfig(arch="nafnet", width=4, enc_blocks=[1], middle_blocks=1, dec_blocks=[1], heads=[1, 1])
    # NAFNet checkpoints written before heads/ffn_expand existed keep their signature
    fields = set(restorer_signature(TINY)["model"])
    assert fields == {"arch", "width", "enc_blocks", "middle_blocks", "dec_blocks"}


class _Oracle:
    """A restorer that returns the clean image: the best any restorer can score."""

    backend = "oracle"
    output_names = ("restored",)

    def __init__(self, clean: np.ndarray) -> None:
        self.clean = to_tensor(clean).numpy()
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.clean[self.calls : self.calls + len(batch)]
        self.calls += len(batch)
        return {"restored": out}


class _Identity:
    backend = "identity"
    output_names = ("restored",)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"restored": batch}


def _block_split() -> PairSplit:
    rng = np.random.default_rng(1)
    clean = rng.integers(30, 220, (6, 24, 24, 3), dtype=np.uint8)
    noise = rng.normal(0, 12, clean.shape)
    noisy = np.clip(clean + noise, 0, 255).astype(np.uint8)
    info = [{"iso": 100 if i < 3 else 3200} for i in range(6)]
    return PairSplit("val", Path("."), blocks_degraded=noisy, blocks_clean=clean, block_info=info)


def test_evaluation_scores_against_the_clean_image_beside_the_input(tmp_path):
    split = _block_split()
    identity = evaluate_restorer(_Identity(), split, tmp_path / "id", tmp_path / "id.json", batch_size=4)
    assert identity["psnr"] == pytest.approx(identity["psnr_input"])
    assert identity["psnr_gain"] == pytest.approx(0.0)
    expected = np.mean([psnr(split.blocks_degraded[i], split.blocks_clean[i]) for i in range(6)])
    assert identity["psnr_input"] == pytest.approx(expected, abs=1e-3)
    assert set(identity["per_iso"]) == {"100", "3200"}
    assert identity["per_iso"]["100"]["num_samples"] == 3
    assert "data_range=255" in identity["ssim_settings"]
    oracle = evaluate_restorer(
        _Oracle(split.blocks_clean), split, tmp_path / "o", tmp_path / "o.json", batch_size=4
    )
    assert math.isnan(oracle["psnr"]) or oracle["psnr"] > 90  # identical images: PSNR is infinite
    assert oracle["ssim"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "o.json").read_text())["backend"] == "oracle"
    assert (tmp_path / "o" / "samples.png").stat().st_size > 0


@pytest.fixture(scope="module")
def restorer_onnx(tmp_path_factory) -> tuple[NAFNet, Path]:
    torch.manual_seed(0)
    model = NAFNet(NAFNetConfig(width=4, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))).eval()
    path = tmp_path_factory.mktemp("restorer") / "model.onnx"
    export_onnx(model, RestorerMetadata(task="sidd", pad_multiple=model.pad_multiple), path)
    return model, path


def test_the_restorer_onnx_takes_any_size_and_carries_its_metadata(restorer_onnx):
    model, path = restorer_onnx
    contract = read_onnx_contract(path, RestorerMetadata)
    assert contract.input_chw == (3, None, None) and contract.input_batch is None
    assert contract.metadata == RestorerMetadata(task="sidd", pad_multiple=2)
    reference, exported = (
        TorchPredictor(model, contract=RESTORER),
        OnnxRuntimePredictor(path, contract=RESTORER),
    )
    for shape in ((1, 3, 17, 30), (2, 3, 64, 48)):
        batch = np.random.default_rng(0).random(shape, dtype=np.float32)
        np.testing.assert_allclose(exported(batch)["restored"], reference(batch)["restored"], atol=1e-5)


def test_a_model_of_the_other_family_breaks_the_contract(restorer_onnx, tmp_path):
    _, path = restorer_onnx
    with pytest.raises(ExportError, match="do not match the detector contract"):
        read_onnx_contract(path, OnnxMetadata)
    with pytest.raises(ExportError, match="do not match the detector contract"):
        OnnxRuntimePredictor(path)  # the detector's contract by default
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "pad_multiple":
            prop.value = "0"
    broken = tmp_path / "broken.onnx"
    onnx.save_model(proto, str(broken))
    with pytest.raises(ExportError, match="pad_multiple.*positive integer"):
        read_onnx_contract(broken, RestorerMetadata)


def test_int8_quantises_the_convolutions_and_keeps_the_pixel_layers_float(restorer_onnx, tmp_path):
    model, path = restorer_onnx
    rng = np.random.default_rng(0)
    batches = [rng.random((4, 3, 32, 32), dtype=np.float32) for _ in range(2)]
    settings = QuantizeSettings(
        "minmax", per_channel=True, keep_input_layers=True, keep_output_layers=True, op_types=("Conv",)
    )
    report = quantize_int8(path, tmp_path / "int8.onnx", batches, settings, metadata_type=RestorerMetadata)
    assert report.float_compute_ops.get("Conv") == 2  # the first and the last convolution
    assert report.executed_ops.get("QLinearConv", 0) > 0
    assert read_onnx_contract(tmp_path / "int8.onnx", RestorerMetadata).has_qdq
    batch = rng.random((1, 3, 40, 24), dtype=np.float32)
    quantized = OnnxRuntimePredictor(tmp_path / "int8.onnx", contract=RESTORER)(batch)["restored"]
    assert quantized.shape == batch.shape
    with pytest.raises(ExportError, match=r"takes float32 \(N, 3, any, any\)"):
        quantize_int8(
            path, tmp_path / "bad.onnx", [batches[0][:, :1]], settings, metadata_type=RestorerMetadata
        )


@pytest.mark.slow
def test_sidd_steps_from_the_command_line(tmp_path):
    params_path = write_params(tmp_path, tiny_params_dict(tmp_path))
    for step in ("ingest", "train", "export", "quantize", "build-engine", "validate"):
        done = run_cli(step, "sidd", "--params", str(params_path), cwd=tmp_path)
        assert done.returncode == 0, f"{step}: {done.stderr[-2000:]}"
    params = load_params(params_path)
    artifacts = params.project.artifacts_dir / "sidd"
    gates = json.loads((artifacts / "validation" / "gates.json").read_text())
    assert gates["passed"], gates["gates"]
    assert {g["name"] for g in gates["gates"] if g["skipped"]} == {"psnr_drop_trt-fp16", "psnr_drop_trt-int8"}
    for backend in ("pytorch", "onnx", "onnx-int8"):
        metrics = json.loads((artifacts / "metrics" / f"{backend}.json").read_text())
        assert metrics["psnr_input"] == gates["metrics"]["pytorch"]["psnr_input"]
    # weights of one width cannot be exported under a config of another
    wider = run_cli(
        "export", "sidd", "--params", str(params_path), "--set", "sidd.model.width=16", cwd=tmp_path
    )
    assert wider.returncode == 2
    assert "width" in wider.stderr and "different model config" in wider.stderr

"""TensorRT engines: everything around the builder with real files; the build itself where TensorRT runs.

The ONNX models are the tiny hand-written detectors of ``tests.ops.deploy.test_export`` (a few Conv
nodes honouring the contract), so these tests depend on neither torch export nor a trained
model. The ONNX contract itself is tested there, with its reader; here only what concerns
engines. Tests that need TensorRT and a CUDA GPU are skipped elsewhere with the reason shown.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ops.deploy.export import OnnxMetadata, read_onnx_contract
from ops.deploy.runtime import OUTPUT_NAMES
from ops.deploy.tensorrt import (
    SIDECAR_SCHEMA_VERSION,
    CalibrationFeed,
    EngineBuildResult,
    EngineSidecar,
    EngineSkip,
    TensorRTPredictor,
    build_engine,
    check_calibration_batch,
    check_engine_compatible,
    check_input_batch,
    describe_gpu,
    read_calibration_cache,
    sidecar_path,
    tensorrt_unavailable_reason,
    write_calibration_cache,
)
from ops.errors import EngineError, ExportError
from ops.io import sha256_file
from tests.ops.deploy.test_export import TINY_CHW, TINY_METADATA, TINY_SIZE, write_tiny_onnx

UNAVAILABLE = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"needs TensorRT and a CUDA GPU: {UNAVAILABLE}"
)

SIZE = TINY_SIZE  # input H = W; outputs are at stride 4
CHW = TINY_CHW


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return write_tiny_onnx(tmp_path / "model.onnx")


def make_sidecar(**changes) -> EngineSidecar:
    values = dict(
        schema_version=SIDECAR_SCHEMA_VERSION,
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA A100-SXM4-80GB",
        compute_capability="8.0",
        precision="fp16",
        quantization="none",
        input_name="images",
        min_batch=1,
        opt_batch=1,
        max_batch=8,
        input_chw=CHW,
        onnx_path="artifacts/traffic/onnx/model.onnx",
        onnx_sha256="a" * 64,
        engine_sha256="b" * 64,
        engine_bytes=1234,
        built_at="2026-11-21T22:00:00+00:00",
        metadata=OnnxMetadata(**TINY_METADATA, pad_value=[0, 0, 0], color_order="BGR").to_props(),
    )
    values.update(changes)
    return EngineSidecar(**values)


# --------------------------------------------------------------------------- sidecar


def test_sidecar_path_sits_beside_the_engine():
    assert sidecar_path(Path("out/model_fp16.engine")) == Path("out/model_fp16.engine.json")


def test_sidecar_round_trip_through_a_json_file(tmp_path):
    sidecar = make_sidecar()
    path = sidecar.to_json(tmp_path / "model_fp16.engine.json")
    raw = json.loads(path.read_text())
    assert raw["input_chw"] == list(CHW)
    assert raw["metadata"] == sidecar.metadata and all(isinstance(v, str) for v in raw["metadata"].values())
    loaded = EngineSidecar.from_json(path)
    assert loaded == sidecar
    # Every metadata field survives, not only those the builder happened to need.
    metadata = loaded.onnx_metadata()
    assert metadata == OnnxMetadata(**TINY_METADATA, pad_value=[0, 0, 0], color_order="BGR")
    assert (metadata.output_stride, metadata.resize, metadata.pixel_scale) == (4, "letterbox", 1 / 255)
    assert [p.name for p in tmp_path.iterdir()] == ["model_fp16.engine.json"]  # no temp file left


def test_sidecar_metadata_is_the_onnx_metadata_props(tiny_onnx):
    """The sidecar carries the same props the ONNX file does, so one parser reads both."""
    contract = read_onnx_contract(tiny_onnx)
    raw = json.loads(json.dumps(make_sidecar(metadata=contract.metadata.to_props()).to_dict()))
    sidecar = EngineSidecar.from_dict(raw)
    assert sidecar.onnx_metadata() == contract.metadata


def test_old_schema_sidecar_asks_for_a_rebuild(tmp_path):
    data = make_sidecar().to_dict()
    del data["metadata"]
    data.update(schema_version=1, mean=[0.5] * 3, std=[0.2] * 3, input_size=SIZE, class_names=["car"])
    path = tmp_path / "model.engine.json"
    path.write_text(json.dumps(data))
    message = r"schema_version 1; .* reads version \d+: rebuild the engine"
    with pytest.raises(EngineError, match=message) as excinfo:
        EngineSidecar.from_json(path)
    assert str(path) in str(excinfo.value)


def test_missing_sidecar_is_an_engine_error_naming_it(tmp_path):
    with pytest.raises(EngineError, match="sidecar not found: .*model.engine.json"):
        EngineSidecar.from_json(tmp_path / "model.engine.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, got list"),
        (lambda d: d.pop("gpu_name"), r"missing keys \['gpu_name'\]"),
        (lambda d: d.update(colour="red"), r"unknown keys \['colour'\]"),
        (lambda d: d.update(precision="fp32"), "precision: expected one of .*got 'fp32'"),
        (lambda d: d.update(max_batch=-1), "max_batch: expected a positive integer"),
        (lambda d: d.update(opt_batch=4, max_batch=2), "min_batch <= opt_batch <= max_batch"),
        (lambda d: d.update(input_chw=[3, 16]), "input_chw: expected"),
        (lambda d: d.update(compute_capability=9), "compute_capability: expected 'major.minor'"),
        (lambda d: d.update(built_at="yesterday"), "built_at: expected an ISO 8601 time"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d.update(metadata=["mean"]), "metadata: expected an object of JSON-encoded strings"),
        (lambda d: d["metadata"].update(input_size=SIZE), "metadata: expected an object of JSON-encoded"),
        (lambda d: d["metadata"].pop("output_stride"), r"bad metadata .*lacks \['output_stride'\]"),
        (lambda d: d["metadata"].update(mean="[0.5, 0.5]"), r"bad metadata .*'mean'.* must be"),
        (lambda d: d["metadata"].update(color_order='""'), r"bad metadata .*'color_order'"),
        (lambda d: d["metadata"].update(pad_value="[114, 114"), r"bad metadata .*'pad_value'.* not JSON"),
        (lambda d: d["metadata"].update(input_size="32"), "input_size 32 disagrees with input_chw"),
    ],
)
def test_malformed_sidecar_is_an_engine_error_naming_file_and_problem(tmp_path, content, message):
    path = tmp_path / "model.engine.json"
    if callable(content):
        data = make_sidecar().to_dict()
        content(data)
        path.write_text(json.dumps(data))
    else:
        path.write_text(content)
    with pytest.raises(EngineError, match=message) as excinfo:
        EngineSidecar.from_json(path)
    assert str(path) in str(excinfo.value)


# --------------------------------------------------------------------------- compatibility


def test_compatibility_accepts_the_same_version_and_gpu():
    check_engine_compatible(make_sidecar(), "10.3.0", "NVIDIA A100-SXM4-80GB", "8.0")


def test_compatibility_refuses_another_tensorrt_version_naming_both():
    with pytest.raises(EngineError) as excinfo:
        check_engine_compatible(make_sidecar(), "10.5.0", "NVIDIA A100-SXM4-80GB", "8.0", engine="m.engine")
    message = str(excinfo.value)
    assert "TensorRT 10.3.0" in message and "TensorRT 10.5.0" in message
    assert "m.engine" in message and "rebuild" in message
    assert "compute capability" not in message  # the GPU matched: only the real problem is named


def test_compatibility_refuses_another_gpu_naming_both():
    with pytest.raises(EngineError) as excinfo:
        check_engine_compatible(make_sidecar(), "10.3.0", "NVIDIA H200", "9.0")
    message = str(excinfo.value)
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in message
    assert "NVIDIA H200 (compute capability 9.0)" in message


def test_compatibility_refuses_same_name_with_another_compute_capability():
    with pytest.raises(EngineError, match="compute capability 8.6"):
        check_engine_compatible(make_sidecar(), "10.3.0", "NVIDIA A100-SXM4-80GB", "8.6")


# --------------------------------------------------------------------------- batches


def test_calibration_batch_accepts_a_good_batch():
    check_calibration_batch(0, np.zeros((4, *CHW), np.float32), CHW, 4)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            np.zeros((4, *CHW), np.float64),
            "calibration batch 3 has dtype float64 but the network input 'images' is float32",
        ),
        (
            np.zeros(CHW, np.float32),
            r"calibration batch 3 has shape \(3, 16, 16\) but the network input 'images' is \(B, 3, 16, 16\)",
        ),
        (
            np.zeros((4, 3, 32, 32), np.float32),
            r"has shape \(4, 3, 32, 32\) but the network input 'images' is \(B, 3, 16, 16\)",
        ),
        (np.zeros((4, 1, 16, 16), np.float32), r"has shape \(4, 1, 16, 16\)"),
        (np.zeros((2, *CHW), np.float32), "has 2 images but the calibrator's batch size is 4"),
        (np.full((4, *CHW), np.nan, np.float32), "NaN or infinite"),
        ([[0.0]], "is a list, expected a numpy float32 NCHW array"),
    ],
)
def test_calibration_batch_refuses_wrong_input_with_a_clear_message(batch, message):
    with pytest.raises(EngineError, match=message):
        check_calibration_batch(3, batch, CHW, 4)


def test_calibration_feed_takes_batch_size_from_first_batch_and_stops_at_a_bad_one():
    good = np.ones((2, *CHW), np.float32)
    feed = CalibrationFeed([good, good, np.ones((2, 3, 8, 8), np.float32)], CHW)
    assert feed.batch_size == 2
    assert feed.next_batch() is not None and feed.next_batch() is not None
    with pytest.raises(EngineError, match="calibration batch 2 has shape"):
        feed.next_batch()
    assert CalibrationFeed(iter([good]), CHW).next_batch().flags["C_CONTIGUOUS"]


def test_calibration_feed_ends_with_none_and_refuses_empty_data():
    feed = CalibrationFeed(iter([np.zeros((1, *CHW), np.float32)]), CHW)
    assert feed.next_batch() is not None
    assert feed.next_batch() is None
    with pytest.raises(EngineError, match="at least one batch"):
        CalibrationFeed([], CHW)


def test_input_batch_is_checked_against_the_engine_profile():
    check_input_batch(np.zeros((8, *CHW), np.float32), CHW, 1, 8)
    with pytest.raises(EngineError, match="batch of 9 images is outside the engine's profile"):
        check_input_batch(np.zeros((9, *CHW), np.float32), CHW, 1, 8)
    with pytest.raises(EngineError, match="must be a numpy float32 array, got float64"):
        check_input_batch(np.zeros((1, *CHW)), CHW, 1, 8)
    with pytest.raises(EngineError, match=r"\(B, 3, 16, 16\)"):
        check_input_batch(np.zeros((1, 16, 16, 3), np.float32), CHW, 1, 8)


# --------------------------------------------------------------------------- calibration cache


def test_calibration_cache_is_bound_to_the_onnx_file(tmp_path):
    cache = tmp_path / "calib" / "model.calib"
    write_calibration_cache(cache, b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n", "a" * 64)
    assert read_calibration_cache(cache, "a" * 64).startswith(b"TRT-1003")
    assert read_calibration_cache(cache, "b" * 64) is None  # retrained model: recalibrate
    assert read_calibration_cache(tmp_path / "absent.calib", "a" * 64) is None
    Path(str(cache) + ".json").unlink()
    assert read_calibration_cache(cache, "a" * 64) is None  # binding lost: do not trust it
    assert sorted(p.name for p in cache.parent.iterdir()) == ["model.calib"]


# --------------------------------------------------------------------------- build_engine


# A bad ONNX file is an ExportError (the export artefact is at fault; re-export it), raised by
# the contract reader before the TensorRT availability check: an error on every machine.


def test_build_engine_refuses_a_missing_onnx_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(ExportError, match="ONNX model not found") as excinfo:
        build_engine(missing, tmp_path / "model_fp16.engine", "fp16")
    assert str(missing) in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_build_engine_refuses_a_corrupt_onnx_file(tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage, not protobuf")
    with pytest.raises(ExportError, match="not a valid ONNX model") as excinfo:
        build_engine(corrupt, tmp_path / "model_fp16.engine", "fp16")
    assert str(corrupt) in str(excinfo.value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_build_engine_refuses_an_onnx_file_breaking_the_contract(tmp_path):
    bad = write_tiny_onnx(tmp_path / "model.onnx", output_names=("heatmap", "size", "offset"))
    with pytest.raises(ExportError, match="do not match the detector contract") as excinfo:
        build_engine(bad, tmp_path / "model_fp16.engine", "fp16")
    assert str(bad) in str(excinfo.value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(precision="fp32"), r"precision must be one of \['fp16', 'int8'\]"),
        (dict(precision="fp16", opt_batch=16), "min_batch <= opt_batch <= max_batch"),
        (dict(precision="int8"), "needs scales: the model has no Q/DQ nodes"),
        (dict(precision="int8", calibration_cache="absent.calib"), "absent.calib is missing or belongs"),
    ],
)
def test_build_engine_refuses_bad_requests_on_every_machine(tiny_onnx, tmp_path, kwargs, message):
    with pytest.raises(EngineError, match=message):
        build_engine(tiny_onnx, tmp_path / "model.engine", **kwargs)


def test_build_engine_refuses_fp16_from_a_qdq_model_and_a_fixed_batch_model(tmp_path):
    qdq = write_tiny_onnx(tmp_path / "qdq.onnx", qdq=True)
    with pytest.raises(EngineError, match="QuantizeLinear/DequantizeLinear"):
        build_engine(qdq, tmp_path / "a.engine", "fp16")
    fixed = write_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(EngineError, match="fixes the batch .* at 1 .* 1..8"):
        build_engine(fixed, tmp_path / "b.engine", "fp16", max_batch=8)


@pytest.mark.skipif(
    UNAVAILABLE is None, reason="TensorRT and a GPU are present: engines are built, not skipped"
)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_engine_without_tensorrt_skips_with_the_reason_and_writes_nothing(
    tiny_onnx, tmp_path, precision
):
    engine = tmp_path / "out" / f"model_{precision}.engine"
    batches = [np.zeros((2, *CHW), np.float32)] if precision == "int8" else None
    result = build_engine(
        tiny_onnx,
        engine,
        precision,
        calibration_batches=batches,
        calibration_cache=tmp_path / "out" / "model.calib",
        timing_cache=tmp_path / "out" / "timing.cache",
    )
    assert isinstance(result, EngineSkip)
    assert result.reason == UNAVAILABLE
    assert "tensorrt" in result.reason.lower() or "CUDA" in result.reason
    assert result.to_dict() == {
        "status": "skipped",
        "precision": precision,
        "reason": UNAVAILABLE,
        "engine_path": str(engine),
    }
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no engine, cache or temp file


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are present")
def test_unavailable_reason_says_what_is_missing_here():
    assert UNAVAILABLE.startswith(("tensorrt is not installed", "no CUDA device", "TensorRT ", "tensorrt is"))


@pytest.mark.skipif(UNAVAILABLE is None, reason="a CUDA device is present")
def test_describe_gpu_without_cuda_is_an_engine_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(EngineError, match="no CUDA device"):
        describe_gpu()


# --------------------------------------------------------------------------- TensorRTPredictor


def test_predictor_refuses_a_missing_engine(tmp_path):
    with pytest.raises(EngineError, match="TensorRT engine not found: .*model_fp16.engine"):
        TensorRTPredictor(tmp_path / "model_fp16.engine")


def test_predictor_refuses_an_engine_without_sidecar(tmp_path):
    engine = tmp_path / "model_fp16.engine"
    engine.write_bytes(b"serialized engine")
    with pytest.raises(EngineError, match="sidecar not found: .*model_fp16.engine.json"):
        TensorRTPredictor(engine)


def test_predictor_refuses_a_truncated_engine_before_touching_tensorrt(tmp_path):
    engine = tmp_path / "model_fp16.engine"
    data = bytes(range(256)) * 8
    engine.write_bytes(data[:100])  # the build was cut short, or the file was copied partially
    make_sidecar(engine_sha256=hashlib.sha256(data).hexdigest(), engine_bytes=len(data)).to_json(
        sidecar_path(engine)
    )
    with pytest.raises(EngineError, match="is truncated or was replaced") as excinfo:
        TensorRTPredictor(engine)
    assert str(engine) in str(excinfo.value)


@pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT and a GPU are present")
def test_predictor_without_tensorrt_names_the_engine_and_the_reason(tmp_path):
    engine = tmp_path / "model_fp16.engine"
    engine.write_bytes(b"serialized engine")
    make_sidecar(engine_sha256=hashlib.sha256(b"serialized engine").hexdigest(), engine_bytes=17).to_json(
        sidecar_path(engine)
    )
    with pytest.raises(EngineError, match="cannot run TensorRT engine") as excinfo:
        TensorRTPredictor(engine)
    assert str(engine) in str(excinfo.value) and UNAVAILABLE in str(excinfo.value)


# --------------------------------------------------------------------------- on a GPU with TensorRT


def _onnxruntime_outputs(onnx_path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": batch}), strict=True))


@needs_tensorrt
def test_fp16_engine_matches_onnxruntime(tiny_onnx, tmp_path):
    engine = tmp_path / "model_fp16.engine"
    timing = tmp_path / "timing.cache"
    result = build_engine(tiny_onnx, engine, "fp16", timing_cache=timing, max_batch=4, opt_batch=2)
    assert isinstance(result, EngineBuildResult)
    assert engine.is_file() and timing.is_file() and result.sidecar_path == sidecar_path(engine)
    sidecar = EngineSidecar.from_json(result.sidecar_path)
    assert sidecar.precision == "fp16" and sidecar.onnx_metadata().class_names == ["car", "truck"]
    assert sidecar.metadata == read_onnx_contract(tiny_onnx).metadata.to_props()
    json.dumps(result.to_dict())

    predictor = TensorRTPredictor(engine)
    assert predictor.backend == "trt-fp16"
    batch = np.random.default_rng(1).normal(size=(3, *CHW)).astype(np.float32)
    got, want = predictor(batch), _onnxruntime_outputs(tiny_onnx, batch)
    for name in OUTPUT_NAMES:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-2, atol=1e-2)
    with pytest.raises(EngineError, match="outside the engine's profile"):
        predictor(np.zeros((5, *CHW), np.float32))

    # A second build reuses the timing cache written by the first.
    assert isinstance(
        build_engine(tiny_onnx, engine, "fp16", timing_cache=timing, max_batch=4), EngineBuildResult
    )


@needs_tensorrt
def test_int8_engine_from_calibration_batches_writes_a_reusable_cache(tiny_onnx, tmp_path):
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(2, *CHW)).astype(np.float32) for _ in range(4)]
    cache = tmp_path / "model.calib"
    result = build_engine(
        tiny_onnx,
        tmp_path / "model_int8.engine",
        "int8",
        calibration_batches=batches,
        calibration_cache=cache,
        max_batch=4,
    )
    assert isinstance(result, EngineBuildResult) and result.sidecar.quantization == "calibrated"
    onnx_sha = sha256_file(tiny_onnx)
    assert read_calibration_cache(cache, onnx_sha) is not None
    # The cache alone is enough for the next build.
    again = build_engine(
        tiny_onnx, tmp_path / "again_int8.engine", "int8", calibration_cache=cache, max_batch=4
    )
    assert isinstance(again, EngineBuildResult)
    predictor = TensorRTPredictor(again.engine_path)
    assert predictor.backend == "trt-int8"
    outputs = predictor(batches[0])
    assert all(np.isfinite(outputs[name]).all() for name in OUTPUT_NAMES)


@needs_tensorrt
def test_int8_engine_from_qdq_model_needs_no_calibration(tmp_path):
    qdq = write_tiny_onnx(tmp_path / "qdq.onnx", qdq=True)
    result = build_engine(qdq, tmp_path / "model_int8.engine", "int8", max_batch=2)
    assert isinstance(result, EngineBuildResult) and result.sidecar.quantization == "explicit"
    batch = np.random.default_rng(3).normal(size=(2, *CHW)).astype(np.float32)
    got = TensorRTPredictor(result.engine_path)(batch)
    assert got["heatmap"].shape == (2, 2, SIZE // 4, SIZE // 4)


@needs_tensorrt
def test_bad_calibration_batch_fails_the_build_with_its_index(tiny_onnx, tmp_path):
    batches = [np.zeros((2, *CHW), np.float32), np.zeros((2, 3, 8, 8), np.float32)]
    engine = tmp_path / "model_int8.engine"
    with pytest.raises(EngineError, match="calibration batch 1 has shape"):
        build_engine(tiny_onnx, engine, "int8", calibration_batches=batches, max_batch=2)
    assert not engine.exists()

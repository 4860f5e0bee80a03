"""TensorRT engines: build FP16 / INT8 engines from the ONNX contract and run them as a Predictor.

This is the only module that talks to TensorRT. Every ``import tensorrt`` sits inside a
function, so the module imports (and everything around the builder is testable) on
machines without TensorRT or a GPU: the pipeline then records an :class:`EngineSkip` that
says why, and never writes a file that looks like an engine.

Why the pieces exist:

- A TensorRT engine is not portable: it only runs under the TensorRT version and on the
  GPU model it was built with. Every engine therefore gets a JSON *sidecar*
  (``model_fp16.engine`` + ``model_fp16.engine.json``) recording both, the input shape
  profile, the hashes of the ONNX source and of the engine bytes, and the ONNX model's
  complete ``metadata_props`` (key for key, the same JSON-encoded values), so a consumer can
  refuse an incompatible or swapped engine with a message instead of a crash, and can pre-
  and post-process without the ONNX file at hand. Keeping the metadata in the ONNX form means
  one parser (:meth:`ops.deploy.export.OnnxMetadata.from_props`, and ``parse_onnx_metadata`` in C++)
  reads it for both model formats, and a field added to the metadata reaches engines as well.
- INT8 comes in two flavours. A QDQ ONNX model (explicit quantisation, TensorRT's
  recommended path) carries its scales in its QuantizeLinear/DequantizeLinear nodes and
  needs no calibration. A plain FP32 model needs calibration batches (implicit
  quantisation through ``IInt8EntropyCalibrator2``, deprecated since TensorRT 10.1 but
  still supported in 10.x) or a calibration cache written for that same ONNX file.
- ONNX Runtime runs some INT8 convolutions faster with non-zero weight zero points
  (:mod:`ops.deploy.conv_kernels`); TensorRT takes only zero ones, so the builder parses a
  copy with those layers' weights stored symmetric again, which is exact.
- Input checks (calibration batches, inference batches, sidecar fields, version/GPU
  compatibility) are plain functions, so they are tested without TensorRT. The ONNX file
  itself is checked by :func:`ops.deploy.export.read_onnx_contract`, the one reader of the
  contract, before anything here needs TensorRT.

The builder targets TensorRT 10's Python API. TensorRT 11 removed the weakly typed
precision flags (``BuilderFlag.FP16``/``INT8``) and calibrators this builder relies on, so
another major version is reported as unavailable rather than failing half-way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ops.deploy.export import OnnxContract, OnnxMetadata, is_positive_int, read_onnx_contract
from ops.deploy.runtime import INPUT_NAME, OUTPUT_NAMES
from ops.errors import EngineError, ExportError
from ops.io import atomic_path, write_json

log = logging.getLogger(__name__)

Precision = Literal["fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp16", "int8")
# How the INT8 scales were obtained: "none" for FP16, "explicit" from Q/DQ nodes in the ONNX
# model, "calibrated" by TensorRT's entropy calibrator (or a calibration cache).
Quantization = Literal["none", "explicit", "calibrated"]
QUANTIZATION_MODES: tuple[str, ...] = ("none", "explicit", "calibrated")

SUPPORTED_TENSORRT_MAJOR = 10
DEFAULT_WORKSPACE_BYTES = 2 << 30  # 2 GiB: plenty for a ResNet-18 detector, small for any data-centre GPU
# 2: the ONNX metadata_props as one `metadata` object instead of mean/std/input_size/class_names.
SIDECAR_SCHEMA_VERSION = 2
INSTALL_HINT = "pip install 'visionforge[tensorrt]' on a machine that can reach NVIDIA's package index"


# --------------------------------------------------------------------------- availability


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built or run here, or None when they can.

    Engines need both the ``tensorrt`` package (a supported major version) and a visible
    CUDA device; the reason is shown to users in skip records, so it says what to do.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return f"tensorrt is not installed ({INSTALL_HINT})"
    except Exception as exc:  # its native libraries can fail to load (missing CUDA runtime, driver)
        return f"tensorrt is installed but fails to import ({type(exc).__name__}: {exc})"
    version = str(getattr(trt, "__version__", "unknown"))
    if _major_version(version) != SUPPORTED_TENSORRT_MAJOR:
        return (
            f"TensorRT {version} is installed but visionforge's engine builder is written for "
            f"TensorRT {SUPPORTED_TENSORRT_MAJOR}.x (pip install 'tensorrt>={SUPPORTED_TENSORRT_MAJOR},"
            f"<{SUPPORTED_TENSORRT_MAJOR + 1}')"
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device: TensorRT engines need an NVIDIA GPU (torch.cuda.is_available() is False)"
    return None


def _major_version(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or run on; engines are tied to both values."""

    name: str
    compute_capability: str  # "major.minor", e.g. "9.0" for Hopper


def describe_gpu(device: int | None = None) -> GpuInfo:
    """Name and compute capability of a CUDA device (the current one by default)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError("no CUDA device: TensorRT engines need an NVIDIA GPU")
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}")


# --------------------------------------------------------------------------- the sidecar


def sidecar_path(engine_path: Path | str) -> Path:
    """``model_fp16.engine`` -> ``model_fp16.engine.json`` (beside the engine, never instead of it)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@dataclass(frozen=True)
class EngineSidecar:
    """Everything needed to decide whether an engine may run here, and how to feed it."""

    schema_version: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # one of PRECISIONS
    quantization: str  # one of QUANTIZATION_MODES
    input_name: str
    min_batch: int
    opt_batch: int
    max_batch: int
    input_chw: tuple[int, int, int]
    onnx_path: str
    onnx_sha256: str
    engine_sha256: str
    engine_bytes: int
    built_at: str  # ISO 8601, UTC
    # The ONNX model's metadata_props as the file carries them (OnnxMetadata.to_props):
    # every value a JSON document, so they are parsed exactly as the ONNX file's would be.
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def onnx_metadata(self) -> OnnxMetadata:
        """The parsed pre- and post-processing facts; ``from_dict`` has already checked them."""
        return OnnxMetadata.from_props(Path(self.onnx_path), self.metadata, channels=self.input_chw[0])

    def to_json(self, path: Path | str) -> Path:
        """Write atomically: a crash never leaves a half-written sidecar."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: Path | str) -> EngineSidecar:
        path = Path(path)
        if not path.is_file():
            raise EngineError(
                f"engine sidecar not found: {path} (every engine needs the JSON written beside it "
                "by build_engine; rebuild the engine)"
            )
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EngineError(f"engine sidecar {path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<sidecar>") -> EngineSidecar:
        """Validate every field: a sidecar decides whether an engine runs, so guesses are not allowed."""
        if not isinstance(raw, dict):
            raise EngineError(f"engine sidecar {source} must hold a JSON object, got {type(raw).__name__}")
        # The version comes first: an older sidecar has other keys, and "rebuild the engine"
        # is the useful answer, not a list of them.
        if "schema_version" in raw and raw["schema_version"] != SIDECAR_SCHEMA_VERSION:
            raise EngineError(
                f"engine sidecar {source} has schema_version {raw['schema_version']!r}; this visionforge "
                f"reads version {SIDECAR_SCHEMA_VERSION}: rebuild the engine"
            )
        expected = [f.name for f in dataclasses.fields(cls)]
        missing = [key for key in expected if key not in raw]
        unknown = sorted(key for key in raw if key not in expected)
        if missing or unknown:
            parts = [f"missing keys {missing}"] if missing else []
            parts += [f"unknown keys {unknown}"] if unknown else []
            raise EngineError(f"engine sidecar {source} is malformed: {'; '.join(parts)}")
        problems = [
            f"{key}: expected {rule}, got {raw[key]!r}"
            for key, (check, rule) in _SIDECAR_RULES.items()
            if not check(raw[key])
        ]
        if not problems and not raw["min_batch"] <= raw["opt_batch"] <= raw["max_batch"]:
            problems.append("batch profile: expected min_batch <= opt_batch <= max_batch")
        if problems:
            raise EngineError(f"engine sidecar {source} is malformed: " + "; ".join(problems))
        channels, height, width = raw["input_chw"]
        try:
            metadata = OnnxMetadata.from_props(Path(source), raw["metadata"], channels=channels)
        except ExportError as exc:
            raise EngineError(
                f"engine sidecar {source} has bad metadata ({exc}): rebuild the engine"
            ) from None
        if (height, width) != (metadata.input_size, metadata.input_size):
            raise EngineError(
                f"engine sidecar {source} is malformed: metadata input_size {metadata.input_size} "
                f"disagrees with input_chw {raw['input_chw']}"
            )
        values = {key: tuple(v) if isinstance(v, list) else v for key, v in raw.items()}
        values["metadata"] = dict(raw["metadata"])
        return cls(**values)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_iso_time(value: Any) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value) is not None
    except ValueError:
        return False


_SIDECAR_RULES: dict[str, tuple[Any, str]] = {
    "tensorrt_version": (_is_text, "a version string"),
    "gpu_name": (_is_text, "a GPU name"),
    "compute_capability": (
        lambda v: isinstance(v, str) and all(p.isdigit() for p in v.split(".")) and v.count(".") == 1,
        "'major.minor'",
    ),
    "precision": (lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}"),
    "quantization": (lambda v: v in QUANTIZATION_MODES, f"one of {list(QUANTIZATION_MODES)}"),
    "input_name": (_is_text, "a tensor name"),
    "min_batch": (is_positive_int, "a positive integer"),
    "opt_batch": (is_positive_int, "a positive integer"),
    "max_batch": (is_positive_int, "a positive integer"),
    "input_chw": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(is_positive_int(d) for d in v),
        "[C, H, W] positive integers",
    ),
    "onnx_path": (lambda v: isinstance(v, str), "a path string"),
    "onnx_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256 hex digest"),
    "engine_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256 hex digest"),
    "engine_bytes": (is_positive_int, "a positive integer"),
    "built_at": (_is_iso_time, "an ISO 8601 time"),
    "metadata": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of JSON-encoded strings (the ONNX metadata_props)",
    ),
}


def check_engine_compatible(
    sidecar: EngineSidecar,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    *,
    engine: Path | str | None = None,
) -> None:
    """Refuse an engine built by another TensorRT version or on another GPU model.

    TensorRT only guarantees an engine on the exact version and GPU it was built with;
    anything else fails to deserialise at best and misbehaves at worst, so both sides are
    named and the fix (rebuild here) is stated.
    """
    problems = []
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(
            f"it was built with TensorRT {sidecar.tensorrt_version} but this machine runs "
            f"TensorRT {tensorrt_version}"
        )
    if sidecar.gpu_name != gpu_name or sidecar.compute_capability != compute_capability:
        problems.append(
            f"it was built on {sidecar.gpu_name} (compute capability {sidecar.compute_capability}) "
            f"but this machine has {gpu_name} (compute capability {compute_capability})"
        )
    if problems:
        what = f"TensorRT engine {engine}" if engine is not None else "the TensorRT engine"
        raise EngineError(
            f"{what} cannot run here: {'; '.join(problems)}. Engines are not portable across "
            "TensorRT versions or GPU models: rebuild it from the ONNX model on this machine"
        )


# --------------------------------------------------------------------------- batches


def _expected_shape(input_chw: tuple[int, int, int]) -> str:
    return "(B, " + ", ".join(str(d) for d in input_chw) + ")"


def check_calibration_batch(
    index: int,
    batch: Any,
    expected_chw: tuple[int, int, int],
    batch_size: int,
    *,
    input_name: str = INPUT_NAME,
) -> None:
    """Refuse a calibration batch TensorRT would misread: it only receives a raw device pointer.

    A wrong dtype or shape would be silently reinterpreted as float32 NCHW memory and the
    INT8 scales computed from garbage, so every batch is checked before it is copied.
    """
    where = f"calibration batch {index}"
    if not isinstance(batch, np.ndarray):
        raise EngineError(f"{where} is a {type(batch).__name__}, expected a numpy float32 NCHW array")
    if batch.dtype != np.float32:
        raise EngineError(
            f"{where} has dtype {batch.dtype} but the network input {input_name!r} is float32 "
            "(normalised images, as the model was trained on)"
        )
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(expected_chw):
        raise EngineError(
            f"{where} has shape {tuple(batch.shape)} but the network input {input_name!r} is "
            f"{_expected_shape(expected_chw)}"
        )
    if batch.shape[0] != batch_size:
        raise EngineError(
            f"{where} has {batch.shape[0]} images but the calibrator's batch size is {batch_size} "
            "(set by the first batch): every calibration batch must have the same size; drop a "
            "partial last batch"
        )
    if not np.isfinite(batch).all():
        raise EngineError(f"{where} contains NaN or infinite values")


def check_input_batch(
    batch: Any,
    input_chw: tuple[int, int, int],
    min_batch: int,
    max_batch: int,
    *,
    input_name: str = INPUT_NAME,
) -> None:
    """Refuse an inference batch outside the engine's shape profile before touching the GPU."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        got = batch.dtype if isinstance(batch, np.ndarray) else type(batch).__name__
        raise EngineError(f"input {input_name!r} must be a numpy float32 array, got {got}")
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_chw):
        raise EngineError(
            f"input batch has shape {tuple(batch.shape)} but the engine's input {input_name!r} is "
            f"{_expected_shape(input_chw)}"
        )
    if not min_batch <= batch.shape[0] <= max_batch:
        raise EngineError(
            f"a batch of {batch.shape[0]} images is outside the engine's profile ({min_batch}..{max_batch} "
            "images): split the batch or rebuild the engine with a larger max_batch"
        )


class CalibrationFeed:
    """Validated calibration batches, one at a time, from any iterable of float32 NCHW arrays.

    The batch size is taken from the first batch because TensorRT asks for it before it asks
    for any data. Kept free of TensorRT so the validation is testable anywhere.
    """

    def __init__(
        self,
        batches: Iterable[np.ndarray],
        input_chw: tuple[int, int, int],
        *,
        input_name: str = INPUT_NAME,
    ) -> None:
        self.input_chw = tuple(input_chw)
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(batches)
        first = next(self._batches, None)
        if first is None:
            raise EngineError("INT8 calibration needs at least one batch, but the calibration data was empty")
        self._pending: np.ndarray | None = first
        self.batch_size = int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim == 4 else 1
        self.index = 0  # batches handed out so far

    def next_batch(self) -> np.ndarray | None:
        """The next checked, C-contiguous batch, or None when the data is exhausted."""
        if self._pending is not None:
            batch, self._pending = self._pending, None
        else:
            batch = next(self._batches, None)
        if batch is None:
            return None
        check_calibration_batch(
            self.index, batch, self.input_chw, self.batch_size, input_name=self.input_name
        )
        self.index += 1
        return np.ascontiguousarray(batch)


# --------------------------------------------------------------------------- calibration cache


def _calibration_meta_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def read_calibration_cache(cache_path: Path | str, onnx_sha256: str) -> bytes | None:
    """The cached INT8 scales for this exact ONNX file, or None.

    TensorRT matches cache entries by tensor name only, and retraining keeps the names, so a
    cache from older weights would be accepted silently and give wrong scales. The cache is
    therefore bound to the ONNX file's hash through ``<cache>.json``; any mismatch means
    "recalibrate".
    """
    path = Path(cache_path)
    if not path.is_file():
        return None
    meta_path = _calibration_meta_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        log.warning("ignoring calibration cache %s: %s is missing or unreadable", path, meta_path)
        return None
    if not isinstance(meta, dict) or meta.get("onnx_sha256") != onnx_sha256:
        log.warning("ignoring calibration cache %s: it was written for another ONNX model", path)
        return None
    data = path.read_bytes()
    return data or None


def write_calibration_cache(cache_path: Path | str, data: bytes, onnx_sha256: str) -> Path:
    """Write the cache and its ONNX binding atomically.

    The binding is removed first and written last, so a crash in between leaves a cache
    that is ignored, never one bound to the wrong model.
    """
    path = Path(cache_path)
    meta_path = _calibration_meta_path(path)
    meta_path.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
    write_json(meta_path, {"onnx_sha256": onnx_sha256, "written_at": _utc_now()})
    return path


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- TensorRT glue


@functools.cache
def _recording_logger() -> Any:
    """The process's one ``trt.ILogger``: forwards to ``logging`` and keeps errors for messages.

    One instance, because TensorRT keeps the first logger it is given for the whole process
    and ignores later ones; callers take ``len(logger.errors)`` before an operation and read
    what was added after it.
    """
    import tensorrt as trt

    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,  # TensorRT's INFO is a per-layer build diary
    }

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            py_level = levels.get(level)
            if py_level is None:  # VERBOSE
                return
            if py_level >= logging.ERROR:
                self.errors.append(msg)
            log.log(py_level, "TensorRT: %s", msg)

    return RecordingLogger()


@functools.cache
def _entropy_calibrator_class() -> type:
    """Created on first use because it subclasses a TensorRT class."""
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds validated batches to TensorRT and persists its cache bound to the ONNX hash.

        Exceptions must not cross into TensorRT's C++ callback, so they are stored in
        ``error``, calibration is ended, and the builder re-raises after the build returns.
        """

        def __init__(
            self, feed: CalibrationFeed | None, batch_size: int, cache_path: Path | None, onnx_sha256: str
        ) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feed = feed
            # Not ``self.batch_size``: the TensorRT base class exposes that name as a property.
            self._size = batch_size
            self.cache_path = cache_path
            self.onnx_sha256 = onnx_sha256
            self.error: BaseException | None = None
            self._device_batch: Any = None  # keeps the device memory alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return self._size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.feed is None or self.error is not None:
                return None
            try:
                if list(names) != [self.feed.input_name]:
                    raise EngineError(
                        f"TensorRT asked for calibration inputs {list(names)}, expected "
                        f"[{self.feed.input_name!r}]"
                    )
                batch = self.feed.next_batch()
                if batch is None:
                    return None
                self._device_batch = torch.from_numpy(batch).to("cuda")
                # TensorRT reads on its own stream: the copy must be complete first.
                torch.cuda.synchronize()
                return [int(self._device_batch.data_ptr())]
            except BaseException as exc:
                self.error = exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            if self.cache_path is None:
                return None
            try:
                return read_calibration_cache(self.cache_path, self.onnx_sha256)
            except BaseException as exc:
                self.error = exc
                return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is None:
                return
            try:
                write_calibration_cache(self.cache_path, bytes(memoryview(cache)), self.onnx_sha256)
            except BaseException as exc:
                self.error = exc

    return EntropyCalibrator


def make_entropy_calibrator(
    feed: CalibrationFeed | None,
    *,
    onnx_sha256: str,
    cache_path: Path | str | None = None,
    batch_size: int | None = None,
) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` over ``feed`` (None: calibrate from the cache only)."""
    if feed is None and batch_size is None:
        raise ValueError("batch_size is required when calibrating from a cache alone")
    size = feed.batch_size if feed is not None else int(batch_size)  # type: ignore[arg-type]
    cache = Path(cache_path) if cache_path is not None else None
    return _entropy_calibrator_class()(feed, size, cache, onnx_sha256)


_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in _TORCH_DTYPES:
        raise EngineError(f"engine tensor has data type {name}, which visionforge does not handle")
    return getattr(torch, _TORCH_DTYPES[name])


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class EngineSkip:
    """No engine was built, and why; never accompanied by a file that looks like an engine."""

    reason: str
    precision: str
    engine_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "skipped",
            "precision": self.precision,
            "reason": self.reason,
            "engine_path": self.engine_path,
        }


@dataclass(frozen=True)
class EngineBuildResult:
    """A built engine, its sidecar, and the caches the build used or wrote."""

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    build_seconds: float
    timing_cache: Path | None
    calibration_cache: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "built",
            "precision": self.sidecar.precision,
            "quantization": self.sidecar.quantization,
            "engine_path": str(self.engine_path),
            "sidecar_path": str(self.sidecar_path),
            "engine_bytes": self.sidecar.engine_bytes,
            "build_seconds": round(self.build_seconds, 3),
            "tensorrt_version": self.sidecar.tensorrt_version,
            "gpu_name": self.sidecar.gpu_name,
            "compute_capability": self.sidecar.compute_capability,
            "batch_profile": [self.sidecar.min_batch, self.sidecar.opt_batch, self.sidecar.max_batch],
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "calibration_cache": str(self.calibration_cache) if self.calibration_cache else None,
        }


def build_engine(
    onnx_path: Path | str,
    engine_path: Path | str,
    precision: str,
    *,
    calibration_batches: Iterable[np.ndarray] | None = None,
    calibration_cache: Path | str | None = None,
    timing_cache: Path | str | None = None,
    max_batch: int = 8,
    opt_batch: int = 1,
    min_batch: int = 1,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    metadata_type: type = OnnxMetadata,
    spatial_profile: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
) -> EngineBuildResult | EngineSkip:
    """Build a TensorRT engine (``"fp16"`` or ``"int8"``) from an ONNX model, or say why not.

    Inputs are validated first, on every machine: a missing or broken ONNX file
    (:class:`~ops.errors.ExportError`), an INT8 request without any source of scales, or a
    batch profile the model cannot take (:class:`~ops.errors.EngineError`) is an error
    whether or not TensorRT is present. Only then, without TensorRT or a GPU, an
    :class:`EngineSkip` is returned and nothing is written.

    INT8 uses the Q/DQ nodes when the ONNX model has them (explicit quantisation), else
    ``calibration_batches`` (float32 NCHW arrays, normalised like the training input) or a
    ``calibration_cache`` written for this same ONNX file. INT8 engines also enable FP16 so
    layers left unquantised do not fall back to FP32. Engine, sidecar, timing cache and
    calibration cache are all written atomically.

    ``metadata_type`` names the model's contract (the detector's by default). A model whose
    height and width vary (a restorer) needs ``spatial_profile``: the (height, width) it must
    accept at least, is tuned for, and accepts at most.
    """
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if not (
        is_positive_int(min_batch)
        and is_positive_int(opt_batch)
        and is_positive_int(max_batch)
        and min_batch <= opt_batch <= max_batch
    ):
        raise EngineError(
            f"batch profile must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
            f"min_batch={min_batch}, opt_batch={opt_batch}, max_batch={max_batch}"
        )
    # A missing, corrupt or contract-breaking ONNX file raises ExportError, deliberately not
    # wrapped in EngineError: the fault (and the fix, re-exporting) is in the export artefact,
    # not in the engine, and the CLI reports both the same way (VisionForgeError, path named).
    contract = read_onnx_contract(onnx_path, metadata_type)
    _check_spatial_profile(contract, spatial_profile)
    if contract.input_batch is not None and not min_batch == max_batch == contract.input_batch:
        raise EngineError(
            f"{contract.path} fixes the batch of input {INPUT_NAME!r} at {contract.input_batch} but the "
            f"engine profile asks for {min_batch}..{max_batch}: export the model with a dynamic batch axis"
        )
    quantization = _quantization_mode(precision, contract, calibration_batches, calibration_cache)
    engine_path = Path(engine_path)

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        log.warning("skipping the %s TensorRT engine %s: %s", precision, engine_path, reason)
        return EngineSkip(reason=reason, precision=precision, engine_path=str(engine_path))
    if spatial_profile is not None:
        # The build itself would follow the batch-only path below with H and W in the profile, and
        # normalisation layers pinned to FP32 in FP16 engines (NAFNet-style nets give NaN otherwise);
        # but the sidecar (schema 2) and TensorRTPredictor describe one fixed C, H, W. Refuse
        # plainly rather than write an engine nothing here can check or load.
        raise EngineError(
            f"{engine_path}: engines with a dynamic height and width (restorers) are not supported "
            "yet: the engine sidecar and TensorRTPredictor assume a fixed input size"
        )

    return _build(
        contract,
        engine_path,
        precision,
        quantization,
        calibration_batches=calibration_batches if quantization == "calibrated" else None,
        calibration_cache=Path(calibration_cache) if calibration_cache is not None else None,
        timing_cache=Path(timing_cache) if timing_cache is not None else None,
        profile=(min_batch, opt_batch, max_batch),
        workspace_bytes=workspace_bytes,
    )


@contextlib.contextmanager
def symmetric_weights_file(onnx_path: Path) -> Iterator[Path]:
    """``onnx_path`` as TensorRT can read it: the file itself, or, when some convolutions are
    stored for ONNX Runtime's GEMM kernel (non-zero weight zero points, which TensorRT
    refuses), a temporary copy with them stored symmetric again (the same weights exactly)."""
    import onnx

    from ops.deploy.conv_kernels import restore_symmetric_weights

    model = onnx.load(str(onnx_path))
    if restore_symmetric_weights(model) == 0:
        yield onnx_path
        return
    with tempfile.TemporaryDirectory(prefix="tensorrt-") as tmp:
        copy = Path(tmp) / Path(onnx_path).name
        onnx.save_model(model, str(copy))
        yield copy


def _check_spatial_profile(
    contract: OnnxContract, profile: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None
) -> None:
    dynamic = None in contract.input_chw
    if dynamic and profile is None:
        raise EngineError(
            f"{contract.path} takes any height and width: the engine needs a spatial profile "
            "(min, opt and max (height, width))"
        )
    if profile is None:
        return
    if not dynamic:
        raise EngineError(f"{contract.path} has a fixed input size: a spatial profile does not apply")
    (min_h, min_w), (opt_h, opt_w), (max_h, max_w) = profile
    if not (0 < min_h <= opt_h <= max_h and 0 < min_w <= opt_w <= max_w):
        raise EngineError(
            f"spatial profile must satisfy 0 < min <= opt <= max for height and width, got {profile}"
        )


def _quantization_mode(
    precision: str,
    contract: OnnxContract,
    calibration_batches: Iterable[np.ndarray] | None,
    calibration_cache: Path | str | None,
) -> str:
    if precision == "fp16":
        if contract.has_qdq:
            raise EngineError(
                f"{contract.path} contains QuantizeLinear/DequantizeLinear nodes, which make TensorRT "
                "build INT8: build the FP16 engine from the FP32 ONNX model"
            )
        return "none"
    if contract.has_qdq:
        if calibration_batches is not None or calibration_cache is not None:
            log.info("%s carries Q/DQ scales: calibration data and cache are not used", contract.path)
        return "explicit"
    if calibration_batches is None and (
        calibration_cache is None or read_calibration_cache(calibration_cache, contract.sha256) is None
    ):
        cache_note = (
            f"the calibration cache {calibration_cache} is missing or belongs to another ONNX model"
            if calibration_cache is not None
            else "no calibration cache was given"
        )
        raise EngineError(
            f"INT8 from {contract.path} needs scales: the model has no Q/DQ nodes, no calibration "
            f"batches were given and {cache_note}"
        )
    return "calibrated"


def _build(
    contract: OnnxContract,
    engine_path: Path,
    precision: str,
    quantization: str,
    *,
    calibration_batches: Iterable[np.ndarray] | None,
    calibration_cache: Path | None,
    timing_cache: Path | None,
    profile: tuple[int, int, int],
    workspace_bytes: int,
) -> EngineBuildResult:
    import tensorrt as trt

    started = time.perf_counter()
    gpu = describe_gpu()
    trt_logger = _recording_logger()
    first_error = len(trt_logger.errors)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    # parse_from_file (not parse(bytes)) so weights stored as external data are found.
    with symmetric_weights_file(contract.path) as parsed_path:
        parsed = parser.parse_from_file(str(parsed_path))
    if not parsed:
        details = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        details = details or trt_logger.errors[first_error:]
        raise EngineError(
            f"TensorRT cannot parse {contract.path}:\n  " + "\n  ".join(details or ["(no details reported)"])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)

    min_b, opt_b, max_b = profile
    chw = contract.input_chw
    shape_profile = builder.create_optimization_profile()
    shape_profile.set_shape(INPUT_NAME, (min_b, *chw), (opt_b, *chw), (max_b, *chw))
    config.add_optimization_profile(shape_profile)

    calibrator = None
    if quantization == "calibrated":
        feed = CalibrationFeed(calibration_batches, chw) if calibration_batches is not None else None
        calibrator = make_entropy_calibrator(
            feed, onnx_sha256=contract.sha256, cache_path=calibration_cache, batch_size=opt_b
        )
        config.int8_calibrator = calibrator
        # Calibration runs at one fixed shape: the calibrator's batch size.
        calib_profile = builder.create_optimization_profile()
        calib_shape = (calibrator.get_batch_size(), *chw)
        calib_profile.set_shape(INPUT_NAME, calib_shape, calib_shape, calib_shape)
        config.set_calibration_profile(calib_profile)

    if timing_cache is not None:
        _attach_timing_cache(config, timing_cache)

    log.info(
        "building the %s TensorRT engine %s from %s on %s (this can take minutes)",
        precision,
        engine_path,
        contract.path,
        gpu.name,
    )
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        error = calibrator.error
        if isinstance(error, EngineError) or not isinstance(error, Exception):  # e.g. KeyboardInterrupt
            raise error
        raise EngineError(
            f"INT8 calibration for {contract.path} failed: {type(error).__name__}: {error}"
        ) from error
    if serialized is None:
        details = "\n  ".join(trt_logger.errors[first_error:] or ["(no details reported)"])
        raise EngineError(f"TensorRT could not build a {precision} engine from {contract.path}:\n  {details}")
    data = bytes(memoryview(serialized))

    sidecar = EngineSidecar(
        schema_version=SIDECAR_SCHEMA_VERSION,
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        quantization=quantization,
        input_name=INPUT_NAME,
        min_batch=min_b,
        opt_batch=opt_b,
        max_batch=max_b,
        input_chw=chw,
        onnx_path=str(contract.path),
        onnx_sha256=contract.sha256,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_bytes=len(data),
        built_at=_utc_now(),
        metadata=contract.metadata.to_props(),
    )
    side = sidecar_path(engine_path)
    # An old sidecar must not vouch for the new engine if the engine write succeeds and
    # the sidecar write does not (the engine hash would also catch it).
    side.unlink(missing_ok=True)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(data)
    sidecar.to_json(side)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    seconds = time.perf_counter() - started
    log.info("wrote %s (%.1f MB) in %.0f s", engine_path, len(data) / 1e6, seconds)
    return EngineBuildResult(
        engine_path=engine_path,
        sidecar_path=side,
        sidecar=sidecar,
        build_seconds=seconds,
        timing_cache=timing_cache,
        calibration_cache=calibration_cache if quantization == "calibrated" else None,
    )


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Reuse measured tactic timings across builds; a cache from elsewhere is replaced, not trusted."""
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception as exc:  # a corrupt cache file
        log.warning("timing cache %s is unreadable (%s): starting a fresh one", path, exc)
        accepted = False
    if not accepted:
        if data:
            log.warning("timing cache %s does not match this TensorRT/GPU: starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


# --------------------------------------------------------------------------- inference


class TensorRTPredictor:
    """Runs a built engine behind the :class:`ops.deploy.runtime.Predictor` interface.

    Construction refuses anything that would fail later or silently: a missing engine or
    sidecar, an engine file that is not the one the sidecar describes (truncated or
    replaced), no TensorRT/GPU, another TensorRT version or GPU, bytes TensorRT cannot
    deserialise, and I/O tensors other than the contract's. Device buffers are torch CUDA
    tensors and execution runs on torch's current stream, so no extra CUDA binding is needed.
    """

    def __init__(self, engine_path: Path | str) -> None:
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise EngineError(f"TensorRT engine not found: {self.engine_path}")
        self.sidecar = EngineSidecar.from_json(sidecar_path(self.engine_path))
        data = self.engine_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != self.sidecar.engine_bytes or digest != self.sidecar.engine_sha256:
            raise EngineError(
                f"TensorRT engine {self.engine_path} is truncated or was replaced after it was built: "
                f"{len(data)} bytes with sha256 {digest[:12]}..., its sidecar expects "
                f"{self.sidecar.engine_bytes} bytes with sha256 {self.sidecar.engine_sha256[:12]}...; "
                "rebuild it"
            )
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise EngineError(f"cannot run TensorRT engine {self.engine_path}: {reason}")

        import tensorrt as trt
        import torch

        gpu = describe_gpu()
        check_engine_compatible(
            self.sidecar, str(trt.__version__), gpu.name, gpu.compute_capability, engine=self.engine_path
        )
        self._logger = _recording_logger()
        first_error = len(self._logger.errors)
        self._runtime = trt.Runtime(self._logger)
        extra: list[str] = []
        try:
            engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:  # some versions raise instead of returning None
            engine, extra = None, [f"{type(exc).__name__}: {exc}"]
        if engine is None:
            details = "; ".join(self._logger.errors[first_error:] + extra) or "no details reported"
            raise EngineError(f"TensorRT cannot deserialise {self.engine_path} ({details}): rebuild it")
        self._engine = engine

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise EngineError(
                f"TensorRT engine {self.engine_path} breaks the I/O contract: expected input "
                f"{INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, it has inputs {inputs} and "
                f"outputs {outputs}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(
                f"TensorRT could not create an execution context for {self.engine_path} "
                f"({'; '.join(self._logger.errors[first_error:]) or 'likely out of GPU memory'})"
            )
        self._context = context
        min_shape, _, max_shape = (
            tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0)
        )
        self.min_batch, self.max_batch = min_shape[0], max_shape[0]
        self.input_chw: tuple[int, int, int] = max_shape[1:]  # type: ignore[assignment]
        self._dtypes = {name: _torch_dtype(engine.get_tensor_dtype(name)) for name in names}
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._lock = threading.Lock()  # one execution context: calls must not interleave
        self.backend = f"trt-{self.sidecar.precision}"
        log.info(
            "loaded %s engine %s (batch %d..%d)",
            self.backend,
            self.engine_path,
            self.min_batch,
            self.max_batch,
        )

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        check_input_batch(batch, self.input_chw, self.min_batch, self.max_batch)
        with self._lock, torch.cuda.device(self._device):
            stream = torch.cuda.current_stream(self._device)
            images = torch.from_numpy(np.ascontiguousarray(batch)).to(
                self._device, dtype=self._dtypes[INPUT_NAME]
            )
            context = self._context
            if not context.set_input_shape(INPUT_NAME, tuple(images.shape)):
                raise EngineError(f"engine {self.engine_path} rejected input shape {tuple(images.shape)}")
            context.set_tensor_address(INPUT_NAME, int(images.data_ptr()))
            outputs = {}
            for name in OUTPUT_NAMES:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                context.set_tensor_address(name, int(outputs[name].data_ptr()))
            first_error = len(self._logger.errors)
            if not context.execute_async_v3(stream.cuda_stream):
                details = "; ".join(self._logger.errors[first_error:]) or "no details reported"
                raise EngineError(f"TensorRT execution of {self.engine_path} failed ({details})")
            stream.synchronize()
            return {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}

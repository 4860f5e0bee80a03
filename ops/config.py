"""Typed view of ``params.yaml``, the single source of configuration.

Dagster, DVC and the CLI all read the same file through :func:`load_params`. Every model
forbids unknown keys and has no defaults for values a user is expected to choose, so a typo
or a missing key fails loudly, naming the key, instead of silently falling back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ops.errors import ConfigError

DEFAULT_PARAMS_PATH = Path("params.yaml")
# A deployment's own settings (tracking server, S3 remote) as a YAML file of the same shape,
# merged over params.yaml, so a deployment never forks the file that DVC tracks.
PARAMS_OVERLAY_ENV = "VISIONFORGE_PARAMS_OVERLAY"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(StrictModel):
    data_dir: Path = Field(description="Root of DVC-tracked inputs (datasets).")
    artifacts_dir: Path = Field(description="Root of pipeline outputs (models, metrics, plots).")
    lock_wait_s: float = Field(
        default=0.0,
        ge=0,
        description="How long a step waits for another writer of the same task to finish "
        "(ops.locking); 0 fails at once, naming the holder.",
    )


class TrafficGeneratorConfig(StrictModel):
    """Procedural traffic scenes written in the COCO layout."""

    seed: int = Field(description="Random seed: the same seed writes byte-identical files.")
    num_train: int = Field(gt=0, description="Number of training images.")
    num_val: int = Field(gt=0, description="Number of validation images.")
    image_width: int = Field(ge=64, description="Width of generated images in pixels.")
    image_height: int = Field(ge=64, description="Height of generated images in pixels.")
    min_objects: int = Field(ge=1, description="Fewest annotated objects per image.")
    max_objects: int = Field(ge=1, description="Most annotated objects per image.")
    jpeg_quality: int = Field(ge=50, le=100, description="JPEG quality of written images.")

    @model_validator(mode="after")
    def _objects_range(self) -> TrafficGeneratorConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        return self


class SiddGeneratorConfig(StrictModel):
    """Procedural SIDD-style pairs written in the official layouts: clean procedural scenes and
    noisy versions made by a camera noise model in linear light (Brooks et al. 2019)."""

    seed: int = Field(description="Random seed: the same seed writes byte-identical files.")
    num_train_scenes: int = Field(gt=0, description="Scene instances (folders) in the training layout.")
    num_val_images: int = Field(gt=0, description="Images the validation blocks are cut from (SIDD: 40).")
    blocks_per_image: int = Field(gt=0, description="Validation blocks per image (SIDD: 32).")
    block_size: int = Field(ge=16, description="Side of a square validation block in pixels (SIDD: 256).")
    image_width: int = Field(ge=64, description="Width of generated images in pixels.")
    image_height: int = Field(ge=64, description="Height of generated images in pixels.")
    iso_levels: list[int] = Field(
        min_length=1, description="ISO values drawn per scene instance; the noise level follows the ISO."
    )


class GoproGeneratorConfig(StrictModel):
    """Procedural GOPRO-style sequences written in the official ``GOPRO_Large`` layout: traffic
    scenes filmed at 240 fps by a moving camera, each blurred frame the average of
    ``blur_frames_min``..``blur_frames_max`` consecutive sharp frames (Nah et al. 2017)."""

    seed: int = Field(description="Random seed: the same seed writes byte-identical files.")
    num_train_sequences: int = Field(gt=0, description="Sequences (GOPRxxxx_xx_xx folders) in train/.")
    num_test_sequences: int = Field(gt=0, description="Sequences in test/ (GOPRO's de-facto validation).")
    frames_per_sequence: int = Field(gt=0, description="Blurred/sharp frame pairs written per sequence.")
    image_width: int = Field(ge=32, description="Width of generated frames in pixels (GOPRO: 1280).")
    image_height: int = Field(ge=32, description="Height of generated frames in pixels (GOPRO: 720).")
    blur_frames_min: int = Field(
        ge=2, description="Fewest sharp 240 fps frames averaged per blurred one (GOPRO: 7)."
    )
    blur_frames_max: int = Field(ge=2, description="Most sharp frames averaged per blurred one (GOPRO: 13).")
    max_pan_px: float = Field(
        ge=0,
        description="Fastest camera pan per sharp frame in pixels of the generated frame; blur grows "
        "with it (at 256x144, 0.8 gives 27.8 dB blurred inputs, 1.4 about 24.5 dB; GOPRO: 25.6).",
    )
    shake_px: float = Field(ge=0, description="Amplitude of hand shake (8-30 Hz jitter) in pixels.")
    zoom_per_frame: float = Field(
        ge=0, lt=0.05, description="Fastest relative change of scale per sharp frame (forward motion)."
    )
    moving_objects: int = Field(ge=0, description="Vehicles driving on the scene's road, at most.")

    @model_validator(mode="after")
    def _blur_range(self) -> GoproGeneratorConfig:
        if self.blur_frames_min > self.blur_frames_max:
            raise ValueError(
                f"blur_frames_min ({self.blur_frames_min}) must not exceed "
                f"blur_frames_max ({self.blur_frames_max})"
            )
        return self


class DatasetConfig(StrictModel):
    source: Literal["generate", "local"] = Field(
        description="'generate' writes procedural data; 'local' reads an existing COCO copy."
    )
    root: Path = Field(description="Dataset directory: images/{train,val}, annotations/.")
    generator: TrafficGeneratorConfig


class ModelConfig(StrictModel):
    """TrafficQuantizerNet options; defaults of the class are the seed's full-size model."""

    input_size: int = Field(ge=64, description="Square network input in pixels (multiple of 32).")
    width_mult: float = Field(gt=0, le=4, description="Channel multiplier of backbone and decoder.")
    upsample: tuple[bool, bool, bool] = Field(
        description="Which of the three decoder layers really upsample (3UP = all true)."
    )
    backbone: Literal["resnet18", "hrnet"] = Field(
        description="Feature extractor: resnet18 + a 3-layer upsampling decoder (the seed), or hrnet "
        "(seed 002: parallel branches at strides 4-32 with repeated fusion, stride-4 output, no decoder)."
    )
    hrnet_width: int = Field(
        default=32,
        ge=8,
        description="hrnet only: channels of the stride-4 branch (the others have 2, 4 and 8 times "
        "as many); a multiple of 8. HRNet-W32 is 32; the demo uses 8.",
    )
    head_width: int = Field(gt=0, description="Channels of the 3x3 conv in each prediction head.")
    decoder_skips: bool = Field(
        description="Add the backbone's map of the same resolution to each upsampling decoder "
        "layer's output (the seed's decoder has no skips)."
    )
    mean: tuple[float, float, float] = Field(description="Per-channel RGB mean of 0..1 pixels.")
    std: tuple[float, float, float] = Field(description="Per-channel RGB std of 0..1 pixels.")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:  # five stride-2 stages in the backbone
            raise ValueError("must be a multiple of 32")
        return value

    @field_validator("hrnet_width")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(
                f"must be a multiple of 8: the branches have {value}, {2 * value}, {4 * value} and "
                f"{8 * value} channels, and the integer kernels work on groups of 8"
            )
        return value

    @model_validator(mode="after")
    def _skips_need_a_decoder(self) -> ModelConfig:
        if self.backbone == "hrnet" and self.decoder_skips:
            raise ValueError("decoder_skips applies to resnet18 only: hrnet has no decoder (set it false)")
        return self


class AugmentConfig(StrictModel):
    hflip: float = Field(ge=0, le=1, description="Probability of a horizontal flip.")
    scale_range: tuple[float, float] = Field(description="Random zoom range (1.0 = none).")
    translate: float = Field(ge=0, le=0.5, description="Max shift as a fraction of the input size.")
    color_jitter: float = Field(ge=0, le=1, description="Brightness/contrast jitter strength.")


class TrainLoopConfig(StrictModel):
    """What the shared training loop (:func:`ops.train.fit`) needs; each task's training config adds
    its own data and loss settings."""

    seed: int = Field(description="Seed for torch, numpy and the data order.")
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0, description="Linear warm-up before the cosine decay.")
    num_workers: int = Field(ge=0, description="DataLoader worker processes.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="'auto' picks CUDA when present.")
    amp: bool = Field(
        description="Mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 "
        "(AVX512-BF16/AMX); ignored elsewhere."
    )
    channels_last: bool = Field(description="NHWC memory layout (faster convolutions on CPU and GPU).")
    ema_decay: float = Field(
        ge=0, lt=1, description="Exponential moving average of the weights per step; 0 disables."
    )
    betas: tuple[float, float] = Field(
        default=(0.9, 0.999),
        description="AdamW's moment decay rates (NAFNet trains with 0.9, 0.9).",
    )
    nproc: int = Field(
        default=1,
        ge=1,
        description="Training processes on this node (torchrun, DistributedDataParallel): one per "
        "GPU, or CPU processes sharing the cores; batch_size stays the global batch.",
    )
    dist_timeout_s: float = Field(
        default=600,
        gt=0,
        description="With several processes: the longest any rank waits for the others (a "
        "collective, or the rendezvous of every node) before the run fails naming it.",
    )


class TrainConfig(TrainLoopConfig):
    """The detector's training: the loop's settings plus augmentation and CenterNet's loss weights."""

    augment: AugmentConfig
    size_loss_weight: float = Field(ge=0, description="Weight of the L1 size loss (CenterNet: 0.1).")
    offset_loss_weight: float = Field(ge=0, description="Weight of the L1 offset loss (CenterNet: 1).")
    giou_loss_weight: float = Field(
        ge=0,
        description="Weight of a GIoU loss on the boxes the supervised cells decode; 0 disables "
        "(CenterNet has none).",
    )
    regression_radius: int = Field(
        ge=0,
        le=3,
        description="Cells around each centre that also regress its size and offset "
        "(CenterNet: 0, the centre only); the decoded peak may land there.",
    )


class EvaluateConfig(StrictModel):
    top_k: int = Field(gt=0, description="Peaks kept per image (CenterNet: 100).")
    score_threshold: float = Field(ge=0, le=1, description="Detections below are dropped.")
    num_sample_images: int = Field(ge=0, description="Images in the sample-detections grid.")


class ExportConfig(StrictModel):
    opset: int = Field(ge=17, description="ONNX opset of the exported model.")
    parity_images: int = Field(gt=0, description="Validation images the parity check runs on.")


# Shared by every task's quantisation: which of ONNX Runtime's two INT8 convolution kernels each
# layer is stored for (ops.deploy.conv_kernels).
GemmKernelThreshold = Annotated[
    int | None,
    Field(
        gt=0,
        description="INT8 convolutions with at least this many multiply-adds per output (input "
        "channels x kernel area) run on ONNX Runtime's im2col GEMM kernel, the rest on its direct "
        "symmetric one; null: all symmetric. Exact (outputs bit-identical); which is faster depends "
        "on the CPU: python -m benchmarks.int8_profile --layer-kernels times both per layer.",
    ),
]


class QuantizeConfig(StrictModel):
    """ONNX Runtime static INT8 quantisation (QDQ, int8 weights, uint8 activations)."""

    calibration_images: int = Field(gt=0, description="Training images used for calibration.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        description="How activation ranges are chosen from the calibration data."
    )
    per_channel: bool = Field(description="One weight scale per output channel (recommended).")
    keep_outputs_float: bool = Field(
        description="Leave the heads' last layers (and the heatmap sigmoid) in float: they are "
        "tiny, and int8 steps in scores and box sizes cost accuracy."
    )
    exclude_nodes: list[str] = Field(description="Further ONNX node names to leave in float.")
    gemm_kernel_min_multiply_adds: GemmKernelThreshold = None


class PruneConfig(StrictModel):
    """Structured channel pruning (whole channels removed) followed by a short fine-tune."""

    ratio: float = Field(gt=0, lt=1, description="Fraction of channels removed from each prunable group.")
    finetune_epochs: int = Field(ge=0, description="Epochs of fine-tuning after pruning.")
    finetune_lr: float = Field(gt=0, description="Peak learning rate of the fine-tune.")


class TensorRTConfig(StrictModel):
    precisions: list[Literal["fp16", "int8"]] = Field(description="Engines to build.")
    opt_batch: int = Field(gt=0, description="Batch size the engine is tuned for.")
    max_batch: int = Field(gt=0, description="Largest batch the engine accepts.")
    workspace_mib: int = Field(gt=0, description="Builder workspace memory limit.")


class BenchmarkConfig(StrictModel):
    threads: int = Field(gt=0, description="CPU threads every backend gets (the same for all).")
    batch_size: int = Field(gt=0)
    warmup: int = Field(ge=0, description="Untimed runs per backend before measuring.")
    runs: int = Field(gt=0, description="Timed runs per backend, interleaved across backends.")
    compile: bool = Field(description="Include torch.compile as a baseline (costs compile time).")


class ValidationConfig(StrictModel):
    """Release gates: how much a deployable backend may lose against PyTorch."""

    max_map50_drop_onnx: float = Field(ge=0, description="ONNX FP32 and INT8, mAP@0.5 points / 100.")
    max_map50_drop_tensorrt: float = Field(ge=0, description="TensorRT engines, mAP@0.5 / 100.")
    min_output_cosine: float = Field(ge=0, le=1, description="FP32 ONNX vs PyTorch output similarity.")


class ReleaseConfig(StrictModel):
    """When a validated candidate replaces the registry's champion (alias ``champion``)."""

    metric: Literal["map50", "map50_95"] = Field(
        description="The validation metric candidate and champion are compared on, per format."
    )
    tolerance: float = Field(
        ge=0,
        le=1,
        description="How far (mAP / 100) a candidate may fall below the champion and still be "
        "promoted: retraining noise should not block a release, a real regression should.",
    )


class TrafficConfig(StrictModel):
    dataset: DatasetConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    quantize: QuantizeConfig
    prune: PruneConfig
    tensorrt: TensorRTConfig
    benchmark: BenchmarkConfig
    validation: ValidationConfig
    release: ReleaseConfig


# --- restoration (sidd; gopro reuses every class but the dataset's) ------------------------


class DownloadConfig(StrictModel):
    """An official archive to fetch when ``dataset.source`` is ``download``."""

    url: str | None = Field(description="HTTP(S) address of the archive (zip or tar).")
    sha256: str | None = Field(
        description="Expected SHA-256 of the archive; the download is refused when it differs. "
        "Archive sizes are not reliably documented, so the checksum is what identifies it."
    )
    max_bytes: int = Field(gt=0, description="Refuse archives that expand past this many bytes.")


class SiddDatasetConfig(StrictModel):
    source: Literal["generate", "local", "download"] = Field(
        description="'generate' writes procedural pairs in the official layout; 'local' reads an "
        "existing SIDD copy at root; 'download' fetches download.url into root first."
    )
    root: Path = Field(
        description="Dataset directory: SIDD_Small_sRGB_Only/ or SIDD_Medium_Srgb/, and the "
        "validation blocks ValidationNoisyBlocksSrgb.mat / ValidationGtBlocksSrgb.mat."
    )
    download: DownloadConfig
    generator: SiddGeneratorConfig


class RestorerConfig(StrictModel):
    """The restoration network. ``nafnet``: the convolutional default (DESIGN.md's SIDD
    configuration is enc [2,2,4,8], middle 12, dec [2,2,2,2]; width 32 is NAFNet-w32).
    ``transformer``: Restormer-style blocks whose attention runs across channels, so its cost
    grows linearly with the pixels (``heads`` and ``ffn_expand`` apply to it only)."""

    arch: Literal["nafnet", "transformer"] = Field(description="Network family.")
    width: int = Field(gt=0, description="Channels of the first level (doubles per level).")
    enc_blocks: list[int] = Field(min_length=1, description="Blocks per encoder level.")
    middle_blocks: int = Field(ge=0, description="Blocks at the lowest resolution.")
    dec_blocks: list[int] = Field(min_length=1, description="Blocks per decoder level.")
    heads: list[int] | None = Field(
        default=None,
        description="transformer: attention heads per level, encoder levels then the middle "
        "(len(enc_blocks) + 1 values); null for nafnet.",
    )
    ffn_expand: float = Field(
        default=2.66, gt=0, description="transformer: hidden channels of the feed-forward part per channel."
    )

    @model_validator(mode="after")
    def _symmetric(self) -> RestorerConfig:
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise ValueError(
                f"enc_blocks ({len(self.enc_blocks)} levels) and dec_blocks ({len(self.dec_blocks)}) "
                "must have as many levels"
            )
        if self.arch == "transformer" and self.heads is None:
            raise ValueError(
                f"arch 'transformer' needs heads: one count per encoder level and the middle "
                f"({len(self.enc_blocks) + 1} values)"
            )
        if self.arch == "nafnet" and self.heads is not None:
            raise ValueError("heads applies to arch 'transformer' only; remove it for 'nafnet'")
        return self


class RestorationTrainConfig(TrainLoopConfig):
    """The restorer's training: the loop's settings plus crops, augmentation and the loss."""

    crop_size: int = Field(ge=16, description="Side of the random training crops in pixels.")
    crops_per_epoch: int = Field(gt=0, description="Random crops drawn per epoch (over all pairs).")
    flips_rotations: bool = Field(description="Random flips and 90-degree rotations of each crop.")
    loss: Literal["psnr", "charbonnier"] = Field(
        description="psnr: NAFNet's PSNR loss (10/ln10 * log MSE); charbonnier: sqrt(d^2 + eps^2)."
    )
    charbonnier_eps: float = Field(gt=0, description="Charbonnier's eps (BasicSR: 1e-3).")


class RestorationEvaluateConfig(StrictModel):
    batch_size: int = Field(gt=0, description="Blocks or images per inference batch.")
    num_sample_images: int = Field(ge=0, description="Rows of the before/after/difference grid.")


class RestorationQuantizeConfig(StrictModel):
    """ONNX Runtime static INT8 quantisation of the restorer (QDQ, int8 weights, uint8 activations)."""

    calibration_images: int = Field(gt=0, description="Training crops used for calibration.")
    calibration_crop: int = Field(ge=16, description="Side of each calibration crop in pixels.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        description="How activation ranges are chosen from the calibration data."
    )
    per_channel: bool = Field(description="One weight scale per output channel (recommended).")
    op_types: list[str] = Field(
        min_length=1,
        description="ONNX operator types quantised; the rest stays float (restoration loses PSNR "
        "to quantised activations, so the default quantises the convolutions only).",
    )
    keep_first_last_float: bool = Field(
        description="Keep the network's first convolution (it reads pixels) and its output layers "
        "(the last convolution, the global residual and the crop) in float."
    )
    gemm_kernel_min_multiply_adds: GemmKernelThreshold = None


class RestorationTensorRTConfig(StrictModel):
    precisions: list[Literal["fp16", "int8"]] = Field(description="Engines to build.")
    opt_batch: int = Field(gt=0, description="Batch size the engine is tuned for.")
    max_batch: int = Field(gt=0, description="Largest batch the engine accepts.")
    min_size: tuple[int, int] = Field(description="Smallest (height, width) the engine accepts.")
    opt_size: tuple[int, int] = Field(description="(height, width) the engine is tuned for.")
    max_size: tuple[int, int] = Field(description="Largest (height, width), e.g. a 720x1280 frame.")
    workspace_mib: int = Field(gt=0, description="Builder workspace memory limit.")


class RestorationBenchmarkConfig(StrictModel):
    threads: int = Field(gt=0, description="CPU threads every backend gets (the same for all).")
    warmup: int = Field(ge=0, description="Untimed runs per backend before measuring.")
    runs: int = Field(gt=0, description="Timed runs per backend, interleaved across backends.")
    sizes: list[tuple[int, int]] = Field(
        min_length=1, description="(height, width) of the timed inputs, batch 1 (720x1280: a GoPro frame)."
    )
    compile: bool = Field(description="Include torch.compile as a baseline (costs compile time).")


class RestorationValidationConfig(StrictModel):
    """Release gates: how much a deployable backend may lose against PyTorch (PSNR in dB)."""

    min_output_psnr: float = Field(
        gt=0, description="FP32 ONNX output parity: PSNR of its outputs against PyTorch's (dB)."
    )
    max_psnr_drop_onnx: float = Field(ge=0, description="ONNX FP32, PSNR lost against PyTorch (dB).")
    max_psnr_drop_int8: float = Field(ge=0, description="ONNX INT8, PSNR lost against PyTorch (dB).")
    max_psnr_drop_tensorrt: float = Field(ge=0, description="TensorRT engines, PSNR lost (dB).")


class RestorationReleaseConfig(StrictModel):
    """When a validated candidate replaces the registry's champion (alias ``champion``)."""

    metric: Literal["psnr", "ssim"] = Field(description="The validation metric compared, per format.")
    tolerance: float = Field(
        ge=0, description="How far (dB for psnr) a candidate may fall below the champion and still win."
    )


class GoproDatasetConfig(StrictModel):
    source: Literal["generate", "local", "download"] = Field(
        description="'generate' writes procedural sequences in the official layout; 'local' reads "
        "an existing copy at root (GOPRO_Large/ or the flattened {train,test}/{input,target}/); "
        "'download' fetches download.url into root first."
    )
    root: Path = Field(description="Dataset directory holding GOPRO_Large/ (or the flattened tree).")
    blur: Literal["blur", "blur_gamma"] = Field(
        description="The official layout's blurred frames: 'blur' (averaged in sRGB, what papers "
        "report on) or 'blur_gamma' (averaged in linear light)."
    )
    download: DownloadConfig
    generator: GoproGeneratorConfig


class RestorationTaskConfig(StrictModel):
    """Everything of a restoration task but its dataset, which each task describes itself."""

    model: RestorerConfig
    train: RestorationTrainConfig
    evaluate: RestorationEvaluateConfig
    export: ExportConfig
    quantize: RestorationQuantizeConfig
    tensorrt: RestorationTensorRTConfig
    benchmark: RestorationBenchmarkConfig
    validation: RestorationValidationConfig
    release: RestorationReleaseConfig


class SiddConfig(RestorationTaskConfig):
    dataset: SiddDatasetConfig


class GoproConfig(RestorationTaskConfig):
    dataset: GoproDatasetConfig


class TrackingConfig(StrictModel):
    """MLflow: runs per step, a model registry per artefact format (see ``ops.tracking``)."""

    enabled: bool = Field(
        description="false: explicit offline mode. Steps run and say, in a warning, that nothing "
        "is recorded; nothing is queued for later. Promotion needs the registry and refuses."
    )
    uri: str | None = Field(
        description="A tracking server (http://host:5000). null: the embedded store below. The "
        "environment variable MLFLOW_TRACKING_URI, when set, wins over both."
    )
    store: Path = Field(description="Embedded default: the SQLite file of runs and registry.")
    artifacts: Path = Field(
        description="Embedded default: where run artefacts are stored (storage.remote: s3 puts "
        "them in the bucket instead)."
    )
    experiment_prefix: str = Field(description="Experiment per task: <prefix><task>.")
    connect_retries: int = Field(ge=1, description="Attempts to reach a tracking server before failing.")
    connect_timeout_s: float = Field(gt=0, description="Seconds each attempt (and each request) may take.")


class S3Config(StrictModel):
    """An S3 or S3-compatible bucket. Credentials never go here: boto3, DVC and MLflow read them
    from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)."""

    bucket: str = Field(min_length=3, description="Bucket name (must exist).")
    prefix: str = Field(description="Key prefix inside the bucket; '' for the bucket root.")
    endpoint_url: str | None = Field(
        description="S3-compatible service (MinIO, nanio, ...); null for AWS itself."
    )
    region: str = Field(description="Region the bucket lives in (signatures depend on it).")


class StorageConfig(StrictModel):
    """Where DVC pushes data and models (and MLflow keeps artefacts when it is on S3)."""

    remote: Literal["local", "s3"] = Field(
        description="local: a directory remote (local_dir); s3: the bucket below, for DVC and "
        "for the embedded MLflow store's artefacts."
    )
    local_dir: Path = Field(description="DVC's directory remote, relative to the repository root.")
    s3: S3Config


class Params(StrictModel):
    project: ProjectConfig
    traffic: TrafficConfig
    sidd: SiddConfig
    gopro: GoproConfig
    tracking: TrackingConfig
    storage: StorageConfig

    def task_dir(self, task: str) -> Path:
        """Directory of one task's outputs, e.g. ``artifacts/traffic``."""
        return self.project.artifacts_dir / task


def has_key(dotted: str, model: type[BaseModel] = Params) -> bool:
    """Whether ``dotted`` (e.g. ``sidd.model.input_size``) names a field of the params schema."""
    for part in dotted.split("."):
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return False
        model = field.annotation  # type: ignore[assignment]
    return True


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"  {key}: missing required key")
        elif isinstance(item.get("input"), dict):  # a cross-field rule: the message names the keys
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section of params")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"override {dotted!r}: unknown key {parts[-1]!r}")
    node[parts[-1]] = value


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return raw


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    """Mappings merge key by key; any other value in ``overlay`` replaces the base's."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_params(path: Path | str = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml``; ``overrides`` maps dotted keys to values.

    The file named by ``VISIONFORGE_PARAMS_OVERLAY``, when set, is merged over it first (a
    deployment's tracking and storage settings); ``overrides`` apply last. Relative paths inside
    the file stay relative to the current directory, which is the repository root for the CLI,
    DVC stages and Dagster alike.
    """
    path = Path(path)
    raw = _read_mapping(path, "params file")
    source = str(path)
    overlay = os.environ.get(PARAMS_OVERLAY_ENV)
    if overlay:
        _merge(raw, _read_mapping(Path(overlay), f"params overlay ({PARAMS_OVERLAY_ENV})"))
        source = f"{path} with the overlay {overlay}"
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None

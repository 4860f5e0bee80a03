"""The one exception type users see: every error they can cause says what and where."""

from __future__ import annotations


class VisionForgeError(Exception):
    """An error caused by input the user controls (files, config, data, hardware).

    The message names the offending item (path, key, id) so it can be fixed without a
    traceback. Bugs in visionforge itself raise ordinary Python exceptions instead.
    """


class ConfigError(VisionForgeError):
    """params.yaml (or an override) is missing, malformed, or has unknown/ill-typed keys."""


class DatasetError(VisionForgeError):
    """A dataset on disk is missing, corrupt, or its annotations are malformed."""


class CheckpointError(VisionForgeError):
    """A checkpoint is missing, corrupt, or was written by a different model config."""


class ExportError(VisionForgeError):
    """A model file (ONNX, quantised ONNX) is missing, corrupt, or breaks the I/O contract."""


class EngineError(VisionForgeError):
    """A TensorRT engine is missing, corrupt, or was built for another GPU / TensorRT version."""


class DiskFullError(VisionForgeError):
    """A write ran out of space: the message names the file, how much of it was written and the
    space left. The previous version of the file, if any, is unchanged."""


class TrackingError(VisionForgeError):
    """The MLflow tracking server or model registry is unreachable or refuses an operation."""


class VersioningError(VisionForgeError):
    """DVC failed (not installed, not initialised, a stage or push/pull failed), or data changed
    on disk without being committed to DVC."""


class StorageError(VisionForgeError):
    """The S3 bucket is missing, unreachable, or refuses the credentials (never printed)."""


class DownloadError(VisionForgeError):
    """A download failed (unreachable URL, wrong checksum, server cut the transfer) or an archive
    is unsafe (absolute paths, ``..``, links leading outside, expands past its size limit)."""

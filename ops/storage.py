"""S3 storage: the only module that imports boto3.

The embedded default needs none of this: DVC pushes to a local directory and MLflow keeps its
artefacts on disk. With ``storage.remote: s3`` the same bucket serves DVC (``<prefix>/dvc``)
and the embedded MLflow store's artefacts (``<prefix>/mlflow``); an S3-compatible service is
reached through ``storage.s3.endpoint_url``.

Credentials are never configured here, never copied into a file, a tag or a log line: boto3,
DVC (s3fs) and MLflow each read them from the environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``). Messages that might quote them (a subprocess's
output, a server's error) pass through :func:`redact` first.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.config import S3Config, StorageConfig
from ops.errors import StorageError
from ops.io import atomic_path

log = logging.getLogger(__name__)

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "NANIO_ACCESS_KEY",
    "NANIO_SECRET_KEY",
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
# Every S3 client here (boto3's, DVC's) waits this long for a connection or an answer: a server
# that stalls fails the step in bounded time, with the timeout in its error.
S3_TIMEOUT_S = 10
S3_MAX_ATTEMPTS = 3

# Sub-trees of the bucket prefix, one per consumer.
DVC_SUBDIR = "dvc"
MLFLOW_SUBDIR = "mlflow"


def redact(text: str) -> str:
    """``text`` with every secret of the environment, and any ``user:password@`` in a URL, masked.

    Secrets shorter than 4 characters are left alone: masking them would mangle ordinary text
    and such a value is no secret anyway.
    """
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def s3_url(cfg: S3Config, *parts: str) -> str:
    """``s3://<bucket>/<prefix>/<parts...>``."""
    return f"s3://{cfg.bucket}/{_join(cfg.prefix, *parts)}".rstrip("/")


@dataclass(frozen=True)
class RemoteSpec:
    """A DVC remote: its name, URL and the ``dvc remote modify`` options it needs (no secrets)."""

    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)


def dvc_remote(storage: StorageConfig) -> RemoteSpec:
    """The DVC remote ``storage`` asks for: a local directory, or ``<prefix>/dvc`` in the bucket."""
    if storage.remote == "local":
        return RemoteSpec("local", str(storage.local_dir))
    options = {
        "region": storage.s3.region,
        "connect_timeout": str(S3_TIMEOUT_S),
        "read_timeout": str(S3_TIMEOUT_S),
    }
    if storage.s3.endpoint_url:
        options["endpointurl"] = storage.s3.endpoint_url
    return RemoteSpec("s3", s3_url(storage.s3, DVC_SUBDIR), options)


def mlflow_artifact_location(storage: StorageConfig, experiment: str) -> str | None:
    """Where an embedded-store experiment keeps its artefacts on S3; ``None`` for local storage."""
    if storage.remote != "s3":
        return None
    return s3_url(storage.s3, MLFLOW_SUBDIR, experiment)


def mlflow_environment(storage: StorageConfig) -> dict[str, str]:
    """Environment MLflow's own S3 client needs for ``storage`` (endpoint and region, no secrets)."""
    if storage.remote != "s3":
        return {}
    env = {"AWS_DEFAULT_REGION": storage.s3.region}
    if storage.s3.endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = storage.s3.endpoint_url
    return env


def _where(cfg: S3Config) -> str:
    return f"bucket {cfg.bucket!r} at {cfg.endpoint_url or 'AWS S3'}"


def storage_error(exc: Exception, cfg: S3Config, action: str, key: str | None = None) -> StorageError:
    """A boto3/botocore failure as one clear :class:`StorageError` naming the bucket, never a secret.

    ``key`` is the object an operation was about: a bare 404 then means that object is missing
    (HEAD requests carry no error code, so a 404 alone cannot say more).
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    # boto3's transfer manager wraps the client error in its own (S3UploadFailedError): unwrap it
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (ClientError, BotoCoreError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, Exception):
        exc = cause
    where = _where(cfg)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        message = (
            f"{action}: no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
        )
    elif isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        message = f"{action}: cannot reach {where}: {exc}"
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        if code == "NoSuchBucket" or (code == "404" and key is None):
            message = f"{action}: {where} does not exist (create it, or fix storage.s3.bucket)"
        elif code in ("NoSuchKey", "404"):
            message = f"{action}: no such object {key!r} in {where}"
        elif code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
            message = (
                f"{action}: {where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY"
            )
        else:
            message = f"{action}: {where} answered {code}: {error.get('Message', exc)}"
    else:
        message = f"{action}: {where}: {exc}"
    return StorageError(redact(message))


class S3Store:
    """Upload and download artefacts under ``storage.s3.prefix`` of one bucket.

    Retries and timeouts are bounded so an unreachable endpoint fails in seconds with one
    clear error rather than hanging a pipeline step.
    """

    def __init__(
        self, cfg: S3Config, max_attempts: int = S3_MAX_ATTEMPTS, timeout_s: float = S3_TIMEOUT_S
    ) -> None:
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                s3={"addressing_style": "path"} if cfg.endpoint_url else {},
            ),
        )

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the configured prefix."""
        return _join(self.cfg.prefix, *parts)

    def check(self) -> None:
        """Raise :class:`StorageError` unless the bucket exists and accepts these credentials."""
        try:
            self.client.head_bucket(Bucket=self.cfg.bucket)
        except Exception as exc:  # botocore raises several unrelated types
            raise storage_error(exc, self.cfg, "checking the bucket") from None

    def upload(self, path: Path | str, *parts: str) -> str:
        """Upload a file (multipart when large) to ``<prefix>/<parts>``; return its ``s3://`` URL."""
        path = Path(path)
        return self.upload_key(path, self.key(*parts) if parts else self.key(path.name))

    def upload_key(self, path: Path | str, key: str) -> str:
        """Upload a file to the object ``key`` of the bucket (not under the prefix); its URL."""
        path = Path(path)
        try:
            self.client.upload_file(str(path), self.cfg.bucket, key)
        except Exception as exc:
            raise storage_error(exc, self.cfg, f"uploading {path}", key) from None
        log.info("uploaded %s to s3://%s/%s", path, self.cfg.bucket, key)
        return f"s3://{self.cfg.bucket}/{key}"

    def download(self, path: Path | str, *parts: str) -> Path:
        """Download ``<prefix>/<parts>`` to ``path`` atomically (no partial file on failure)."""
        path = Path(path)
        key = self.key(*parts)
        try:
            with atomic_path(path) as tmp:
                self.client.download_file(self.cfg.bucket, key, str(tmp))
        except Exception as exc:
            raise storage_error(exc, self.cfg, f"downloading s3://{self.cfg.bucket}/{key}", key) from None
        return path

    def delete(self, *parts: str) -> None:
        """Remove ``<prefix>/<parts>`` (no error if it is already gone)."""
        key = self.key(*parts)
        try:
            self.client.delete_object(Bucket=self.cfg.bucket, Key=key)
        except Exception as exc:
            raise storage_error(exc, self.cfg, f"deleting s3://{self.cfg.bucket}/{key}", key) from None

    def list(self, *parts: str) -> list[str]:
        """Keys under ``<prefix>/<parts>`` (relative to the bucket)."""
        prefix = self.key(*parts)
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except Exception as exc:
            raise storage_error(exc, self.cfg, f"listing s3://{self.cfg.bucket}/{prefix}") from None
        return keys

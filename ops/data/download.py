"""Resumable, checksum-verified downloads and safe archive extraction (standard library only).

Written by hand because the standard library does not protect against hostile archives by
default: ``zipfile`` and ``tarfile`` expand a bomb without limit, and ``tarfile`` (unless the
opt-in ``filter="data"`` is used) writes absolute paths, ``..`` members and files through links
outside the target. The usual helpers do not fit either: DVC and the hub clients fetch from
their own stores, and pooch verifies checksums but enforces no size limit on extraction.
"""

from __future__ import annotations

import http.client
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from ops.errors import DownloadError
from ops.io import sha256_file

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
# what a corrupt (rather than hostile) archive raises while being read
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    OSError,
    ValueError,
)


# --------------------------------------------------------------------------- download


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    timeout_s: float = 30,
    retries: int = 3,
    chunk_bytes: int = 1 << 20,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` (HTTP or HTTPS), resuming and verifying; return ``dest``.

    Bytes go to ``dest.name + ".part"`` beside ``dest``. A ``.part`` left by an earlier run
    or attempt is resumed with a ``Range`` request (appended on ``206``, started over on
    ``200``; a ``416`` means the ``.part`` is already complete, or longer than the file and
    discarded). A connection that drops mid-transfer (early close, reset, read timeout, a
    ``5xx``/``429`` answer) is retried up to ``retries`` times with exponential backoff
    starting at ``backoff_s``; a host that cannot be reached at all is reported at once.
    When the transfer is complete the sha256 (if given) is verified and only then is the file
    renamed to ``dest``: ``dest`` never exists half-written. A wrong checksum deletes the
    ``.part``; a transfer still truncated after all retries keeps it, so the next call resumes.

    An existing ``dest`` whose checksum matches is returned without any request (with
    ``sha256=None`` an existing ``dest`` is trusted: it is only ever created complete).
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256, url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url}: only http:// and https:// URLs are supported")

    if dest.exists():
        if expected is None:
            log.info("%s already present, not downloading %s (no checksum given)", dest, url)
            return dest
        got = sha256_file(dest)
        if got == expected:
            log.info("%s already present with the expected sha256, not downloading", dest)
            return dest
        log.warning("%s exists but its sha256 is %s, not %s: downloading it again", dest, got, expected)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _transfer(url, part, timeout_s=timeout_s, retries=retries, chunk_bytes=chunk_bytes, backoff_s=backoff_s)

    if expected is not None:
        got = sha256_file(part)
        if got != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {got} "
                f"(downloaded file {part} deleted)"
            )
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _normalise_sha256(sha256: str | None, url: str) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise DownloadError(f"checksum for {url} is not a sha256 hex digest (64 hex digits): {sha256!r}")
    return value


def _transfer(
    url: str, part: Path, *, timeout_s: float, retries: int, chunk_bytes: int, backoff_s: float
) -> None:
    """Bring ``part`` to the complete content of ``url``, resuming and retrying."""
    reached = False  # a host never reached is reported at once; one that dropped us gets retries
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        outcome = _attempt(url, part, offset, timeout_s=timeout_s, chunk_bytes=chunk_bytes, reached=reached)
        reached = True
        if outcome.done:
            return
        if outcome.restart:  # the server answered in a way that cannot be appended to: start over
            part.unlink(missing_ok=True)
            if outcome.problem is None:
                continue
        if attempt >= retries:
            raise DownloadError(f"{outcome.problem} (gave up after {attempt + 1} attempts)")
        attempt += 1
        delay = backoff_s * 2 ** (attempt - 1)
        log.warning("%s; retry %d/%d in %.1f s", outcome.problem, attempt, retries, delay)
        time.sleep(delay)


@dataclass
class _Outcome:
    done: bool = False
    restart: bool = False
    problem: str | None = None  # why this attempt did not finish (retryable)


def _attempt(
    url: str, part: Path, offset: int, *, timeout_s: float, chunk_bytes: int, reached: bool
) -> _Outcome:
    headers = {"User-Agent": "visionforge", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left to send: .part is complete, or longer than the file
            whole = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", exc.headers.get("Content-Range", ""))
            if whole is not None and int(whole.group(1)) == offset:
                return _Outcome(done=True)
            return _Outcome(restart=True)
        problem = f"{url}: HTTP {exc.code} {exc.reason}"
        if exc.code in _RETRY_STATUSES:
            return _Outcome(problem=problem)
        raise DownloadError(problem) from exc
    except urllib.error.URLError as exc:
        problem = f"cannot reach {url}: {exc.reason}"
        if not reached:
            raise DownloadError(problem) from exc
        return _Outcome(problem=problem)
    except (http.client.HTTPException, OSError) as exc:  # connected, but no (valid) response
        problem = f"no valid response from {url}: {exc!r}"
        if not reached:
            raise DownloadError(problem) from exc
        return _Outcome(problem=problem)

    with response:
        total = _expected_total(response, offset)
        if total is None and response.status == 206:  # a range we did not ask for, or unparsable
            problem = f"{url}: unusable partial response {_content_range(response)}"
            return _Outcome(restart=True, problem=problem)
        if response.status != 206:
            if offset:
                log.info("%s does not resume (HTTP %d): starting over", url, response.status)
            offset = 0
        elif offset:
            log.info("resuming %s at byte %d", url, offset)
        mode = "ab" if offset else "wb"
        received = offset
        problem = None
        with (
            open(part, mode) as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=None,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    # read1: what has arrived, so a read timeout loses no bytes already received
                    chunk = response.read1(chunk_bytes)
                except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
                    problem = f"connection to {url} dropped after {received} bytes: {exc!r}"
                    break
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))

    if problem is None and total is not None and received < total:
        problem = f"transfer of {url} truncated: received {received} of {total} bytes (Content-Length)"
    if problem is not None:
        return _Outcome(problem=f"{problem}; partial file kept at {part}")
    if total is not None and received > total:
        return _Outcome(restart=True, problem=f"{url} sent {received} bytes, more than the announced {total}")
    return _Outcome(done=True)


def _content_range(response: http.client.HTTPResponse) -> str:
    return response.headers.get("Content-Range", "(no Content-Range)")


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Size of the whole file as announced by the server; None when unknown (or unusable 206)."""
    length = response.headers.get("Content-Length")
    length_int = int(length) if length and length.strip().isdigit() else None
    if response.status != 206:
        return length_int
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", _content_range(response))
    if match is None or int(match.group(1)) != offset:
        return None
    if match.group(3) != "*":
        return int(match.group(3))
    return int(match.group(2)) + 1


# --------------------------------------------------------------------------- extraction


@dataclass
class _Member:
    """One archive entry, reduced to what extraction needs, whatever the archive format."""

    name: str  # as stored in the archive (for messages)
    kind: str  # "file", "dir", "symlink", "hardlink"
    size: int = 0  # declared uncompressed size
    mode: int = 0o644
    linkname: str = ""
    open: Callable[[], AbstractContextManager[IO[bytes]]] | None = None


def extract(archive: Path, target: Path, *, max_bytes: int, max_files: int = 100_000) -> Path:
    """Safely extract a .tar(.gz/.tgz/.bz2/.xz) or .zip ``archive`` into ``target``; return it.

    Refused with :class:`DownloadError` naming the archive and the member: absolute paths,
    paths that leave ``target`` (``..``), links whose destination (as resolved on disk) lies
    outside ``target``, writes through such links, device files and fifos, more than
    ``max_files`` members, or more than ``max_bytes`` uncompressed bytes (declared sizes are
    checked before writing and the bytes actually written are counted, since headers can lie).

    Extraction happens in a temporary directory beside ``target`` that is renamed to
    ``target`` only on full success; on any failure it is removed, so nothing half-extracted
    is left and nothing is written outside it. ``target`` must not exist or be an empty
    directory (it is then replaced); a non-empty ``target`` is an error, never merged into.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DownloadError(f"archive {archive} does not exist")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DownloadError(f"cannot extract {archive}: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise DownloadError(f"cannot extract {archive}: {target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        _Extractor(archive, tmp, max_bytes=max_bytes, max_files=max_files).run()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s -> %s", archive, target)
    return target


def fetch_archive(
    url: str,
    sha256: str | None,
    downloads_dir: Path,
    target: Path,
    *,
    max_bytes: int,
    max_files: int = 100_000,
    filename: str | None = None,
    timeout_s: float = 30,
    retries: int = 3,
) -> Path:
    """Download ``url`` into ``downloads_dir`` (verified, resumable) and extract it to ``target``.

    ``filename`` defaults to the last component of the URL path. A non-empty ``target`` is
    taken as a previous complete extraction (:func:`extract` only ever creates it complete)
    and returned without downloading; delete it to extract again.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()):
        log.info("%s already extracted, not fetching %s", target, url)
        return target
    name = filename or posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not name or name in (".", "..") or "/" in name:
        raise DownloadError(f"cannot derive a file name from {url}: pass filename=")
    archive = download(url, Path(downloads_dir) / name, sha256, timeout_s=timeout_s, retries=retries)
    return extract(archive, target, max_bytes=max_bytes, max_files=max_files)


class _Extractor:
    """Writes the members of one archive into ``root`` (a fresh private directory)."""

    def __init__(self, archive: Path, root: Path, *, max_bytes: int, max_files: int) -> None:
        self.archive = archive
        self.root = root
        self.root_real = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.written = 0
        self.symlinks: list[tuple[str, Path]] = []

    def fail(self, member: str, why: str) -> DownloadError:
        return DownloadError(f"unsafe archive {self.archive}: member {member!r} {why}")

    def run(self) -> None:
        name = self.archive.name.lower()
        try:
            if name.endswith(".zip"):
                self._extract_all(self._zip_members())
            elif name.endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(self.archive):
                self._extract_all(self._tar_members())
            elif zipfile.is_zipfile(self.archive):
                self._extract_all(self._zip_members())
            else:
                raise DownloadError(f"{self.archive} is not a tar or zip archive")
        except DownloadError:
            raise
        except _ARCHIVE_ERRORS as exc:
            raise DownloadError(f"cannot extract {self.archive}: {exc!r}") from exc
        # chains of links can only be judged once all exist: every link must end up inside
        for member, path in self.symlinks:
            if not self._inside(os.path.realpath(path)):
                raise self.fail(member, "is a link that resolves outside the target")

    # -- readers: turn tar/zip entries into _Member, refusing unknown types up front

    def _tar_members(self) -> Iterator[_Member]:
        with tarfile.open(self.archive, mode="r|*") as tf:  # streaming: one pass, bounded memory
            for info in tf:
                if info.isreg():
                    yield _Member(
                        info.name,
                        "file",
                        info.size,
                        info.mode,
                        open=lambda info=info: _TarData(tf.extractfile(info)),
                    )
                elif info.isdir():
                    yield _Member(info.name, "dir", mode=info.mode)
                elif info.issym():
                    yield _Member(info.name, "symlink", linkname=info.linkname)
                elif info.islnk():
                    yield _Member(info.name, "hardlink", linkname=info.linkname)
                else:
                    raise self.fail(info.name, "is a device file, fifo or other special file")

    def _zip_members(self) -> Iterator[_Member]:
        with zipfile.ZipFile(self.archive) as zf:
            infos = zf.infolist()
            if len(infos) > self.max_files:
                raise DownloadError(
                    f"unsafe archive {self.archive}: {len(infos)} members, "
                    f"more than max_files={self.max_files}"
                )
            declared = sum(info.file_size for info in infos)
            if declared > self.max_bytes:
                raise DownloadError(
                    f"unsafe archive {self.archive}: declares {declared} uncompressed bytes, "
                    f"more than max_bytes={self.max_bytes}"
                )
            for info in infos:
                unix_mode = info.external_attr >> 16
                file_type = stat.S_IFMT(unix_mode)
                if info.is_dir():
                    yield _Member(info.filename, "dir")
                elif file_type == stat.S_IFLNK:
                    if info.file_size > 4096:
                        raise self.fail(info.filename, "is a symlink with an implausibly long target")
                    yield _Member(info.filename, "symlink", linkname=zf.read(info).decode("utf-8"))
                elif file_type in (0, stat.S_IFREG):
                    yield _Member(
                        info.filename,
                        "file",
                        info.file_size,
                        (unix_mode & 0o777) or 0o644,
                        open=lambda info=info: zf.open(info),
                    )
                else:
                    raise self.fail(info.filename, "is a device file, fifo or other special file")

    # -- writing

    def _extract_all(self, members: Iterator[_Member]) -> None:
        count = 0
        declared = 0
        for member in members:
            count += 1
            if count > self.max_files:
                raise self.fail(member.name, f"exceeds max_files={self.max_files} members")
            declared += member.size
            if declared > self.max_bytes:
                raise self.fail(
                    member.name, f"takes the archive past max_bytes={self.max_bytes} uncompressed bytes"
                )
            rel = self._relative(member.name)
            if rel is None:  # the root itself ("./")
                if member.kind != "dir":
                    raise self.fail(member.name, "has an empty name")
                continue
            path = self.root / rel
            self._prepare_parent(member.name, path)
            if member.kind == "dir":
                self._make_dir(member.name, path)
            elif member.kind == "file":
                self._write_file(member, path)
            elif member.kind == "symlink":
                self._make_symlink(member, rel, path)
            else:
                self._make_hardlink(member, path)

    def _relative(self, name: str) -> str | None:
        """The member's normalised path relative to the root; refuses absolute and escaping ones."""
        if "\x00" in name:
            raise self.fail(name, "has a NUL byte in its name")
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            raise self.fail(name, "has an absolute path")
        norm = posixpath.normpath(name)
        if norm == ".." or norm.startswith("../"):
            raise self.fail(name, "has a path that leaves the target (..)")
        return None if norm == "." else norm

    def _inside(self, real: str) -> bool:
        return real == self.root_real or real.startswith(self.root_real + os.sep)

    def _prepare_parent(self, member: str, path: Path) -> None:
        """Create the parent directories of ``path``, refusing to go through links leading out."""
        if not self._inside(os.path.realpath(path.parent)):
            raise self.fail(member, "would be written through a link that leads outside the target")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._inside(os.path.realpath(path.parent)):  # unreachable unless the tree changed
            raise self.fail(member, "would be written through a link that leads outside the target")
        # a previous member of the same name is replaced (tar semantics), never followed
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()

    def _make_dir(self, member: str, path: Path) -> None:
        path.mkdir(exist_ok=True)  # _prepare_parent removed any file or link of that name

    def _write_file(self, member: _Member, path: Path) -> None:
        if path.is_dir():
            raise self.fail(member.name, "is a file where the archive already put a directory")
        assert member.open is not None
        mode = (member.mode & 0o755) | 0o600  # no setuid/sticky, no group/other write
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with member.open() as src, os.fdopen(os.open(path, flags, mode), "wb") as dst:
            while block := src.read(1 << 20):
                self.written += len(block)
                if self.written > self.max_bytes:
                    raise self.fail(
                        member.name,
                        f"expands past max_bytes={self.max_bytes} uncompressed bytes (more than declared)",
                    )
                dst.write(block)

    def _make_symlink(self, member: _Member, rel: str, path: Path) -> None:
        link = member.linkname
        if not link or link.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", link):
            raise self.fail(member.name, f"is a link to an absolute path {link!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise self.fail(member.name, f"is a link to {link!r}, outside the target")
        os.symlink(link, path)
        if not self._inside(os.path.realpath(path)):
            raise self.fail(member.name, f"is a link to {link!r} that resolves outside the target")
        self.symlinks.append((member.name, path))

    def _make_hardlink(self, member: _Member, path: Path) -> None:
        # a tar hard link names an earlier member, relative to the archive root
        link = member.linkname
        source_rel = posixpath.normpath(link)
        if link.startswith(("/", "\\")) or source_rel == ".." or source_rel.startswith("../"):
            raise self.fail(member.name, f"is a hard link to {link!r}, outside the target")
        if source_rel == "." or "\x00" in link:
            raise self.fail(member.name, f"is a hard link to {link!r}, not a file")
        source = self.root / source_rel
        if not self._inside(os.path.realpath(source)):
            raise self.fail(member.name, f"is a hard link to {link!r}, outside the target")
        if source.is_symlink() or not source.is_file():
            raise self.fail(member.name, f"is a hard link to {link!r}, not an extracted file")
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError:  # filesystems without hard links: copy
            shutil.copyfile(source, path, follow_symlinks=False)


class _TarData(AbstractContextManager):
    """The data of one tar member as a context manager (``extractfile`` may return None)."""

    def __init__(self, fh: IO[bytes] | None) -> None:
        if fh is None:
            raise tarfile.ExtractError("member has no data")
        self.fh = fh

    def __enter__(self) -> IO[bytes]:
        return self.fh

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

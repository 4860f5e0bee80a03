"""Downloads against a real HTTP server on 127.0.0.1 (Range support, connections cut or stalled
mid-body, error statuses) and extraction of good and hostile tar/zip archives built here."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.data.download import download, extract, fetch_archive
from ops.errors import DownloadError

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MB = 1 << 20


# --------------------------------------------------------------------------- the HTTP server


@dataclass
class ServerState:
    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True  # honour Range requests (206) or ignore them (200)
    cut_requests: int = 0  # the next N bodies are cut after cut_after bytes ...
    cut_after: int = 0
    stall: bool = False  # ... and then stall (read timeout) instead of closing
    fail_statuses: list[int] = field(default_factory=list)  # answer the next requests with these
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        if state.fail_statuses:
            self.send_error(state.fail_statuses.pop(0))
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and state.ranges:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_requests > 0:
            state.cut_requests -= 1
            self.wfile.write(body[: state.cut_after])
            self.wfile.flush()
            if state.stall:
                state.release.wait(10)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    state = ServerState(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- archive builders


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tar(path: Path, members: list[tuple], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for info, fileobj in members:
            tf.addfile(info, fileobj)
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def good_tar_gz(path: Path) -> Path:
    return make_tar(
        path,
        [
            _info("data", kind=tarfile.DIRTYPE),
            _info("data/a.txt", b"alpha\n"),
            _info("data/sub/b.bin", bytes(range(256)) * 40),
            _info("data/link", kind=tarfile.SYMTYPE, linkname="a.txt"),
            _info("data/sub/up", kind=tarfile.SYMTYPE, linkname="../a.txt"),
            _info("data/hard", kind=tarfile.LNKTYPE, linkname="data/a.txt"),
        ],
        mode="w:gz",
    )


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# --------------------------------------------------------------------------- download


def test_fetch_archive_downloads_verifies_and_extracts(server: ServerState, tmp_path: Path) -> None:
    archive = good_tar_gz(tmp_path / "src" / "data.tar.gz")
    server.files["/files/data.tar.gz"] = archive.read_bytes()
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    target = tmp_path / "datasets" / "demo"

    out = fetch_archive(
        server.url("/files/data.tar.gz"), sha, tmp_path / "downloads", target, max_bytes=MB, timeout_s=5
    )

    assert out == target
    assert (target / "data" / "a.txt").read_text() == "alpha\n"
    assert (target / "data" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 40
    assert (tmp_path / "downloads" / "data.tar.gz").read_bytes() == archive.read_bytes()
    assert not (tmp_path / "downloads" / "data.tar.gz.part").exists()
    # a second call finds the extraction and asks the server nothing
    count = len(server.requests)
    assert fetch_archive(server.url("/files/data.tar.gz"), sha, tmp_path / "downloads", target, max_bytes=MB)
    assert len(server.requests) == count


def test_truncated_transfer_resumes_with_range(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    server.cut_requests, server.cut_after = 1, 100_000
    dest = tmp_path / "big.bin"

    download(server.url("/big.bin"), dest, PAYLOAD_SHA, chunk_bytes=16_384, backoff_s=0, timeout_s=5)

    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")]
    assert not dest.with_name("big.bin.part").exists()


def test_read_timeout_mid_body_resumes(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    server.cut_requests, server.cut_after, server.stall = 1, 50_000, True
    dest = tmp_path / "big.bin"

    download(server.url("/big.bin"), dest, PAYLOAD_SHA, timeout_s=0.5, backoff_s=0)

    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=50000-"]


def test_server_ignoring_range_starts_over(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    server.ranges = False
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"stale bytes from another file" * 10)

    download(server.url("/big.bin"), dest, PAYLOAD_SHA, backoff_s=0)

    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", "bytes=290-")]


def test_complete_part_left_by_a_crash_is_finished_without_new_bytes(
    server: ServerState, tmp_path: Path
) -> None:
    server.files["/big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(PAYLOAD)  # crashed between the last byte and the rename

    download(server.url("/big.bin"), dest, PAYLOAD_SHA)

    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", "bytes=300000-")]  # answered 416 "bytes */300000"


def test_part_longer_than_the_file_is_discarded(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(PAYLOAD + b"junk")

    download(server.url("/big.bin"), dest, PAYLOAD_SHA)

    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", "bytes=300004-"), ("/big.bin", None)]


def test_truncated_after_all_retries_raises_keeps_part_and_resumes_later(
    server: ServerState, tmp_path: Path
) -> None:
    server.files["/big.bin"] = PAYLOAD
    server.cut_requests, server.cut_after = 10, 50_000
    dest = tmp_path / "big.bin"
    url = server.url("/big.bin")

    with pytest.raises(DownloadError, match=r"truncated: received 150000 of 300000 bytes") as err:
        download(url, dest, PAYLOAD_SHA, retries=2, backoff_s=0)
    assert url in str(err.value)
    assert len(server.requests) == 3
    assert not dest.exists()
    assert dest.with_name("big.bin.part").stat().st_size == 150_000

    server.cut_requests = 0
    download(url, dest, PAYLOAD_SHA, backoff_s=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/big.bin", "bytes=150000-")


def test_wrong_checksum_raises_and_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    wrong = "0" * 64

    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        download(server.url("/big.bin"), dest, wrong)

    message = str(err.value)
    assert server.url("/big.bin") in message and wrong in message and PAYLOAD_SHA in message
    assert "big.bin.part" in message
    assert list(tmp_path.iterdir()) == []


def test_malformed_checksum_is_refused_before_any_request(server: ServerState, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not a sha256"):
        download(server.url("/big.bin"), tmp_path / "x", "md5:abc")
    assert server.requests == []


def test_unreachable_host_raises_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.tar.gz"

    with pytest.raises(DownloadError, match=rf"cannot reach {re.escape(url)}"):
        download(url, tmp_path / "data.tar.gz", None, timeout_s=1, retries=3, backoff_s=5)
    assert list(tmp_path.iterdir()) == []


def test_http_404_raises_naming_the_status(server: ServerState, tmp_path: Path) -> None:
    url = server.url("/missing.zip")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download(url, tmp_path / "missing.zip", None, backoff_s=5)
    assert url in str(err.value)
    assert len(server.requests) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


def test_server_error_is_retried(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    server.fail_statuses = [503]
    download(server.url("/big.bin"), tmp_path / "big.bin", PAYLOAD_SHA, backoff_s=0)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_existing_file_with_right_checksum_is_not_downloaded(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    dest.write_bytes(PAYLOAD)
    assert download(server.url("/big.bin"), dest, PAYLOAD_SHA) == dest
    assert server.requests == []


def test_existing_file_with_wrong_checksum_is_downloaded_again(server: ServerState, tmp_path: Path) -> None:
    server.files["/big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    dest.write_bytes(b"corrupt")
    download(server.url("/big.bin"), dest, PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- extraction


def test_good_tar_gz_extracts_with_links_inside(tmp_path: Path) -> None:
    archive = good_tar_gz(tmp_path / "good.tar.gz")
    target = tmp_path / "out" / "target"

    assert extract(archive, target, max_bytes=MB) == target

    data = target / "data"
    assert (data / "a.txt").read_text() == "alpha\n"
    assert (data / "link").is_symlink() and (data / "link").read_text() == "alpha\n"
    assert (data / "sub" / "up").read_text() == "alpha\n"
    assert (data / "hard").read_text() == "alpha\n" and not (data / "hard").is_symlink()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["target"]  # no temp dir left


def test_good_zip_extracts(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "good.zip", {"top.txt": b"top", "dir/": b"", "dir/nested/x.bin": b"\1" * 5000}
    )
    target = tmp_path / "out" / "target"
    (target).mkdir(parents=True)  # an existing empty target is replaced

    extract(archive, target, max_bytes=MB)

    assert (target / "top.txt").read_bytes() == b"top"
    assert (target / "dir" / "nested" / "x.bin").read_bytes() == b"\1" * 5000
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["target"]


def test_non_empty_target_is_refused_and_untouched(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "good.zip", {"top.txt": b"top"})
    target = tmp_path / "out" / "target"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")

    with pytest.raises(DownloadError, match="not empty"):
        extract(archive, target, max_bytes=MB)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["target"]


def _assert_refused(archive: Path, tmp_path: Path, member: str, **limits: int) -> DownloadError:
    """Extraction raises naming archive and member; target, temp dir and strays are all absent."""
    before = snapshot(tmp_path)
    target = tmp_path / "out" / "target"
    with pytest.raises(DownloadError) as err:
        extract(archive, target, **{"max_bytes": MB, **limits})
    message = str(err.value)
    assert str(archive) in message
    assert member in message, message
    assert snapshot(tmp_path) - before <= {tmp_path / "out"}  # only the (empty) parent of target
    assert not target.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    return err.value


def test_tar_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a" / "evil.tar", [_info("ok.txt", b"ok"), _info("../evil.txt", b"evil")])
    _assert_refused(archive, tmp_path, "../evil.txt")
    assert not (tmp_path / "evil.txt").exists()


def test_tar_with_absolute_member_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "absolute-evil.txt"
    archive = make_tar(tmp_path / "a" / "evil.tar", [_info(str(victim), b"evil")])
    err = _assert_refused(archive, tmp_path, str(victim))
    assert "absolute" in str(err)
    assert not victim.exists()


@pytest.mark.parametrize("link", ["/etc", "../..", "ABSOLUTE_VICTIM"])
def test_tar_with_symlink_out_then_write_through_it_is_refused(tmp_path: Path, link: str) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    if link == "ABSOLUTE_VICTIM":
        link = str(victim_dir)
    archive = make_tar(
        tmp_path / "a" / "evil.tar",
        [
            _info("escape", kind=tarfile.SYMTYPE, linkname=link),
            _info("escape/visionforge-evil.txt", b"evil"),
        ],
    )
    _assert_refused(archive, tmp_path, "escape")
    assert not Path("/etc/visionforge-evil.txt").exists()
    assert list(victim_dir.iterdir()) == []


@pytest.mark.parametrize("write_through", [True, False])
def test_tar_with_chained_links_leading_out_is_refused(tmp_path: Path, write_through: bool) -> None:
    # each link looks harmless on its own: "m" points to deep/1/2/l/.. (inside, read lexically),
    # "deep/1/2/l" points to ../../.. (the root); together m is the root's parent. Writing through
    # m is caught on the spot; a lone m is caught by the final check of every link on disk.
    members = [
        _info("m", kind=tarfile.SYMTYPE, linkname="deep/1/2/l/.."),
        _info("deep/1/2/l", kind=tarfile.SYMTYPE, linkname="../../.."),
    ]
    if write_through:
        members.append(_info("m/evil.txt", b"evil"))
    archive = make_tar(tmp_path / "a" / "evil.tar", members)
    _assert_refused(archive, tmp_path, "m/evil.txt" if write_through else "'m'")
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_tar_with_hardlink_outside_is_refused(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a" / "evil.tar", [_info("h", kind=tarfile.LNKTYPE, linkname="../../a/evil.tar")]
    )
    _assert_refused(archive, tmp_path, "'h'")


def test_tar_with_fifo_is_refused(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a" / "evil.tar", [_info("ok.txt", b"ok"), _info("pipe", kind=tarfile.FIFOTYPE)]
    )
    err = _assert_refused(archive, tmp_path, "pipe")
    assert "fifo" in str(err)


def test_tar_over_size_limit_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a" / "bomb.tar.xz", [_info("zeros.bin", bytes(5 * MB))], mode="w:xz")
    assert archive.stat().st_size < 100_000
    _assert_refused(archive, tmp_path, "zeros.bin")


def test_tar_with_too_many_files_is_refused(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a" / "many.tar.bz2", [_info(f"f{i}", b"x") for i in range(11)], mode="w:bz2"
    )
    err = _assert_refused(archive, tmp_path, "f10", max_files=10)
    assert "max_files=10" in str(err)


def test_zip_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a" / "evil.zip", {"ok.txt": b"ok", "../evil": b"evil"})
    _assert_refused(archive, tmp_path, "../evil")
    assert not (tmp_path / "evil").exists()


def test_zip_bomb_is_refused_from_its_declared_size(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a" / "bomb.zip", {"zeros.bin": bytes(5 * MB)})
    assert archive.stat().st_size < 100_000
    err = _assert_refused(archive, tmp_path, "bomb.zip")
    assert "max_bytes" in str(err)


def test_zip_bomb_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a" / "liar.zip", {"zeros.bin": bytes(5 * MB)})
    raw = bytearray(archive.read_bytes())
    # declare 1000 bytes in the local header (offset 22) and the central directory (offset 24)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(signature) + offset
        raw[at : at + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    _assert_refused(archive, tmp_path, "liar.zip")


def test_zip_with_too_many_files_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a" / "many.zip", {f"f{i}": b"x" for i in range(11)})
    err = _assert_refused(archive, tmp_path, "many.zip", max_files=10)
    assert "max_files=10" in str(err)

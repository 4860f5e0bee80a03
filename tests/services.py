"""Real servers the tests start on 127.0.0.1: free ports, readiness, stopping by process group,
the nanio S3-compatible server and a PostgreSQL 15 cluster in a temporary directory."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_pid() -> int:
    """The id of a process that has exited (what a killed writer's leftovers record)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Until ``url`` answers at all (an HTTP error status is an answer); fails if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop_group(
    process: subprocess.Popen, signals: tuple[tuple[int, float], ...] = ((signal.SIGTERM, 20),)
) -> None:
    """Each signal in turn to ``process``'s group until it exits, then SIGKILL for what is left
    (children that outlived the parent). ``process`` must have been started in a new session."""
    for sig, wait_s in signals:
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
    # A SIGKILL is delivered, not done: members other than the leader may still be exiting (and
    # being reaped by init) when the leader has been waited for.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def start_nanio(
    data_dir: Path, bucket: str, access_key: str, secret_key: str, log: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """nanio (checks request signatures) serving ``bucket`` from ``data_dir`` on ``port`` (default a
    free one); returns it and its URL."""
    (data_dir / bucket).mkdir(parents=True, exist_ok=True)  # buckets are folders
    port = port or free_port()
    with log.open("a") as out:
        process = subprocess.Popen(
            [
                str(BIN / "nanio"),
                "serve",
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret_key},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/", process, 60)
    except RuntimeError:
        stop_group(process)
        raise
    return process, endpoint


def start_mlflow_server(
    backend_store_uri: str, artifacts_destination: str, env: dict[str, str], log: Path, cwd: Path, port: int
) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` (one worker, the GenAI job runners off), ready to
    answer; ``env`` is its whole environment (S3 endpoint and credentials for the artefacts)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--workers",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                backend_store_uri,
                "--artifacts-destination",
                artifacts_destination,
            ],
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # a dozen idle processes otherwise
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, 180)
    except RuntimeError:
        stop_group(process, ((signal.SIGKILL, 10),))
        raise
    return process


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL 15 server binaries, if installed."""
    path = Path("/usr/lib/postgresql/15/bin")
    return path if (path / "postgres").exists() else None


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL 15 cluster on 127.0.0.1: password authentication (scram) for one
    user, its own socket directory. Run as ``postgres`` when the tests run as root (initdb
    refuses root), so its directory lives outside pytest's root-only temporary tree."""

    user: str
    password: str
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vf-postgres-")))
    process: subprocess.Popen | None = None

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def init(self) -> None:
        binaries = postgres_bin()
        assert binaries is not None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chmod(self.directory, 0o755)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(
            self._as_owner(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(self.directory / "data"),
                    "-U",
                    self.user,
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        password_file.unlink()

    def start(self) -> None:
        binaries = postgres_bin()
        assert binaries is not None
        log = self.directory / "postgres.log"
        self.process = subprocess.Popen(
            self._as_owner(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(self.directory / "data"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.directory),
                    "-c",
                    "fsync=off",
                ]
            ),
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}: {log.read_text()[-2000:]}"
                )
            ready = subprocess.run(
                [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"postgres not ready on port {self.port} after 60 s")

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open transactions are rolled back, clients disconnected)."""
        if self.process is not None:
            stop_group(self.process, ((signal.SIGINT, 30),))
            self.process = None

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.url("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def dagster_env(self, database: str = "dagster") -> dict[str, str]:
        """The variables docker/dagster.yaml reads to reach this server."""
        return {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_DB": database,
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
        }

    def url(self, database: str, driver: str | None = None) -> str:
        """A connection URL; ``driver`` for SQLAlchemy's ``postgresql+<driver>://`` form."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Tmpfs:
    """A filesystem of a chosen size mounted at ``mountpoint``: a disk that fills on demand.
    Mounting needs root (CAP_SYS_ADMIN); :func:`tmpfs_unavailable` says why when it cannot."""

    def __init__(self, mountpoint: Path, size_bytes: int) -> None:
        self.mountpoint = mountpoint
        self.size_bytes = size_bytes

    def mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs")

    def resize(self, size_bytes: int) -> None:
        """Grow or shrink it (not below what it holds)."""
        self.size_bytes = size_bytes
        self._mount("-o", f"remount,size={size_bytes}")

    def used_bytes(self) -> int:
        stats = os.statvfs(self.mountpoint)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def unmount(self) -> None:
        """Unmount; still busy (a file a failed writer left open), detach it now and let the
        kernel free it when the last file closes."""
        if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.mountpoint)], check=True, capture_output=True)

    def _mount(self, *options: str) -> None:
        done = subprocess.run(["mount", *options, str(self.mountpoint)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"mount {' '.join(options)} {self.mountpoint}: {done.stderr.strip()}")


def tmpfs_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (not root, no CAP_SYS_ADMIN); None when it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = Tmpfs(Path(tempfile.mkdtemp(prefix="vf-tmpfs-probe-")), 1 << 20)
    try:
        probe.mount()
        probe.unmount()
    except RuntimeError as exc:
        return str(exc)
    finally:
        shutil.rmtree(probe.mountpoint, ignore_errors=True)
    return None

"""The CPU runtime image (docker/Dockerfile), built and run by a Docker daemon started here.

Debian's dockerd runs with its own data and exec roots in a temporary directory, without a
bridge or iptables rules: builds and containers use the host's network. The base image is
bootstrapped from Debian's bookworm packages with mmdebstrap (``docker/build-image.sh base``;
the tarball is cached in build/docker), so no registry is needed. The image is built from
scratch each time (a fresh daemon, no layer cache) with the local torch CPU wheel; its size and
the build times are printed and written to build/docker-image.json.

``VISIONFORGE_DOCKER_ROOT=DIR`` keeps the daemon's state in DIR across runs (its layer cache
makes a rebuild after a source change take seconds); ``VISIONFORGE_TORCH_WHEEL`` names the
torch-2.13.0+cpu wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, tiny_params_dict, write_params
from tests.services import stop_group

pytestmark = pytest.mark.docker

IMAGE = "visionforge:cpu"
BASE_IMAGE = "visionforge-base:bookworm"
TORCH_WHEEL = Path(
    os.environ.get(
        "VISIONFORGE_TORCH_WHEEL", "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
)
BUILD_SCRIPT = REPO_ROOT / "docker" / "build-image.sh"
CACHE_DIR = REPO_ROOT / "build" / "docker"
BUILD_LOG = REPO_ROOT / "build" / "docker-build.log"
FIGURES = REPO_ROOT / "build" / "docker-image.json"
USER_ID = 1000  # the image's user (docker/Dockerfile), owner of the mount points
TASK = "sidd"
BUILD_TIMEOUT_S = 3600  # about 8 minutes on 2 busy cores; pip downloads most of it


def _dockerd() -> str | None:
    return shutil.which("dockerd") or next(
        (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None
    )


def _docker_client(dockerd: str) -> str | None:
    """The client packaged with the daemon (same API version) before any other on PATH."""
    beside = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("docker")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "starting dockerd and bootstrapping the base image with mmdebstrap need root"
    dockerd = _dockerd()
    if dockerd is None:
        return "dockerd is not installed (Debian: apt-get install docker.io)"
    if _docker_client(dockerd) is None:
        return "the docker client is not installed (Debian: apt-get install docker.io)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (Debian: apt-get install mmdebstrap)"
    if not TORCH_WHEEL.is_file():
        return f"no torch CPU wheel at {TORCH_WHEEL} (set VISIONFORGE_TORCH_WHEEL)"
    return None


_REASON = _why_not()
if _REASON is not None:
    pytestmark = [pytest.mark.docker, pytest.mark.skip(reason=_REASON)]


@dataclass
class Docker:
    client: str
    env: dict[str, str]
    version: str = ""

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done


def _mounts_under(root: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            mounts.append(point)
    return mounts


def _processes_naming(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (containerd and its shims name their sockets)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if str(root).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _stop_daemon(process: subprocess.Popen, docker: Docker, root: Path) -> None:
    if process.poll() is None:
        leftover = docker("ps", "-aq", check=False).stdout.split()
        if leftover:
            docker("rm", "-f", *leftover, check=False)
    # dockerd stops its containerd (a process group of its own) and unmounts its layers itself
    stop_group(process, ((signal.SIGTERM, 60),))
    for pid in _processes_naming(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    """A Docker daemon of our own: its state, exec root and socket under one directory."""
    dockerd = _dockerd()
    assert dockerd is not None
    kept = os.environ.get("VISIONFORGE_DOCKER_ROOT")
    root = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="vf-docker-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "client").mkdir(exist_ok=True)
    (root / "daemon.json").write_text("{}\n")  # never the host's /etc/docker/daemon.json
    socket = root / "docker.sock"
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{socket}",
        "DOCKER_CONFIG": str(root / "client"),  # no credentials or settings of the host's client
        "DOCKER_BUILDKIT": "0",
    }
    docker = Docker(client=_docker_client(dockerd) or "docker", env=env)
    log = (root / "dockerd.log").open("ab")
    process = subprocess.Popen(
        [
            dockerd,
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{socket}",
            f"--config-file={root / 'daemon.json'}",
            # no bridge or NAT: every container here runs with --network host
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"dockerd exited with {process.returncode}:\n{_tail(root / 'dockerd.log')}")
            done = docker("version", "-f", "{{.Server.Version}}", timeout=30, check=False)
            if done.returncode == 0:
                docker.version = done.stdout.strip()
                break
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer in 90 s:\n{_tail(root / 'dockerd.log')}")
            time.sleep(1)
        yield docker
    finally:
        _stop_daemon(process, docker, root)
        log.close()
        if not kept:
            shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even when output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def _build_step(step: str, docker: Docker) -> tuple[float, str]:
    env = {
        **docker.env,
        "DOCKER": docker.client,
        "IMAGE": IMAGE,
        "BASE_IMAGE": BASE_IMAGE,
        "TORCH_WHEEL": str(TORCH_WHEEL),
        "CACHE_DIR": str(CACHE_DIR),
    }
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with BUILD_LOG.open("a") as log:
        log.write(f"\n==== docker/build-image.sh {step}\n")
        log.flush()
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), step],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        log.write(done.stdout)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-60:])
        pytest.fail(f"docker/build-image.sh {step} exited with {done.returncode} (log: {BUILD_LOG}):\n{tail}")
    return time.monotonic() - start, done.stdout


@pytest.fixture(scope="module")
def image(docker: Docker, request: pytest.FixtureRequest) -> str:
    BUILD_LOG.unlink(missing_ok=True)
    base_s, base_out = _build_step("base", docker)
    image_s, _ = _build_step("image", docker)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip())
    base_size = int(docker("image", "inspect", "-f", "{{.Size}}", BASE_IMAGE).stdout.strip())
    figures = {
        "image": IMAGE,
        "base_image": BASE_IMAGE,
        "size_mb": round(size / 1e6),
        "base_size_mb": round(base_size / 1e6),
        "base_s": round(base_s, 1),
        "base_from_cache": "(cached)" in base_out,
        "image_build_s": round(image_s, 1),
        "total_build_s": round(base_s + image_s, 1),
        "docker": docker.version,
        "cpus": os.cpu_count(),
    }
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
    _report(
        request,
        f"\n==> {IMAGE}: {figures['size_mb']} MB (base {figures['base_size_mb']} MB); image built in "
        f"{figures['image_build_s']} s, base in {figures['base_s']} s"
        f"{' (tarball from cache: import only)' if figures['base_from_cache'] else ' (mmdebstrap)'}; "
        f"{os.cpu_count()} CPUs, Docker {docker.version}; {FIGURES.relative_to(REPO_ROOT)}",
    )
    return IMAGE


def _run(docker: Docker, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return docker("run", "--rm", "--network", "host", *args, timeout=timeout, check=check)


def test_cli_runs(docker: Docker, image: str) -> None:
    done = _run(docker, image, "visionforge", "--help")
    assert "ingest" in done.stdout and "export" in done.stdout
    # the default command is the same
    assert "ingest" in _run(docker, image).stdout


def test_runtime_contract(docker: Docker, image: str) -> None:
    """Unprivileged, no compiler, Dagster and DVC on PATH, the layout other files rely on."""
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{USER_ID}:{USER_ID}"
    assert config["WorkingDir"] == "/opt/visionforge"
    assert "DAGSTER_HOME=/opt/dagster/home" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"

    script = (
        "set -e; id -u; pwd; "
        "for tool in gcc cc g++ c++ clang make; do command -v $tool || true; done; "
        "dagster --version; dvc --version; "
        "test -w data && test -w artifacts && test -w $DAGSTER_HOME && test -r params.yaml && "
        "test -r dvc.yaml && test -r workspace.yaml && test -r $DAGSTER_HOME/dagster.yaml && echo layout-ok"
    )
    lines = _run(docker, image, "sh", "-c", script).stdout.splitlines()
    assert lines[0] == str(USER_ID)
    assert lines[1] == "/opt/visionforge"
    assert lines[2].startswith("dagster, version"), lines  # nothing printed for a compiler
    assert lines[3].strip()[0].isdigit(), lines  # dvc's version
    assert lines[-1] == "layout-ok"


def test_healthcheck_reports_healthy(docker: Docker, image: str) -> None:
    name = "visionforge-health"
    docker("rm", "-f", name, check=False)
    docker(
        "run", "-d", "--name", name, "--network", "host",
        "--health-interval", "2s", "--health-start-period", "0s", image, "sleep", "300",
    )  # fmt: skip
    try:
        status = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
            if status in ("healthy", "unhealthy"):
                break
            time.sleep(1)
        assert status == "healthy", docker("inspect", "-f", "{{json .State.Health}}", name).stdout
    finally:
        docker("rm", "-f", name, check=False)


def test_pipeline_writes_to_mounted_volumes(
    docker: Docker, image: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """ingest, train and export on tiny params, as the image's user, into host directories
    mounted on the image's data/ and artifacts/ (relative paths, read from the working directory)."""
    data, artifacts, config = tmp_path / "data", tmp_path / "artifacts", tmp_path / "config"
    for directory in (data, artifacts, config):
        directory.mkdir()
    for directory in (data, artifacts):
        os.chown(directory, USER_ID, USER_ID)
    raw = tiny_params_dict(Path("."))  # data/..., artifacts/...: relative to /opt/visionforge
    raw["tracking"].update(store="artifacts/mlruns.db", artifacts="artifacts/mlartifacts")
    write_params(config, raw)

    steps = " && ".join(f"visionforge {step} {TASK} --params /mnt/config/params.yaml" for step in
                        ("ingest", "train", "export"))  # fmt: skip
    start = time.monotonic()
    done = _run(
        docker,
        "-v", f"{data}:/opt/visionforge/data",
        "-v", f"{artifacts}:/opt/visionforge/artifacts",
        "-v", f"{config}:/mnt/config:ro",
        image, "sh", "-c", steps,
        timeout=900, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    _report(request, f"\n==> ingest + train + export {TASK} (tiny params) in the container: {elapsed:.0f} s")

    assert any((data / TASK).rglob("*"))
    weights = artifacts / TASK / "model" / "model.pt"
    onnx_path = artifacts / TASK / "onnx" / "model.onnx"
    assert weights.is_file() and onnx_path.is_file()
    assert (artifacts / "mlruns.db").is_file()
    assert onnx_path.stat().st_uid == USER_ID  # written by the image's user, not root

    import onnx

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images"]

"""Training on several processes and machines: torchrun runs copies of one worker, and
:func:`ops.train.fit` inside each joins them with DistributedDataParallel.

:func:`train_task` is how the CLI and the Dagster asset train any task. With one process it
calls the task's ``train`` directly; with more (``train.nproc``, ``--nproc``, ``--nnodes``) it
starts ``torchrun`` on this module, streams rank 0's output to the caller, and reads back what
rank 0 wrote. Only rank 0 writes checkpoints, weights, history and plots; MLflow is recorded by
the caller once torchrun has finished, so it is written once per run, never per rank.

What makes several processes the same training as one:

- ``batch_size`` is the global batch; each of N ranks takes ``batch_size / N`` of it.
- :class:`GlobalOrderSampler` draws the permutation the one-process loop draws for the epoch,
  and rank r takes every N-th item of it, so the N ranks' batches of a step are together the
  one-process batch of that step.
- DDP averages gradients over ranks, which equals one process's gradient for a loss that is a
  mean over images (the restorers' PSNR and Charbonnier losses). BatchNorm normalises per rank
  on CPU (SyncBatchNorm is CUDA-only) and CenterNet normalises its loss by the objects a rank
  sees: the detector trains correctly in DDP but is not bit-for-bit the one-process run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from ops.config import Params, load_params
from ops.errors import ConfigError, VisionForgeError
from ops.io import write_json
from ops.layout import TaskLayout
from ops.tasks import task_steps

log = logging.getLogger(__name__)

WORKER_MODULE = "ops.distributed"


class DistributedTrainingError(VisionForgeError):
    """A rank failed, the rendezvous never completed, or the launch itself was impossible."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's environment variables)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def per_rank_batch(global_batch: int, world: World) -> int:
    if global_batch % world.world_size:
        raise ConfigError(
            f"train.batch_size {global_batch} is the global batch and must divide evenly over "
            f"{world.world_size} processes; use a multiple of {world.world_size}"
        )
    return global_batch // world.world_size


class GlobalOrderSampler:
    """This rank's share of the epoch's order: the permutation a shuffling DataLoader seeded
    with ``seed + epoch`` yields, padded to a multiple of the ranks, every N-th item from ``rank``.

    torch's DistributedSampler shards a permutation of its own (``randperm`` of a fresh
    generator), which differs from the one the DataLoader draws (the loader takes a base seed
    from the generator first). Drawing it through a real DataLoader keeps one-process training
    in the order it always had, and makes N ranks' batches exactly its batches.
    """

    def __init__(self, size: int, seed: int, world: World) -> None:
        self.size, self.seed, self.world = size, seed, world
        self.epoch = 0
        self.total = -(-size // world.world_size) * world.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        import torch
        from torch.utils.data import DataLoader

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return [
            int(i) for i in DataLoader(range(self.size), batch_size=None, shuffle=True, generator=generator)
        ]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        padded = order + order[: self.total - self.size]  # as DistributedSampler pads
        return iter(padded[self.world.rank :: self.world.world_size])

    def __len__(self) -> int:
        return self.total // self.world.world_size


@contextmanager
def process_group(world: World, device_type: str, timeout_s: float) -> Iterator[None]:
    """Join the other ranks for the duration of the block (nothing to join for one process).

    NCCL on GPUs, gloo on CPUs. ``timeout_s`` bounds every collective, so a rank that hangs
    makes the others fail instead of waiting forever."""
    if not world.distributed:
        yield
        return
    import torch.distributed as dist

    if device_type == "cuda":
        import torch

        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


# --- launching ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How many processes train, and where they meet.

    ``nnodes`` > 1 needs ``rdzv_endpoint`` (host:port of one node, every node runs the same
    command); one node alone rendezvouses on a free local port (torchrun ``--standalone``)."""

    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    @property
    def single_process(self) -> bool:
        return self.nproc == 1 and self.nnodes == 1


def available_devices(device: str) -> tuple[str, int]:
    """(what a process gets, how many this machine has) for ``train.device``."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "GPU", torch.cuda.device_count()
    return "CPU core", os.cpu_count() or 1


def check_launch(launch: Launch, device: str, timeout_s: float) -> None:
    """Refuse a launch that cannot work before starting any process."""
    if launch.nproc < 1 or launch.nnodes < 1:
        raise ConfigError(f"--nproc and --nnodes must be at least 1 (got {launch.nproc}, {launch.nnodes})")
    kind, count = available_devices(device)
    if launch.nproc > count:
        raise ConfigError(
            f"--nproc {launch.nproc} asks for {launch.nproc} training processes on this node, but it "
            f"has {count} {kind}{'s' if count != 1 else ''} (train.device: {device}); use --nproc {count} "
            "or fewer"
        )
    if launch.nnodes > 1:
        if not launch.rdzv_endpoint:
            raise ConfigError(
                f"--nnodes {launch.nnodes} needs --rdzv-endpoint HOST:PORT (one node's address)"
            )
        wait_for_endpoint(launch.rdzv_endpoint, timeout_s)


def wait_for_endpoint(endpoint: str, timeout_s: float) -> None:
    """Wait until a rendezvous endpoint on another machine accepts connections (its node may
    still be starting, as pods of one job start together); one on this machine is hosted by this
    node's torchrun. Fails naming the endpoint after ``timeout_s``."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--rdzv-endpoint {endpoint!r} is not HOST:PORT")
    if _is_this_machine(host):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as exc:
            if time.monotonic() + 1 > deadline:
                raise DistributedTrainingError(
                    f"rendezvous endpoint {endpoint} was unreachable from this node for {timeout_s:g} s "
                    f"(train.dist_timeout_s; last error: {exc}); start the node that hosts it, or "
                    "check the address and that the port is open"
                ) from None
            time.sleep(1)


def _is_this_machine(host: str) -> bool:
    """Whether torchrun on this machine hosts the endpoint: it compares the host with this
    machine's names and addresses the same way."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None)}
        ours = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return bool(theirs & ours)


def train_task(
    task: str,
    params: Params,
    resume: bool = False,
    after_epoch: Callable[[int], None] | None = None,
    launch: Launch | None = None,
    on_output: Callable[[str], None] | None = None,
    worker_module: str = WORKER_MODULE,
) -> Any:
    """Train ``task``'s model in this process or across several; the task's ``TrainResult``.

    ``launch`` defaults to ``train.nproc`` processes on this node. ``on_output`` receives rank
    0's output lines (default: this process's stdout); ``after_epoch`` is called in-process only.
    Returns None on a node of a multi-node run that did not host rank 0: that node writes nothing.
    """
    train_cfg = getattr(params, task).train
    launch = launch or Launch(nproc=train_cfg.nproc)
    if launch.single_process:
        return task_steps(task).train(params, resume=resume, after_epoch=after_epoch)
    check_launch(launch, train_cfg.device, train_cfg.dist_timeout_s)
    return _run_torchrun(task, params, resume, launch, on_output or _print_line, worker_module)


def _print_line(line: str) -> None:
    print(line, flush=True)


def _run_torchrun(
    task: str,
    params: Params,
    resume: bool,
    launch: Launch,
    on_output: Callable[[str], None],
    worker_module: str,
) -> Any:
    from ops.train import TrainResult

    # One directory per launch: several nodes may share artifacts/, and each must find only
    # the result its own rank 0 wrote. Kept after a failure for its per-rank logs.
    runs = TaskLayout.for_task(params, task).model_dir / "distributed"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="launch-", dir=runs))
    params_path, result_path, log_dir = run_dir / "params.yaml", run_dir / "result.json", run_dir / "logs"
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    timeout_s = getattr(params, task).train.dist_timeout_s
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={launch.rdzv_id or f'visionforge-{task}'}",
            f"--rdzv-conf=join_timeout={int(timeout_s)}",
        ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={launch.nproc}",
        f"--log-dir={log_dir}",
        "--tee=3",  # every rank's output to its log file ...
        "--local-ranks-filter=0",  # ... and local rank 0's to the console
        "-m",
        worker_module,
        task,
        "--params",
        str(params_path),
        "--result",
        str(result_path),
        *(["--resume"] if resume else []),
    ]
    env = dict(os.environ)
    # torchrun would pin every rank to 1 thread; split this node's cores between its ranks.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc)))
    log.info("launching %d x %d training processes: %s", launch.nnodes, launch.nproc, " ".join(command))
    output: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            output.append(line)
            on_output(line)
        returncode = process.wait()
    if returncode != 0:
        raise DistributedTrainingError(_describe_failure(returncode, output, log_dir, launch, timeout_s))
    result = TrainResult.from_dict(json.loads(result_path.read_text())) if result_path.is_file() else None
    shutil.rmtree(run_dir)
    if result is None:
        log.info("rank 0 ran on another node; it writes the model and records the run")
    return result


# One rank's entry in torchrun's failure report.
_FAILURE = re.compile(
    r"rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<exitcode>-?\d+)"
    r".*?error_file\s*:\s*(?P<error_file>\S+).*?traceback\s*:\s*(?P<traceback>[^\n]*)",
    re.DOTALL,
)


def _describe_failure(
    returncode: int, output: list[str], log_dir: Path, launch: Launch, timeout_s: float
) -> str:
    """One sentence from torchrun's failure report: which rank failed first, and with what."""
    text = "\n".join(output)
    if "RendezvousTimeoutError" in text:
        return (
            f"the rendezvous at {launch.rdzv_endpoint} timed out after {int(timeout_s)} s waiting for "
            f"{launch.nnodes} nodes (train.dist_timeout_s); start the same command on every node"
        )
    root_at = text.find("Root Cause")
    match = _FAILURE.search(text, root_at) if root_at >= 0 else None
    if match is None:
        tail = " | ".join(line for line in output[-5:] if line.strip())
        return f"torchrun exited with status {returncode}: {tail} (every rank's log: {log_dir})"
    if int(match["exitcode"]) == -signal.SIGTERM:
        # Once a rank fails, torchrun SIGTERMs the others and reports them too, timed to the
        # second: a rank it stopped can tie with the one that failed and be named the root cause.
        listed_at = text.rfind("Failures:", 0, root_at)
        others = _FAILURE.finditer(text[max(listed_at, 0) : root_at])
        match = next((m for m in others if int(m["exitcode"]) != -signal.SIGTERM), match)
    rank, exitcode = match["rank"], int(match["exitcode"])
    reason = _error_file_message(match["error_file"]) or match["traceback"].strip()
    if exitcode < 0:
        reason = f"killed by {signal.Signals(-exitcode).name}"
    return f"training rank {rank} failed: {reason} (every rank's log: {log_dir})"


def _error_file_message(path: str) -> str | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    message = data.get("message")
    if isinstance(message, dict):
        message = message.get("message")
    return str(message).strip() if message else None


# --- the worker torchrun starts -----------------------------------------------------------


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {WORKER_MODULE}",
        description="One training rank; torchrun starts these (visionforge train --nproc N).",
    )
    parser.add_argument("task")
    parser.add_argument("--params", type=Path, required=True, help="the run's full params")
    parser.add_argument("--result", type=Path, required=True, help="where rank 0 writes its result")
    parser.add_argument("--resume", action="store_true")
    return parser


def worker_main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import record

    @record  # writes the exception to torchrun's error file, which names this rank
    def main() -> None:
        args = _worker_parser().parse_args(argv)
        world = World.from_env()
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s %(levelname)s rank {world.rank}: %(message)s",
            datefmt="%H:%M:%S",
        )
        result = task_steps(args.task).train(load_params(args.params), resume=args.resume)
        if world.is_main:
            write_json(args.result, result.to_dict())

    main()


if __name__ == "__main__":
    worker_main()

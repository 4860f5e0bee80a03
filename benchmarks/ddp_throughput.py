"""Training throughput of the demo detector: N gloo processes x 1 thread against 1 process x N
threads, on the same cores, interleaved in one run.

Both run the real training loop (``ops.train.fit``): the distributed configuration through
``visionforge``'s torchrun launcher, the single one as a plain process. Images/s is the train
split's size over the median time of an epoch after the first (rank 0 timestamps each epoch's
end), so start-up, imports and the first epoch's warm-up are left out.

    python -m benchmarks.ddp_throughput [--images 400] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ops.config import load_params
from ops.distributed import Launch, World, train_task
from ops.tasks import task_steps

TIMES_ENV = "BENCHMARK_EPOCH_TIMES"  # set: this process is a training rank of the benchmark


def _worker() -> None:
    """A rank (or the single process): train, and have rank 0 write when each epoch ended."""
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    ends: list[float] = []
    task_steps(args.task).train(
        load_params(args.params), after_epoch=lambda _: ends.append(time.perf_counter())
    )
    if World.from_env().is_main:
        Path(os.environ[TIMES_ENV]).write_text(json.dumps(ends))


def _params_file(workdir: Path, images: int, epochs: int) -> Path:
    """The repository's demo detector (256 px, width 0.25, batch 8) on ``images`` generated images."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["project"] = {"data_dir": str(workdir / "data"), "artifacts_dir": str(workdir / "artifacts")}
    traffic = raw["traffic"]
    traffic["dataset"]["root"] = str(workdir / "data" / "traffic")
    traffic["dataset"]["generator"].update(num_train=images, num_val=8)
    traffic["train"].update(epochs=epochs, device="cpu")
    raw["tracking"].update(uri=None, store=str(workdir / "mlruns.db"), artifacts=str(workdir / "mlartifacts"))
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _images_per_s(ends: list[float], images: int) -> float:
    return images / statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


def _single(params_path: Path, threads: int, times: Path) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), TIMES_ENV: str(times)}
    command = [sys.executable, "-m", "benchmarks.ddp_throughput", "traffic", "--params", str(params_path)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(times.read_text())


def _distributed(params_path: Path, nproc: int, times: Path) -> list[float]:
    os.environ[TIMES_ENV] = str(times)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        train_task(
            "traffic",
            load_params(params_path),
            launch=Launch(nproc=nproc),
            on_output=lambda _: None,
            worker_module="benchmarks.ddp_throughput",
        )
    finally:
        del os.environ[TIMES_ENV], os.environ["OMP_NUM_THREADS"]
    return json.loads(times.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="train images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 3 (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each configuration (default: %(default)s)"
    )
    parser.add_argument("--nproc", type=int, default=os.cpu_count(), help="processes (default: the cores)")
    parser.add_argument("--out", type=Path, default=Path("build/ddp-throughput.json"))
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (the first epoch is left out, the median needs two)")
    with tempfile.TemporaryDirectory(prefix="ddp-throughput-") as scratch:
        workdir = Path(scratch)
        params_path = _params_file(workdir, args.images, args.epochs)
        task_steps("traffic").ingest(load_params(params_path))
        single, distributed = f"1 process x {args.nproc} threads", f"{args.nproc} gloo processes x 1 thread"
        rates: dict[str, list[float]] = {single: [], distributed: []}
        for repeat in range(args.repeats):  # interleaved, so drift in the machine hits both alike
            ends = _single(params_path, args.nproc, workdir / f"single-{repeat}.json")
            rates[single].append(_images_per_s(ends, args.images))
            ends = _distributed(params_path, args.nproc, workdir / f"ddp-{repeat}.json")
            rates[distributed].append(_images_per_s(ends, args.images))
            print(
                f"repeat {repeat + 1}: " + ", ".join(f"{k}: {v[-1]:.1f} images/s" for k, v in rates.items())
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    report = {
        "model": "traffic demo detector (256 px, width 0.25, global batch 8, float32)",
        "cores": os.cpu_count(),
        "images": args.images,
        "epochs": args.epochs,
        "images_per_s": rates,
        "median_images_per_s": medians,
        "distributed_over_single": medians[distributed] / medians[single],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'configuration':<32} {'images/s':>9}")
    for name, value in medians.items():
        print(f"{name:<32} {value:>9.1f}")
    print(f"ratio (distributed / single): {report['distributed_over_single']:.2f}   -> {args.out}")


if __name__ == "__main__":
    if os.environ.get(TIMES_ENV):
        _worker()
    else:
        main()

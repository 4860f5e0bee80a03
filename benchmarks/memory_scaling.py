"""Peak memory of the dataset report and of evaluation against the size of the validation set.

For each task and each scale, a tiny configuration whose validation set is ``scale`` times the
smallest is generated, a model is trained on it for one epoch, and then two commands run in
their own processes, as a user runs them:

- ``visionforge ingest <task>`` on the generated data (it is kept: this is the dataset report
  alone, reading and checking every file);
- ``visionforge evaluate <task>`` (the model on every validation image, the task's metrics).

Each one's peak resident memory is the kernel's ``ru_maxrss`` of that process (``wait4``). A
command that streams its data keeps the same peak at any size. One that holds the set grows
with it; the table shows the growth per validation image between the two largest sets.

    python -m benchmarks.memory_scaling [--tasks traffic sidd gopro] [--scales 1 4 16]
        [--workdir build/memory] [--out artifacts/memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ops.io import save_figure, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
# The generator setting that sizes each task's validation set, and how many images one unit is.
VALIDATION_SIZE = {
    "traffic": ("traffic.dataset.generator.num_val", 1),
    "sidd": ("sidd.dataset.generator.num_val_images", 1),
    "gopro": ("gopro.dataset.generator.num_test_sequences", None),  # frames_per_sequence each
}
BASE_UNITS = {"traffic": 32, "sidd": 4, "gopro": 1}
# The demo's image sizes over the tests' tiny ones, so that a set held in memory would show: at
# the largest scale 512 traffic images (96 MiB decoded), 64 SIDD block images (48 MiB, noisy and
# clean), 128 GOPRO frames (27 MiB, blurred and sharp).
SIZES = {
    "traffic": {"traffic.dataset.generator.image_width": 256, "traffic.dataset.generator.image_height": 256},
    "sidd": {
        "sidd.dataset.generator.block_size": 128,
        "sidd.dataset.generator.blocks_per_image": 8,
        "sidd.dataset.generator.image_width": 256,
        "sidd.dataset.generator.image_height": 256,
    },
    "gopro": {
        "gopro.dataset.generator.image_width": 256,
        "gopro.dataset.generator.image_height": 144,
        "gopro.dataset.generator.frames_per_sequence": 8,
    },
}


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


def _run(command: list[str], cwd: Path, log: Path) -> int:
    """Run ``command``; its peak resident memory in KiB (``ru_maxrss``). Fails on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}): see {log}")
    return usage.ru_maxrss


def measure(task: str, scale: int, workdir: Path) -> dict[str, Any]:
    from tests.conftest import tiny_params_dict

    run = workdir / f"{task}-x{scale}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    raw = tiny_params_dict(run)
    for dotted, value in SIZES[task].items():
        _set(raw, dotted, value)
    key, per_unit = VALIDATION_SIZE[task]
    units = BASE_UNITS[task] * scale
    _set(raw, key, units)
    images = units * (per_unit or raw[task]["dataset"]["generator"]["frames_per_sequence"])
    params = run / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cli = [sys.executable, "-m", "ops.cli"]
    log = run / "commands.log"
    _run([*cli, "ingest", task, "--params", str(params)], run, log)  # generates
    report_kib = _run([*cli, "ingest", task, "--params", str(params)], run, log)  # keeps, reports
    _run([*cli, "train", task, "--params", str(params), "--set", f"{task}.train.epochs=1"], run, log)
    evaluate_kib = _run([*cli, "evaluate", task, "--params", str(params)], run, log)
    return {
        "task": task,
        "scale": scale,
        "validation_images": images,
        "report_mib": round(report_kib / 1024, 1),
        "evaluate_mib": round(evaluate_kib / 1024, 1),
    }


def growth(rows: list[dict[str, Any]], column: str) -> float:
    """MiB per validation image between the two largest sets. (Between the smallest two, a set
    smaller than one evaluation batch runs smaller batches: a one-off step, not growth.)"""
    first, last = rows[-2], rows[-1]
    images = last["validation_images"] - first["validation_images"]
    return (last[column] - first[column]) / images if images else 0.0


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6))
    for axis, (column, title) in zip(
        figure.subplots(1, 2),
        (("report_mib", "dataset report (ingest)"), ("evaluate_mib", "evaluation")),
        strict=True,
    ):
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["task"] == task]
            axis.plot([r["validation_images"] for r in mine], [r[column] for r in mine], "o-", label=task)
        axis.set_xscale("log")
        axis.set_xlabel("validation images")
        axis.set_ylabel("peak RSS (MiB)")
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_scaling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", nargs="+", default=list(VALIDATION_SIZE), choices=list(VALIDATION_SIZE))
    parser.add_argument(
        "--scales", nargs="+", type=int, default=[1, 4, 16], help="multiples of the smallest set"
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/memory"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/memory"))
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        for scale in sorted(args.scales):
            rows.append(measure(task, scale, args.workdir.resolve()))
            print(rows[-1], flush=True)
    print("\n| task | validation images | dataset report peak RSS | evaluation peak RSS |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['validation_images']} | {r['report_mib']} MiB | {r['evaluate_mib']} MiB |")
    summary = {}
    for task in args.tasks:
        mine = [r for r in rows if r["task"] == task]
        summary[task] = {c: round(growth(mine, c), 3) for c in ("report_mib", "evaluate_mib")}
        print(
            f"{task}: MiB per validation image: report {summary[task]['report_mib']}, "
            f"evaluation {summary[task]['evaluate_mib']}"
        )
    write_json(args.out / "memory_scaling.json", {"rows": rows, "mib_per_image": summary})
    print(f"plot: {plot(rows, args.out / 'memory_scaling.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

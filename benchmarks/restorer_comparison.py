"""The CNN (NAFNet) against the channel-attention transformer, on both restoration tasks, with
the same data and about the same training time.

For each task (sidd, gopro) and each ``model.arch``, the task's chain runs through the same
steps the pipeline uses (``ops.restoration.steps``): train on the task's data with the task's
``train`` settings, export to ONNX, quantise to INT8, score PyTorch / ONNX / INT8 (PSNR,
SSIM) and time every backend side by side. Outputs go to ``<out>/<task>-<arch>/``; the
dataset is shared. The transformer's configuration (``TRANSFORMER``) was chosen to cost
about what the demo's NAFNet costs per training step on this CPU, so equal steps are about
equal time; the measured training time of each is printed beside its figures.

    python -m benchmarks.restorer_comparison [--tasks sidd gopro] [--out artifacts/comparison]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ops.config import load_params
from ops.restoration.models import restorer_macs
from ops.restoration.nafnet import count_parameters
from ops.restoration.training import load_restorer
from ops.tasks import task_steps

# Width 8, more blocks at the low resolutions and none at the full-resolution decoder level
# (where this design's decoder runs at twice the width): about NAFNet-w16's cost per step.
TRANSFORMER: dict[str, Any] = {
    "arch": "transformer",
    "width": 8,
    "enc_blocks": [1, 1, 2],
    "middle_blocks": 2,
    "dec_blocks": [2, 1, 0],
    "heads": [1, 2, 4, 8],
}


def run(task: str, arch: str, params_path: Path, out: Path, benchmark_size: tuple[int, int]) -> dict:
    overrides: dict[str, Any] = {
        "project.artifacts_dir": str(out / f"{task}-{arch}"),
        f"{task}.benchmark.sizes": [list(benchmark_size)],
        f"{task}.benchmark.runs": 5,
    }
    if arch == "transformer":
        overrides[f"{task}.model"] = TRANSFORMER
    params = load_params(params_path, overrides)
    steps = task_steps(task)
    steps.ingest(params)
    started = time.perf_counter()
    steps.train(params)
    train_s = time.perf_counter() - started
    steps.export(params)
    steps.quantize(params)
    summary = steps.validate(params)
    bench = steps.benchmark(params)
    model = load_restorer(steps.layout(params).weights).model
    height, width = benchmark_size
    ms = {row["backend"]: row["ms_per_megapixel"] for row in bench["rows"]}
    metrics = summary["metrics"]
    return {
        "task": task,
        "arch": arch,
        "train_s": round(train_s, 1),
        "params_k": round(count_parameters(model) / 1e3, 1),
        "gmacs_256": round(restorer_macs(model, 256, 256) / 1e9, 3),
        "psnr_input": metrics["pytorch"]["psnr_input"],
        "psnr": metrics["pytorch"]["psnr"],
        "ssim": metrics["pytorch"]["ssim"],
        "ssim_input": metrics["pytorch"]["ssim_input"],
        "int8_loss_db": round(metrics["pytorch"]["psnr"] - metrics["onnx-int8"]["psnr"], 3),
        "ms_per_mp": {k: ms.get(k) for k in ("pytorch", "onnx", "onnx-int8")},
        "benchmark_size": f"{height}x{width}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tasks", nargs="+", default=["sidd", "gopro"])
    parser.add_argument("--out", type=Path, default=Path("artifacts/comparison"))
    args = parser.parse_args()
    sizes = {"sidd": (256, 256), "gopro": (144, 256)}
    rows = [
        run(task, arch, args.params, args.out, sizes.get(task, (256, 256)))
        for task in args.tasks
        for arch in ("nafnet", "transformer")
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    header = (
        "| task | model | train s | params | GMACs 256² | PSNR (input) | SSIM (input) | "
        "ms/MP PyTorch | ONNX FP32 | ONNX INT8 | INT8 loss dB |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in rows:
        ms = r["ms_per_mp"]
        print(
            f"| {r['task']} | {r['arch']} | {r['train_s']:.0f} | {r['params_k']:.0f} k | "
            f"{r['gmacs_256']:.2f} | "
            f"{r['psnr']:.2f} ({r['psnr_input']:.2f}) | {r['ssim']:.3f} ({r['ssim_input']:.3f}) | "
            f"{ms['pytorch']:.0f} | {ms['onnx']:.0f} | {ms['onnx-int8']:.0f} | {r['int8_loss_db']:+.3f} |"
        )


if __name__ == "__main__":
    main()

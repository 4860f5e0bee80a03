"""How much training the GOPRO deblurrer needs: PSNR gain on the demo's test set against
training time, on whatever device ``train.device: auto`` picks (a GPU where one is present).

Each run trains through the pipeline's own step (``task_steps("gopro").train``) on generated
data. The test split is the demo's: a sequence depends only on the seed, its split and its
index, so ``--train-sequences`` adds training sequences and leaves the test set as it is. A
probe of two short epochs measures the run's crops per second; the run then trains for
``--budget`` seconds' worth of crops with a complete warm-up + cosine schedule, split into
``--evals`` epochs, and after each epoch the checkpoint is scored on the test split by the
pipeline's evaluation (8-bit outputs, PSNR/SSIM at data range 255). Evaluation time is not
counted as training time. The budget is approximate (short probe epochs pay the loader's
start-up, so long ones run faster): the curve's ``train_s`` is what was measured.

Runs (``RUNS``): ``demo`` is ``params.yaml``'s network and recipe, only longer; ``gopro-w32``
is NAFNet's published GoPro network (width 32, encoder [1, 1, 1, 28]) with 128 px crops.

    python -m benchmarks.deblur_training_budget [--runs demo gopro-w32] [--budget 150]
        [--train-sequences 16] [--workers 0] [--out artifacts/deblur-budget]

Writes ``<out>/results.json`` after every evaluation (a run cut short keeps what it measured)
and ``<out>/gain_vs_time.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ops.config import Params, load_params
from ops.deploy.runtime import RESTORER, TorchPredictor
from ops.io import save_figure, write_json
from ops.restoration.evaluate import evaluate_restorer
from ops.restoration.models import build_restorer
from ops.restoration.nafnet import count_parameters
from ops.tasks import task_steps
from ops.train import load_checkpoint, pick_device

RUNS: dict[str, dict[str, Any]] = {
    "demo": {},
    "gopro-w32": {
        "gopro.model": {
            "arch": "nafnet",
            "width": 32,
            "enc_blocks": [1, 1, 1, 28],
            "middle_blocks": 1,
            "dec_blocks": [1, 1, 1, 1],
        },
        "gopro.train.crop_size": 128,
        "gopro.train.batch_size": 32,
        "gopro.train.lr": 0.001,  # NAFNet's GoPro recipe
    },
}


def _params(base: Path, overrides: dict[str, Any]) -> Params:
    return load_params(base, overrides)


def crops_per_second(base: Path, overrides: dict[str, Any], probe_crops: int) -> float:
    """The second of two short epochs (the first pays for start-up), in crops per second."""
    ends: list[float] = []
    params = _params(base, {**overrides, "gopro.train.epochs": 2, "gopro.train.crops_per_epoch": probe_crops})
    task_steps("gopro").train(params, after_epoch=lambda _: ends.append(time.perf_counter()))
    return probe_crops / (ends[1] - ends[0])


def run(
    name: str,
    base: Path,
    common: dict[str, Any],
    budget_s: float,
    evals: int,
    probe_steps: int,
    results: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    overrides = {**common, **RUNS[name], "project.artifacts_dir": str(out / name)}
    batch = _params(base, overrides).gopro.train.batch_size
    probe_dir = {"project.artifacts_dir": str(out / name / "probe")}
    rate = crops_per_second(base, {**overrides, **probe_dir}, probe_steps * batch)
    crops_per_epoch = max(batch, round(rate * budget_s / evals / batch) * batch)
    params = _params(
        base, {**overrides, "gopro.train.epochs": evals, "gopro.train.crops_per_epoch": crops_per_epoch}
    )
    steps = task_steps("gopro")
    test = steps.split(params, "val")
    layout = steps.layout(params)
    device = pick_device(params.gopro.train.device)
    model = build_restorer(params.gopro.model)
    record: dict[str, Any] = {
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "parameters": count_parameters(model),
        "crop_size": params.gopro.train.crop_size,
        "batch_size": batch,
        "crops_per_second": round(rate, 1),
        "crops_per_epoch": crops_per_epoch,
        "curve": [],
    }
    results[name] = record
    training_started = time.perf_counter()
    evaluating = 0.0

    def score(epoch: int) -> None:
        nonlocal evaluating
        began = time.perf_counter()
        state = load_checkpoint(layout.model_dir / "checkpoints" / "last.pt")
        model.load_state_dict(state["model_state"])
        metrics = evaluate_restorer(
            TorchPredictor(model, contract=RESTORER, device=str(device)),
            test,
            out / name / "eval",
            out / name / "eval" / f"epoch-{epoch}.json",
            num_sample_images=4,
            bin_key=steps.data.group_keys[-1],
        )
        record["curve"].append(
            {
                "epoch": epoch,
                "train_s": round(began - training_started - evaluating, 1),
                "crops": epoch * crops_per_epoch,
                "psnr": metrics["psnr"],
                "psnr_input": metrics["psnr_input"],
                "psnr_gain": metrics["psnr_gain"],
                "ssim": metrics["ssim"],
                "ssim_input": metrics["ssim_input"],
            }
        )
        evaluating += time.perf_counter() - began
        write_json(out / "results.json", results)
        print(f"{name} epoch {epoch}/{evals}: {record['curve'][-1]}", flush=True)

    steps.train(params, after_epoch=score)
    return record


def plot(results: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for name, record in results.items():
        curve = record["curve"]
        axes.plot([p["train_s"] for p in curve], [p["psnr_gain"] for p in curve], marker="o", label=name)
    axes.axhline(3.0, color="grey", linestyle="--", label="+3 dB target")
    axes.set_xlabel(f"training seconds ({next(iter(results.values()))['device']})")
    axes.set_ylabel("PSNR gain over the blurred input, dB")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    parser.add_argument("--evals", type=int, default=10, help="epochs, each followed by an evaluation")
    parser.add_argument("--probe-steps", type=int, default=16, help="steps per probe epoch")
    parser.add_argument("--train-sequences", type=int, default=16, help="generated training sequences")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/deblur-budget"))
    args = parser.parse_args()

    common: dict[str, Any] = {
        "gopro.dataset.root": str(args.out / f"data-{args.train_sequences}"),
        "gopro.dataset.generator.num_train_sequences": args.train_sequences,
        "gopro.train.num_workers": args.workers,
    }
    ingested = task_steps("gopro").ingest(_params(args.params, common))
    print("test split:", json.dumps(ingested["val"]["degraded_input"]), flush=True)
    results: dict[str, Any] = {}
    for name in args.runs:
        run(name, args.params, common, args.budget, args.evals, args.probe_steps, results, args.out)
    plot(results, args.out / "gain_vs_time.png")
    print(
        f"\n{'run':<10} {'device':<28} {'params':>9} {'crop':>5} {'crops/s':>8} "
        f"{'train s':>8} {'crops':>9} {'PSNR':>7} {'input':>7} {'gain':>6} {'SSIM':>6}"
    )
    for name, record in results.items():
        last = record["curve"][-1]
        print(
            f"{name:<10} {record['device']:<28} {record['parameters']:>9,} {record['crop_size']:>5} "
            f"{record['crops_per_second']:>8,.0f} {last['train_s']:>8.0f} {last['crops']:>9,} "
            f"{last['psnr']:>7.2f} {last['psnr_input']:>7.2f} {last['psnr_gain']:>+6.2f} {last['ssim']:>6.3f}"
        )


if __name__ == "__main__":
    main()

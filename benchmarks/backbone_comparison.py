"""ResNet-18 + decoder against HRNet on the demo detector, at equal training time.

Both detectors take the demo's configuration (256 px, ``width_mult`` 0.25, its augmentation,
batch and learning-rate schedule) and the same generated data; only ``model.backbone`` differs
(HRNet at ``--hrnet-width``, without the ResNet's decoder skips, which it has no decoder for).
Each gets the same training time: its seconds per step are measured first, and it trains the
number of epochs that fills ``--budget`` seconds with a complete warm-up + cosine schedule. Then
the pipeline's own steps export, quantise, validate (COCO mAP, per object size) and benchmark
each (PyTorch eager, ONNX Runtime FP32 and INT8, interleaved, the benchmark's thread count).

    python -m benchmarks.backbone_comparison [--images 1000] [--budget 360] [--out artifacts/backbones]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ops.config import Params, load_params
from ops.detection.coco import load_coco_split
from ops.detection.data import InputNormalizer
from ops.detection.model import estimate_gflops
from ops.detection.training import build_detector, detector_training_data, load_detector
from ops.layout import TaskLayout
from ops.tasks import task_steps

SIZE_BINS = ("map_small", "map_medium", "map_large")


def seconds_per_step(params: Params, steps: int = 12) -> float:
    """One training step (forward, loss, backward, AdamW) of the configured detector, measured."""
    cfg = params.traffic
    split = load_coco_split(cfg.dataset.root, "train")
    torch.manual_seed(0)
    model = build_detector(cfg.model, len(split.class_names)).train()
    model = model.to(
        memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    )
    dataset, loss_fn = detector_training_data(split, cfg.model, cfg.train, model.output_stride)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)
    normalise = InputNormalizer(cfg.model.mean, cfg.model.std)
    times = []
    for index, (images, targets) in enumerate(loader):
        if index == steps:
            break
        started = time.perf_counter()
        loss, _ = loss_fn(model(normalise(images)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up steps


def run(backbone: str, params_path: Path, out: Path, budget_s: float, hrnet_width: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "project.artifacts_dir": str(out / backbone),
        "traffic.model.backbone": backbone,
        "traffic.benchmark.compile": False,
    }
    if backbone == "hrnet":
        overrides.update({"traffic.model.hrnet_width": hrnet_width, "traffic.model.decoder_skips": False})
    params = load_params(params_path, overrides)
    steps = task_steps("traffic")
    step_s = seconds_per_step(params)
    steps_per_epoch = -(-params.traffic.dataset.generator.num_train // params.traffic.train.batch_size)
    epochs = max(1, round(budget_s / (step_s * steps_per_epoch)))
    params = load_params(params_path, {**overrides, "traffic.train.epochs": epochs})
    started = time.perf_counter()
    steps.train(params)
    train_s = time.perf_counter() - started
    steps.export(params)
    steps.quantize(params)
    steps.validate(params)
    bench = steps.benchmark(params)
    layout = TaskLayout.for_task(params, "traffic")
    metrics = {b: json.loads(layout.metrics(b).read_text()) for b in ("pytorch", "onnx", "onnx-int8")}
    model = load_detector(layout.weights).model
    ms = {row["backend"]: row["latency_p50_ms"] for row in bench["rows"]}
    return {
        "backbone": backbone if backbone != "hrnet" else f"hrnet-w{hrnet_width}",
        "epochs": epochs,
        "train_s": round(train_s, 1),
        "params_k": round(sum(p.numel() for p in model.parameters()) / 1e3, 1),
        "gflops": round(estimate_gflops(model, params.traffic.model.input_size), 3),
        "map50": metrics["pytorch"]["map50"],
        "map50_95": metrics["pytorch"]["map50_95"],
        **{key: metrics["pytorch"][key] for key in SIZE_BINS},
        "int8_map50_loss": round(metrics["pytorch"]["map50"] - metrics["onnx-int8"]["map50"], 4),
        "ms": {k: ms.get(k) for k in ("pytorch", "onnx", "onnx-int8")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--images", type=int, default=1000, help="train images (default: %(default)s)")
    parser.add_argument(
        "--budget", type=float, default=360, help="training seconds each (default: %(default)s)"
    )
    parser.add_argument(
        "--hrnet-width", type=int, default=8, help="HRNet's stride-4 width (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/backbones"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(args.params.read_text())
    raw["traffic"]["dataset"]["generator"]["num_train"] = args.images
    raw["traffic"]["dataset"]["root"] = str(args.out / "data")
    params_path = args.out / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    task_steps("traffic").ingest(
        load_params(params_path, {"project.artifacts_dir": str(args.out / "dataset")})
    )
    rows = [
        run(backbone, params_path, args.out, args.budget, args.hrnet_width)
        for backbone in ("resnet18", "hrnet")
    ]
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    header = (
        "| backbone | epochs | train s | params | GFLOPs | mAP@0.5 | mAP@[.5:.95] | small | medium | large | "
        "ms PyTorch | ONNX FP32 | ONNX INT8 | INT8 mAP@0.5 loss |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in rows:
        ms = r["ms"]
        cells = [
            r["backbone"],
            str(r["epochs"]),
            f"{r['train_s']:.0f}",
            f"{r['params_k']:.0f} k",
            f"{r['gflops']:.2f}",
            *(f"{r[k]:.3f}" for k in ("map50", "map50_95", *SIZE_BINS)),
            *(f"{ms[k]:.2f}" for k in ("pytorch", "onnx", "onnx-int8")),
            f"{r['int8_map50_loss']:+.4f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

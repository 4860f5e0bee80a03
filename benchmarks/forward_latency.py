"""CPU forward latency of TrafficQuantizerNet at batch 1: eager FP32, contiguous vs channels_last.

Prints parameters, GFLOPs (2 x MACs of conv/deconv/linear layers) and, per variant, the
median and p95 latency and the FPS implied by the median, under ``torch.inference_mode``
with warm-up iterations excluded. Weights are random: latency does not depend on them.

    python -m benchmarks.forward_latency --input-size 512 --width-mult 1.0 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from ops.detection.model import TrafficNetConfig, TrafficQuantizerNet, count_parameters, estimate_gflops
except ModuleNotFoundError:  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ops.detection.model import TrafficNetConfig, TrafficQuantizerNet, count_parameters, estimate_gflops

logger = logging.getLogger("benchmarks.forward_latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=512, help="square input (default 512)")
    parser.add_argument("--width-mult", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--num-classes", type=int, default=1, help="heatmap channels")
    parser.add_argument(
        "--upsample",
        choices=("3up", "2up"),
        default="3up",
        help="decoder: 3up (stride 4, the seed's) or 2up (third layer keeps resolution)",
    )
    parser.add_argument(
        "--decoder-skips",
        action="store_true",
        help="add the backbone's same-resolution maps to the decoder (the demo model's option)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per variant")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per variant")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and input")
    return parser.parse_args(argv)


def time_forward(
    model: torch.nn.Module, images: torch.Tensor, warmup: int, iters: int
) -> list[float]:
    """Per-iteration wall-clock milliseconds of ``model(images)``, warm-up excluded."""
    timings: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        for _ in range(iters):
            start = time.perf_counter()
            model(images)
            timings.append((time.perf_counter() - start) * 1e3)
    return timings


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.iters < 1 or args.warmup < 0:
        logger.error("--iters must be >= 1 and --warmup >= 0")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = TrafficNetConfig(
        num_classes=args.num_classes,
        input_size=args.input_size,
        width_mult=args.width_mult,
        upsample=(True, True, args.upsample == "3up"),
        decoder_skips=args.decoder_skips,
    )
    model = TrafficQuantizerNet(config).eval()
    params = count_parameters(model)
    gflops = estimate_gflops(model, config.input_size)
    images = torch.randn(1, 3, config.input_size, config.input_size)

    rows: list[tuple[str, list[float]]] = []
    logger.info("timing eager fp32 (contiguous): %d warm-up + %d iters", args.warmup, args.iters)
    rows.append(("eager fp32", time_forward(model, images, args.warmup, args.iters)))
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
    logger.info("timing eager fp32 channels_last: %d warm-up + %d iters", args.warmup, args.iters)
    rows.append(("eager channels_last", time_forward(model, images, args.warmup, args.iters)))

    print(
        f"TrafficQuantizerNet input {config.input_size}x{config.input_size}, "
        f"width_mult {config.width_mult}, classes {config.num_classes}, "
        f"{args.upsample.upper()} (output stride {model.output_stride}), batch 1"
    )
    print(
        f"parameters {params:,}  |  {gflops:.2f} GFLOPs  |  torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.iters} iters after {args.warmup} warm-up"
    )
    print()
    print(f"| {'variant':<20} | {'median ms':>9} | {'p95 ms':>8} | {'FPS':>6} |")
    print(f"| {'-' * 20} | {'-' * 8}: | {'-' * 7}: | {'-' * 5}: |")
    for name, timings in rows:
        median = statistics.median(timings)
        print(
            f"| {name:<20} | {median:>9.1f} | {percentile(timings, 95):>8.1f} | "
            f"{1e3 / median:>6.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Size of the NAFNet restorers: parameters and conv GMACs beside NAFNet's published figures.

Builds the published configurations (SIDD width 16 and 32, GoPro width 32), counts their
parameters and the multiply-accumulates of their Conv2d layers in one batch-1 forward pass
(``ops.restoration.nafnet.conv_macs``), at 256x256 (the size NAFNet's figures are quoted
at; DESIGN.md, "Restoration (seed 003)") and at 1280x720 (a GoPro test frame), and prints
one table with the deviation from the published figures. By default the models live on
PyTorch's ``meta`` device: the forward pass runs every module on shapes only, so the counts
are exact and the w32 models at 1280x720 take seconds, not minutes; ``--device cpu`` runs
the same count on real (random) tensors.

    python -m benchmarks.restorer_size --sizes 256x256 1280x720
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

try:
    from ops.restoration.nafnet import PUBLISHED_SIZES, NAFNet, NAFNetConfig, conv_macs, count_parameters
except ModuleNotFoundError:  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ops.restoration.nafnet import PUBLISHED_SIZES, NAFNet, NAFNetConfig, conv_macs, count_parameters

logger = logging.getLogger("benchmarks.restorer_size")

# Published GMACs are quoted at this size; the deviation column compares there.
REFERENCE_SIZE = (256, 256)


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` (width x height, the usual way to write a frame size) -> (720, 1280)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(PUBLISHED_SIZES),
        default=list(PUBLISHED_SIZES),
        metavar="NAME",
        help=f"published configurations to count (default: all of {list(PUBLISHED_SIZES)})",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(256, 256), (720, 1280)],
        metavar="WxH",
        help="input sizes for the GMACs columns (default: 256x256 1280x720)",
    )
    parser.add_argument(
        "--device",
        choices=("meta", "cpu"),
        default="meta",
        help="meta: count on shapes only (fast, exact); cpu: a real forward on random tensors",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (cpu)")
    return parser.parse_args(argv)


def deviation(measured: float, published: float) -> str:
    return f"{100 * (measured - published) / published:+.1f} %"


def markdown_row(cells: list[str], widths: list[int]) -> str:
    """One table row: the first column left-aligned (names), the others right-aligned (numbers)."""
    padded = [cells[0].ljust(widths[0])]
    padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "| " + " | ".join(padded) + " |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes: list[tuple[int, int]] = list(dict.fromkeys(args.sizes))  # keep order, drop repeats

    rows = []
    for name in args.models:
        config = NAFNetConfig.published(name)
        logger.info("counting %s (%s) on %s", name, config, args.device)
        with torch.device(args.device):
            model = NAFNet(config)
        gmacs = {size: conv_macs(model, *size) / 1e9 for size in sizes}
        rows.append((name, count_parameters(model) / 1e6, gmacs))

    headers = ["model", "params M", "published", "delta"]
    headers += [f"GMACs {w}x{h}" for h, w in sizes] + ["published 256x256", "delta 256x256"]
    table = []
    for name, millions, gmacs in rows:
        _, _, published_params, published_gmacs = PUBLISHED_SIZES[name]
        reference = gmacs.get(REFERENCE_SIZE)
        table.append(
            [
                name,
                f"{millions:.2f}",
                f"{published_params:.1f}",
                deviation(millions, published_params),
                *(f"{gmacs[size]:.2f}" for size in sizes),
                f"{published_gmacs:.1f}",
                deviation(reference, published_gmacs) if reference is not None else "n/a",
            ]
        )
    widths = [max(len(cell) for cell in column) for column in zip(headers, *table, strict=True)]
    print(
        "NAFNet restorers: parameters and conv GMACs (Conv2d multiply-accumulates, batch 1, inputs "
        f"padded to a multiple of 16), counted on the {args.device} device, torch {torch.__version__}"
    )
    print("published: DESIGN.md, 'Restoration (seed 003)' (NAFNet's figures, GMACs at 256x256)")
    print()
    print(markdown_row(headers, widths))
    print("| " + " | ".join(["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]) + " |")
    for row in table:
        print(markdown_row(row, widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``visionforge``: the pipeline's steps from the command line (and from DVC stages).

Every command reads ``params.yaml`` (or ``--params FILE``); ``--set key=value`` overrides
one value for this run without editing the file, e.g. ``--set traffic.train.epochs=2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from ops.config import DEFAULT_PARAMS_PATH, Params, load_params
from ops.errors import VisionForgeError

log = logging.getLogger("visionforge")
TASKS = ("traffic",)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)  # YAML typing: 3 -> int, [1, 2] -> list


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        type=Path,
        default=DEFAULT_PARAMS_PATH,
        metavar="FILE",
        help="configuration file to read (default: %(default)s)",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value of the params file for this run, dotted key, YAML value "
        "(e.g. --set traffic.train.epochs=2); repeatable",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(
        prog="visionforge",
        description="Edge vision models from raw data to validated, deployable artefacts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        parents=[common],
        help="generate or locate a dataset, validate it, write its report",
        description="Write the procedural dataset (dataset.source: generate) or check an existing "
        "COCO-format copy (dataset.source: local), validate every image and annotation of both "
        "splits, and write a report (counts per class, box-size histogram) to "
        "artifacts/<task>/dataset/.",
    )
    ingest.add_argument("task", choices=TASKS, help="which task's dataset")

    train = commands.add_parser(
        "train",
        parents=[common],
        help="train the task's model",
        description="Train on the train split. Writes artifacts/<task>/model/model.pt, a full "
        "checkpoint after every epoch (checkpoints/last.pt), history.json and training_curves.png.",
    )
    train.add_argument("task", choices=TASKS, help="which task's model")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from checkpoints/last.pt (same epoch, optimiser and scheduler state)",
    )

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="score the trained model with pycocotools",
        description="Run the trained PyTorch model on a split and compute COCO mAP@0.5, "
        "mAP@[.5:.95] and per-class AP with pycocotools. Writes "
        "artifacts/<task>/metrics/pytorch.json, detections, a PR curve and sample detections.",
    )
    evaluate.add_argument("task", choices=TASKS, help="which task's model")
    evaluate.add_argument("--split", default="val", choices=("train", "val"), help="split to score")
    return parser


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, dict(args.overrides))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ops import traffic  # heavy imports (torch) only once arguments are valid

    params = _params(args)
    if args.command == "ingest":
        reports = traffic.ingest(params)
        return {
            split: {k: v for k, v in r.items() if k in ("num_images", "num_annotations", "files")}
            for split, r in reports.items()
        }
    if args.command == "train":
        result = traffic.train(params, resume=args.resume)
        last = result.history[-1]
        return {
            "model": str(result.model_path),
            "device": result.device,
            "epochs": last["epoch"],
            "final_loss": round(last["loss"], 4),
        }
    if args.command == "evaluate":
        summary = traffic.evaluate(params, split=args.split)
        return {k: summary[k] for k in ("backend", "split", "num_images", "map50", "map50_95")}
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        outcome = run(args)
    except VisionForgeError as exc:
        print(f"visionforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(outcome, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

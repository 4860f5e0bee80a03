"""``visionforge``: the pipeline's steps from the command line (and from DVC stages).

Every command reads ``params.yaml`` (or ``--params FILE``); ``--set key=value`` overrides
one value for this run without editing the file, e.g. ``--set traffic.train.epochs=2``.
Each step is recorded in MLflow (``ops.tracking``; ``VISIONFORGE_PIPELINE_RUN`` groups the
steps of one pipeline run under one parent run); ``promote`` moves the registry's aliases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ops.config import DEFAULT_PARAMS_PATH, Params, load_params
from ops.errors import VisionForgeError
from ops.tasks import task_names, task_steps

if TYPE_CHECKING:
    from ops.tracking import Tracker

log = logging.getLogger("visionforge")
TASKS = task_names()


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
    # Steps only: what a container pipeline (Kubeflow) runs in each pod.
    step = argparse.ArgumentParser(add_help=False)
    step.add_argument(
        "--pipeline-run",
        metavar="ID",
        help="run as one pod of pipeline run ID: download the step's inputs from storage.s3 "
        "(runs/ID/<path>) first, upload its outputs there after, and group its MLflow record "
        "under ID (unless VISIONFORGE_PIPELINE_RUN is set)",
    )

    parser = argparse.ArgumentParser(
        prog="visionforge",
        description="Edge vision models from raw data to validated, deployable artefacts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        parents=[common, step],
        help="generate or locate a dataset, validate it, write its report",
        description="Write the procedural dataset (dataset.source: generate), fetch an archive "
        "(download, restoration tasks) or check an existing copy in the official layout (local: "
        "COCO for traffic, SIDD-Small/Medium + validation blocks for sidd, GOPRO_Large or the "
        "flattened input/target tree for gopro), validate every file of both splits (all offending "
        "items in one error), and write a report to artifacts/<task>/dataset/ (traffic: counts per "
        "class, box sizes; sidd: pairs per phone and ISO, noisy-input PSNR/SSIM per ISO; gopro: pairs "
        "per sequence, blurred-input PSNR/SSIM per blur length; sample pairs).",
    )
    ingest.add_argument("task", choices=TASKS, help="which task's dataset")

    train = commands.add_parser(
        "train",
        parents=[common, step],
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
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="training processes on this node, launched with torchrun and joined by "
        "DistributedDataParallel: one per GPU, or CPU processes sharing the cores (default: "
        "<task>.train.nproc in params; batch_size stays the global batch)",
    )
    train.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="M",
        help="machines taking part; run the same command on each, with --rdzv-endpoint "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the nodes meet (torchrun's c10d rendezvous): one node's address, hosted by "
        "that node. Needs a file system every node shares for artifacts/",
    )
    train.add_argument(
        "--rdzv-id", metavar="ID", help="names this run at the endpoint (default: visionforge-<task>)"
    )

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common, step],
        help="score the trained model (detection: COCO mAP; restoration: PSNR/SSIM)",
        description="Run the trained PyTorch model on a split and score it: COCO mAP@0.5, "
        "mAP@[.5:.95] and per-class AP with pycocotools for detection, PSNR and SSIM beside the "
        "degraded input's for restoration. Writes artifacts/<task>/metrics/pytorch.json and plots.",
    )
    evaluate.add_argument("task", choices=TASKS, help="which task's model")
    evaluate.add_argument("--split", default="val", choices=("train", "val"), help="split to score")

    export = commands.add_parser(
        "export",
        parents=[common, step],
        help="export the trained model to ONNX and torch.export, with a parity check",
        description="Export artifacts/<task>/model/model.pt to ONNX (input 'images'; detection: "
        "outputs 'heatmap', 'wh', 'offset', dynamic batch; restoration: output 'restored', dynamic "
        "batch, height and width; pre-processing facts in the model's metadata) and to a "
        "torch.export program (model.pt2). Both are run against PyTorch on validation images; the "
        "parity figures go to onnx/parity.json.",
    )
    export.add_argument("task", choices=TASKS, help="which task's model")

    quantize = commands.add_parser(
        "quantize",
        parents=[common, step],
        help="INT8 static quantisation of the ONNX model (ONNX Runtime, QDQ)",
        description="Quantise onnx/model.onnx to int8/model_int8.onnx with ONNX Runtime's static "
        "quantiser: per-channel int8 weights, uint8 activations calibrated on training images "
        "(quantize.* in params). int8/quantization.json lists the nodes kept in float and the "
        "operators ONNX Runtime really executes.",
    )
    quantize.add_argument("task", choices=TASKS, help="which task's model")

    prune = commands.add_parser(
        "prune",
        parents=[common, step],
        help="structured channel pruning + short fine-tune, and what it really changes",
        description="Remove whole channels (prune.ratio of every prunable layer group, by weight "
        "magnitude; the heads' outputs are kept) with Torch-Pruning, fine-tune for "
        "prune.finetune_epochs, export the result to pruned/model.onnx and model.pt2, and report "
        "parameters, GFLOPs, latency and mAP@0.5 before and after in pruned/report.json.",
    )
    prune.add_argument("task", choices=TASKS, help="which task's model")

    engine = commands.add_parser(
        "build-engine",
        parents=[common, step],
        help="build TensorRT engines (needs an NVIDIA GPU and tensorrt; otherwise a recorded skip)",
        description="Build the TensorRT engines listed in tensorrt.precisions: FP16 from the ONNX "
        "model, INT8 from the QDQ model, with a dynamic-batch profile and a timing cache. Each "
        "engine gets a JSON sidecar (TensorRT version, GPU, compute capability). Without a GPU or "
        "tensorrt the build is skipped and the reason written to tensorrt/build.json.",
    )
    engine.add_argument("task", choices=TASKS, help="which task's model")

    validate = commands.add_parser(
        "validate",
        parents=[common, step],
        help="score every deployable backend and judge the release gates",
        description="Evaluate PyTorch, ONNX, ONNX INT8 and any TensorRT engine on the validation "
        "split (metrics/<backend>.json) and judge the gates of <task>.validation.* in params: "
        "ONNX output parity, quality (mAP@0.5 or PSNR) lost against PyTorch. Exit status 1 when "
        "a gate fails.",
    )
    validate.add_argument("task", choices=TASKS, help="which task's model")

    bench = commands.add_parser(
        "benchmark",
        parents=[common, step],
        help="latency of every available backend, side by side in one run",
        description="Measure every backend this machine can run (PyTorch eager, channels-last, "
        "torch.compile, ONNX Runtime FP32 and INT8, CUDA and TensorRT where present) on the same "
        "images with the same thread count, warm-up excluded, runs interleaved. Prints a table and "
        "writes benchmark/<trained|full_size>/benchmark.json and benchmark.png.",
    )
    bench.add_argument("task", choices=TASKS, help="which task's model")
    promote = commands.add_parser(
        "promote",
        parents=[common, step],
        help="release: alias 'candidate' on the validated versions, 'champion' if they earn it",
        description="Look up (or register) the MLflow model version of every artefact on disk, then "
        "set the alias 'candidate' on them and move 'champion' only when every validation gate "
        "passed and no format's metric (release.metric) is below its champion's by more than "
        "release.tolerance. Nothing moves when a gate failed; the decision and its reasons are "
        "tagged on the versions. Exit status 1 when the release is blocked.",
    )
    promote.add_argument("task", choices=TASKS, help="which task's artefacts")

    status = commands.add_parser(
        "status",
        parents=[common],
        help="the dataset's data version (its DVC hash) and whether dvc.lock records it",
        description="Hash the dataset directory as DVC does and compare it with dvc.lock: "
        "'committed', 'untracked', or 'modified' (changed on disk without `dvc commit`, exit status 1).",
    )
    status.add_argument("task", choices=TASKS, help="which task's dataset")

    remote = commands.add_parser(
        "remote",
        parents=[common],
        help="make storage.* in params DVC's default remote (a local directory or S3)",
        description="Write storage.remote (local directory, or s3://<bucket>/<prefix>/dvc with its "
        "endpoint and region) to .dvc/config as the default remote. Credentials are never written: "
        "DVC reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) from the environment.",
    )
    remote.add_argument("--local", action="store_true", help="write .dvc/config.local (this machine only)")

    for verb, direction in (("push", "to"), ("pull", "from")):
        transfer = commands.add_parser(
            verb,
            parents=[common],
            help=f"dvc {verb}: the data and artefacts DVC tracks, {direction} the default remote",
            description=f"`dvc {verb}`, made safe to run again after one that was killed: DVC keeps "
            "a list of what to transfer that a killed transfer can leave incomplete, and a plain "
            f"`dvc {verb}` then trusts it, skips the rest and reports success. This drops that list "
            "first. Run it in the repository (the directory holding .dvc/).",
        )
        transfer.add_argument("targets", nargs="*", help="tracked files or .dvc files (default: all)")
        transfer.add_argument("--remote", "-r", help="a remote other than the default")

    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check the deployment's connections: MLflow, S3, the DVC remote, Dagster's storage",
        description="One line per system: reachable, authenticated and writable with this "
        "environment's credentials, or what failed and the setting to fix. Each check writes the "
        "smallest thing its system has (an MLflow experiment tag, a probe object it deletes again, a "
        "file in the DVC remote, a key in Dagster's key-value store). Exit status 1 when any fails.",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON instead of lines")

    kfp = commands.add_parser(
        "kfp",
        help="Kubeflow Pipelines: compile the pipeline (offline) from the stage table",
        description="Kubeflow Pipelines v2. `compile` renders the same steps as dvc.yaml (plus the "
        "release) as one container component per step in the project's image, ordered by the files "
        "they read, with every params.yaml key a step depends on as a pipeline parameter.",
    )
    kfp_commands = kfp.add_subparsers(dest="kfp_command", required=True, metavar="ACTION")
    kfp_compile = kfp_commands.add_parser(
        "compile",
        parents=[common],
        help="write the pipeline's YAML (upload it in the Kubeflow UI or with the kfp client)",
        description="Compile the pipeline with the kfp compiler, offline. Each pod runs `visionforge "
        "<step> <task> --pipeline-run <job id>`: inputs from and outputs to storage.s3, credentials "
        "from a Kubernetes secret, the params overlay from a config map (docker/k8s/).",
    )
    kfp_compile.add_argument("--task", choices=TASKS, help="one task's chain (default: every task)")
    kfp_compile.add_argument(
        "--image", default="visionforge:cpu", help="the project's image (default: %(default)s)"
    )
    kfp_compile.add_argument(
        "--gpus",
        type=int,
        default=0,
        metavar="N",
        help="GPUs the training pod requests; above 1, training runs N processes (default: %(default)s)",
    )
    kfp_compile.add_argument(
        "--secret",
        default="visionforge-credentials",
        help="Kubernetes secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (default: %(default)s)",
    )
    kfp_compile.add_argument(
        "--config-map",
        default="visionforge-params",
        help="config map holding params.deploy.yaml, the overlay (default: %(default)s)",
    )
    kfp_compile.add_argument(
        "--output",
        type=Path,
        default=Path("build/kubeflow/pipeline.yaml"),
        metavar="FILE",
        help="where to write it (default: %(default)s)",
    )

    bench.add_argument(
        "--full-size",
        action="store_true",
        help="measure the seed's architecture (512x512, width 1.0, untrained) instead of the "
        "trained model: speed only, no accuracy",
    )
    return parser


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, dict(args.overrides))


# Commands whose step is recorded in MLflow (the name is the step's name in ops.stages).
TRACKED = (
    "ingest",
    "train",
    "evaluate",
    "export",
    "quantize",
    "build-engine",
    "validate",
    "benchmark",
    "prune",
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command; a step is recorded in MLflow afterwards (the tracker connects first, so an
    unreachable server fails before hours of work, not after)."""
    params = _params(args)
    if args.command == "status":
        from ops.versioning import dataset_status

        state = dataset_status(params, args.task)
        return {
            "dataset": str(state.path),
            "data_version": state.version,
            "recorded": state.recorded,
            "state": state.state,
            "detail": state.describe(),
        }
    if args.command == "kfp":
        from ops.kubeflow import PipelineOptions, compile_pipeline, pipeline_steps

        tasks = [args.task] if args.task else list(TASKS)
        options = PipelineOptions(
            image=args.image, gpus=args.gpus, secret=args.secret, overlay_config_map=args.config_map
        )
        path = compile_pipeline(params, args.output, tasks, options)
        return {
            "pipeline": str(path),
            "steps": {task: [step.name for step in pipeline_steps(params, task)] for task in tasks},
        }
    if args.command in ("push", "pull"):
        from ops import versioning

        transfer = getattr(versioning, args.command)
        return {args.command: transfer(".", *args.targets, remote=args.remote)}
    if args.command == "remote":
        from ops.storage import dvc_remote
        from ops.versioning import configure_remote

        name = configure_remote(".", params, local=args.local)
        return {"remote": name, "url": dvc_remote(params.storage).url}
    from ops.tracking import Tracker

    tracker = Tracker(params)
    with _writer_lock(args, params):
        return _tracked_step(args, params, tracker)


def _writer_lock(args: argparse.Namespace, params: Params) -> contextlib.AbstractContextManager[None]:
    """The task's lock (ops.locking) for the step's writes. A training job over several machines
    is the exception: every machine runs this command at once, only rank 0's writes anything,
    and the job scheduler that starts them owns the task for the job's duration."""
    if args.command == "train" and args.nnodes > 1:
        return contextlib.nullcontext()
    from ops.locking import task_lock

    return task_lock(params, args.task, f"visionforge {args.command} {args.task}")


def _tracked_step(args: argparse.Namespace, params: Params, tracker: Tracker) -> dict[str, Any]:
    from ops.tracking import PIPELINE_RUN_ENV

    pipeline_run = os.environ.get(PIPELINE_RUN_ENV) or args.pipeline_run
    handoff = None
    if args.pipeline_run:
        from ops.handoff import Handoff

        handoff = Handoff(params, args.pipeline_run)
        handoff.pull(args.task, args.command)
    if args.command == "promote":
        return tracker.promote(args.task, pipeline_run).to_dict()
    outcome = _run_step(args, params)
    if handoff is not None:
        outcome["handed_over"] = len(handoff.push(args.task, args.command))
    if args.command in TRACKED and outcome.get("node") != "done":
        record = tracker.log_step(args.task, args.command, pipeline_run)
        if record is not None:
            outcome["mlflow"] = {
                "run_id": record.run_id,
                "tracking_uri": record.tracking_uri,
                "registered": {fmt: f"{r.name} v{r.version}" for fmt, r in record.registered.items()},
            }
    return outcome


def _run_step(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    """Run one step of the task's steps module; print-friendly figures of what it did."""
    steps = task_steps(args.task)  # heavy imports (torch) only once arguments are valid
    if args.command == "ingest":
        reports = steps.ingest(params)
        return {
            split: {k: v for k, v in r.items() if _scalar(v) or k == "files"}
            for split, r in reports.items()
        }
    if args.command == "train":
        from ops.distributed import Launch, train_task

        launch = Launch(
            nproc=getattr(params, args.task).train.nproc if args.nproc is None else args.nproc,
            nnodes=args.nnodes,
            rdzv_endpoint=args.rdzv_endpoint,
            rdzv_id=args.rdzv_id,
        )
        result = train_task(args.task, params, resume=args.resume, launch=launch)
        if result is None:
            return {"node": "done", "detail": "rank 0 ran on another node; it wrote the model"}
        last = result.history[-1]
        return {
            "model": str(result.model_path),
            "device": result.device,
            "epochs": last["epoch"],
            "final_loss": round(last["loss"], 4),
        }
    if args.command == "evaluate":
        summary = steps.evaluate(params, split=args.split)
        return {k: v for k, v in summary.items() if _scalar(v)}
    if args.command == "export":
        report = steps.export(params)
        return {k: report[k] for k in ("onnx", "onnx_bytes", "program") if k in report} | {
            "parity": {
                name: {k: v for k, v in r.items() if _scalar(v)} for name, r in report["parity"].items()
            }
        }
    if args.command == "quantize":
        report = steps.quantize(params)
        kernels = [choice["kernel"] for choice in report["conv_kernels"]]
        summary = {k: report[k] for k in ("path", "onnx_bytes", "excluded_nodes", "float_compute_ops")}
        summary["conv_kernels"] = (
            f"{kernels.count('gemm')} of {len(kernels)} convolutions on the GEMM kernel"
            if kernels
            else "all on the symmetric kernel (quantize.gemm_kernel_min_multiply_adds is null)"
        )
        return summary
    if args.command == "prune":
        if not hasattr(steps, "prune"):
            raise VisionForgeError(f"task {args.task!r} has no prune step")
        return steps.prune(params)
    if args.command == "build-engine":
        return steps.build_engines(params)
    if args.command == "validate":
        return steps.validate(params)
    if args.command == "benchmark":
        report = steps.benchmark(params, full_size=args.full_size)
        print(report["title"])
        print(report["table"])
        return {"absent": report["absent"], "plot": report["plot"]}
    raise AssertionError(f"unhandled command {args.command}")


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _doctor(args: argparse.Namespace) -> int:
    from ops.doctor import as_json, run_checks

    checks = run_checks(_params(args))
    print(as_json(checks) if args.json else "\n".join(check.line() for check in checks))
    return 1 if any(check.status == "fail" for check in checks) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # the ONNX exporter's passes log every step at INFO
        for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        # MLflow's SQL store logs a traceback for a database error it then raises (a full disk):
        # the step's one error line says it already
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        if args.command == "doctor":
            return _doctor(args)
        outcome = run(args)
    except VisionForgeError as exc:
        print(f"visionforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(outcome, indent=2))
    if args.command == "validate" and not outcome["passed"]:
        failed = [g["name"] for g in outcome["gates"] if not g["passed"]]
        print(f"visionforge validate: gates failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.command == "promote" and outcome["decision"] == "blocked":
        print(f"visionforge promote: blocked: {'; '.join(outcome['reasons'])}", file=sys.stderr)
        return 1
    if args.command == "status" and outcome["state"] == "modified":
        print(f"visionforge status: {outcome['detail']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

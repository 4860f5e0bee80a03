"""Where the detector's INT8 model spends its time, and which quantisation choices make it faster.

Exports the detector (the seed's 512x512 width-1.0 architecture with ``--full-size``, else the
demo's configuration from params.yaml; weights are seeded and untrained, latency does not
depend on them), quantises it once per variant, then in one run:

- quantises as shipped (the convolutions with ``quantize.gemm_kernel_min_multiply_adds`` or more
  multiply-adds per output on ONNX Runtime's GEMM kernel, ``ops.deploy.conv_kernels``) and with
  one change per variant;
- times ONNX Runtime FP32 and every INT8 variant interleaved, at the benchmark's threads, beside
  the machine's GEMM rates (``ops.deploy.roofline``), so each line shows GOP/s, its share of the
  INT8 GEMM rate and its speed-up over FP32;
- times the model's convolutions as bare INT8 GEMMs at their im2col shapes on the roofline's
  kernel (``measure_gemm_shapes``): what that kernel reaches on this network's own layer shapes;
- profiles each with ONNX Runtime's profiler and prints the share of time per operator type
  (the executed graph, after ONNX Runtime's fusions).

    python -m benchmarks.int8_profile --full-size --threads 2
    python -m benchmarks.int8_profile --batch 4 --variants int8 int8-per-tensor
    python -m benchmarks.int8_profile --full-size --layer-kernels   # choose the GEMM threshold

``--layer-kernels`` also times every INT8 convolution alone on both integer kernels and prints
them by multiply-adds per output, which is what the threshold is chosen from.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ops.config import load_params
from ops.deploy.benchmark import measure_interleaved
from ops.deploy.conv_kernels import time_conv_kernels
from ops.deploy.export import export_onnx
from ops.deploy.optimize import QuantizeSettings, quantize_int8
from ops.deploy.roofline import conv_gemm_shapes, measure_gemm_shapes, measure_roofline
from ops.deploy.runtime import INPUT_NAME, ort_session_options
from ops.detection.data import detector_metadata
from ops.detection.model import estimate_gflops
from ops.detection.traffic import full_size_model_config
from ops.detection.training import build_detector

BASE = QuantizeSettings(calibration_method="minmax", per_channel=True, keep_output_layers=True)
# name: (what differs from the shipped settings, ONNX Runtime graph optimisation level)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "int8": ({}, "all"),
    "int8-symmetric-kernels": ({"gemm_kernel_min_multiply_adds": None}, "all"),
    "int8-per-tensor": ({"per_channel": False}, "all"),
    "int8-symmetric-activations": ({"activation_symmetric": True}, "all"),
    "int8-all-layers": ({"keep_output_layers": False}, "all"),
    "int8-float-stem": ({"keep_input_layers": True}, "all"),
    "int8-transposed-decoder": ({"subpixel_decoder": False}, "all"),
    "int8-extended-opt": ({}, "extended"),
}


def variant_settings(name: str, gemm_kernel_min_multiply_adds: int | None) -> QuantizeSettings:
    """The shipped quantisation (the wider convolutions on the GEMM kernel) with variant ``name``'s
    one change."""
    shipped = dataclasses.replace(BASE, gemm_kernel_min_multiply_adds=gemm_kernel_min_multiply_adds)
    return dataclasses.replace(shipped, **VARIANTS[name][0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--full-size", action="store_true", help="the seed's 512x512 width-1.0 detector")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30, help="interleaved timed runs per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--nodes-of", nargs="+", metavar="MODEL", help="print these models' slowest nodes")
    parser.add_argument("--nodes", type=int, default=15, help="how many nodes --nodes-of prints")
    parser.add_argument(
        "--layer-kernels", action="store_true", help="time each INT8 convolution alone on both kernels"
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    return parser.parse_args(argv)


def session(path: Path, threads: int, level: str, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort_session_options(threads)
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_shares(
    path: Path, level: str, batch: np.ndarray, threads: int, runs: int, tmp: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Share of kernel time per operator type, and per node (``op node``), over ``runs`` profiled
    calls."""
    profiled = session(path, threads, level, str(tmp / f"profile-{path.stem}-{level}"))
    for _ in range(runs):
        profiled.run(None, {INPUT_NAME: batch})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    per_node: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op, node = event["args"]["op_name"], event["name"].removesuffix("_kernel_time")
            per_op[op] += event["dur"]
            per_node[f"{op} {node}"] += event["dur"]
    total = sum(per_op.values()) or 1
    return (
        {op: round(us / total, 3) for op, us in per_op.most_common()},
        {node: round(us / total, 3) for node, us in per_node.most_common()},
    )


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    params = load_params(args.params)
    cfg = full_size_model_config(params.traffic.model) if args.full_size else params.traffic.model
    torch.manual_seed(0)
    model = build_detector(cfg, 1).eval()
    gflops = estimate_gflops(model, cfg.input_size)
    rng = np.random.default_rng(0)
    size = cfg.input_size

    def images(count: int) -> np.ndarray:  # normalised as the detector's input
        return ((rng.random((count, 3, size, size), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)

    batch, calibration = images(args.batch), [images(8) for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="int8-profile-") as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = tmp / "model.onnx"
        export_onnx(model, detector_metadata(model, cfg.mean, cfg.std, size, ["car"]), fp32, opset=17)
        models: dict[str, tuple[Path, str]] = {"onnx": (fp32, "all")}
        files: dict[QuantizeSettings, Path] = {}  # a variant that only changes the session shares
        for name in args.variants:
            settings = variant_settings(name, params.traffic.quantize.gemm_kernel_min_multiply_adds)
            level = VARIANTS[name][1]
            if settings not in files:
                files[settings] = quantize_int8(fp32, tmp / f"{name}.onnx", calibration, settings).path
            models[name] = (files[settings], level)
        sessions = {name: session(path, args.threads, level) for name, (path, level) in models.items()}
        calls: dict[str, Callable[[np.ndarray], Any]] = {
            name: (lambda b, s=s: s.run(None, {INPUT_NAME: b})) for name, s in sessions.items()
        }
        roofline = measure_roofline(args.threads)
        timings = measure_interleaved(calls, batch, args.warmup, args.runs)
        # The convolutions as bare GEMMs on the INT8 roofline's kernel: what these shapes allow it.
        # (Not done for FP32: its convolutions run direct NCHWc kernels, faster than MatMul here.)
        shape_bound = measure_gemm_shapes(conv_gemm_shapes(onnx.load(str(fp32)), batch), args.threads)
        profiles = {
            name: profile_shares(path, level, batch, args.threads, 5, tmp)
            for name, (path, level) in models.items()
        }
        layer_kernels = []
        if args.layer_kernels and "int8" in models:
            layer_kernels = time_conv_kernels(onnx.load(str(models["int8"][0])), batch, args.threads)
    shares = {name: by_op for name, (by_op, _) in profiles.items()}
    fp32_p50 = float(np.percentile(timings["onnx"], 50))
    rows = []
    for name, latencies in timings.items():
        p50 = float(np.percentile(latencies, 50))
        rate = gflops * args.batch / (p50 / 1e3)
        precision = "fp32" if name == "onnx" else "int8"
        rows.append(
            {
                "model": name,
                "p50_ms": round(p50, 2),
                "gop_per_s": round(rate, 1),
                "gemm_fraction": roofline.fraction(precision, rate),
                "of_its_gemms": round(rate / shape_bound["gop_per_s"], 3) if precision == "int8" else None,
                "speedup_vs_fp32": round(fp32_p50 / p50, 2),
                "top_ops": dict(list(shares[name].items())[:6]),
            }
        )
    print(roofline.describe())
    print(
        f"its {shape_bound['gemms']} convolutions as bare INT8 GEMMs (MatMulInteger at each layer's im2col "
        f"shape, nothing else): {shape_bound['ms']:.2f} ms, {shape_bound['gop_per_s']:.0f} GOP/s, "
        f"{roofline.fraction('int8', shape_bound['gop_per_s']):.0%} of the INT8 GEMM rate"
    )
    print(f"detector {size}x{size} width {cfg.width_mult}, {gflops:.2f} GFLOP per image, batch {args.batch}")
    for row in rows:
        ops_text = ", ".join(f"{op} {share:.0%}" for op, share in row["top_ops"].items())
        print(
            f"{row['model']:28s} {row['p50_ms']:8.2f} ms {row['gop_per_s']:7.0f} GOP/s "
            f"{row['gemm_fraction']:5.0%} of GEMM {_percent(row['of_its_gemms']):>5s} of its GEMMs  "
            f"x{row['speedup_vs_fp32']:.2f} FP32   {ops_text}"
        )
    if layer_kernels:
        print("\neach INT8 convolution alone (p50 ms), by multiply-adds per output (K)")
        for row in sorted(layer_kernels, key=lambda r: r["multiply_adds_per_output"]):
            faster = "gemm" if row["gemm_ms"] < row["symmetric_ms"] else "symmetric"
            print(
                f"  K {row['multiply_adds_per_output']:5d}  symmetric {row['symmetric_ms']:7.3f}  "
                f"gemm {row['gemm_ms']:7.3f}  faster: {faster:9s} {row['node']}"
            )
    for name in args.nodes_of or []:
        print(f"\n{name}: the {args.nodes} nodes that take longest")
        for node, share in list(profiles[name][1].items())[: args.nodes]:
            print(f"  {share:6.1%}  {node}")
    report = {
        "roofline": roofline.to_dict(),
        "conv_gemms_int8": shape_bound,
        "layer_kernels": layer_kernels,
        "gflops": gflops,
        "batch": args.batch,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

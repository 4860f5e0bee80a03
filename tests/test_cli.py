"""The ``visionforge`` command end to end on a tiny config, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_help_explains_every_command_and_option(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in (
        "ingest",
        "train",
        "evaluate",
        "export",
        "quantize",
        "build-engine",
        "validate",
        "benchmark",
    ):
        assert command in top.stdout
    train = run_cli("train", "--help", cwd=tmp_path)
    for option in ("--resume", "--params", "--set"):
        assert option in train.stdout


@pytest.mark.slow
def test_the_whole_chain_from_ingest_to_benchmark(tiny_params_file: Path):
    workdir = tiny_params_file.parent
    params = ["--params", str(tiny_params_file)]
    ingest = run_cli("ingest", "traffic", *params, cwd=workdir)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["val"]["num_images"] == 8
    assert (workdir / "artifacts/traffic/dataset/box_sizes_train.png").is_file()

    train = run_cli("train", "traffic", *params, "--set", "traffic.train.epochs=1", cwd=workdir)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["epochs"] == 1

    evaluate = run_cli("evaluate", "traffic", *params, cwd=workdir)
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((workdir / "artifacts/traffic/metrics/pytorch.json").read_text())
    assert 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0

    export = run_cli("export", "traffic", *params, cwd=workdir)
    assert export.returncode == 0, export.stderr
    assert json.loads(export.stdout)["parity"]["onnx"]["min_cosine"] > 0.999
    quantize = run_cli("quantize", "traffic", *params, cwd=workdir)
    assert quantize.returncode == 0, quantize.stderr
    assert (workdir / "artifacts/traffic/int8/model_int8.onnx").is_file()

    # No GPU and no tensorrt in CI: a recorded skip with its reason, and no engine file.
    engine = run_cli("build-engine", "traffic", *params, cwd=workdir)
    assert engine.returncode == 0, engine.stderr
    builds = json.loads(engine.stdout)
    assert builds["fp16"]["built"] is False and builds["fp16"]["reason"]
    assert not list((workdir / "artifacts/traffic/tensorrt").glob("*.engine"))

    validate = run_cli("validate", "traffic", *params, cwd=workdir)
    assert validate.returncode == 0, validate.stderr
    gates = {g["name"]: g for g in json.loads(validate.stdout)["gates"]}
    assert gates["output_cosine_onnx"]["passed"]
    assert gates["map50_drop_trt-fp16"]["skipped"]
    for backend in ("pytorch", "onnx", "onnx-int8"):
        assert (workdir / f"artifacts/traffic/metrics/{backend}.json").is_file()

    # A zero tolerance fails the gate (the drop must be strictly below it): exit status 1,
    # the failed gate named on stderr.
    strict = run_cli(
        "validate", "traffic", *params, "--set", "traffic.validation.max_map50_drop_onnx=0", cwd=workdir
    )
    assert strict.returncode == 1
    assert "map50_drop_onnx" in strict.stderr

    bench = run_cli(
        "benchmark",
        "traffic",
        *params,
        "--set",
        "traffic.benchmark.runs=3",
        "--set",
        "traffic.benchmark.compile=false",
        cwd=workdir,
    )
    assert bench.returncode == 0, bench.stderr
    report = json.loads((workdir / "artifacts/traffic/benchmark/trained/benchmark.json").read_text())
    backends = [row["backend"] for row in report["rows"]]
    assert backends[:2] == ["pytorch", "pytorch-channels-last"] and "onnx-int8" in backends
    assert all(row["runs"] == 3 and row["latency_p50_ms"] > 0 for row in report["rows"])
    assert "tensorrt" in report["absent"]
    assert "onnx-int8" in bench.stdout
    assert report["roofline"]["threads"] == report["threads"] and report["roofline"]["int8_gop_per_s"] > 0
    int8 = next(row for row in report["rows"] if row["backend"] == "onnx-int8")
    share = int8["gflop_per_s"] / report["roofline"]["int8_gop_per_s"]
    assert int8["gemm_fraction"] == pytest.approx(share, abs=1e-3)
    assert bench.stdout.splitlines()[1].startswith("roofline (")  # under the title, above the table
    (serving,) = report["cpu_serving"]
    p50 = {row["backend"]: row["latency_p50_ms"] for row in report["rows"]}
    assert serving["format"] == min(("onnx", "onnx-int8"), key=p50.__getitem__)
    assert serving["size"] == f"{report['input_size']}x{report['input_size']}"

    prune = run_cli(
        "prune",
        "traffic",
        *params,
        "--set",
        "traffic.prune.finetune_epochs=1",
        "--set",
        "traffic.benchmark.runs=3",
        cwd=workdir,
    )
    assert prune.returncode == 0, prune.stderr
    pruned = json.loads(prune.stdout)
    assert pruned["params_after"] < 0.5 * pruned["params_before"]
    assert pruned["gflops_after"] < pruned["gflops_before"]
    assert set(pruned["latency_p50_ms"]) == {"pytorch", "pytorch-pruned", "onnx", "onnx-pruned"}
    assert 0.0 <= pruned["map50_pruned"] <= 1.0
    assert (workdir / "artifacts/traffic/pruned/model.onnx").is_file()


def test_bad_input_gives_one_clear_error_and_exit_code_2(tiny_params_file: Path):
    workdir = tiny_params_file.parent
    missing = run_cli("train", "traffic", "--params", str(workdir / "missing.yaml"), cwd=workdir)
    assert missing.returncode == 2
    assert "params file not found" in missing.stderr and "Traceback" not in missing.stderr

    unknown = run_cli(
        "train", "traffic", "--params", str(tiny_params_file), "--set", "traffic.train.epohcs=1", cwd=workdir
    )
    assert unknown.returncode == 2 and "unknown key 'epohcs'" in unknown.stderr

    no_data = run_cli("evaluate", "traffic", "--params", str(tiny_params_file), cwd=workdir)
    assert no_data.returncode == 2 and "checkpoint not found" in no_data.stderr

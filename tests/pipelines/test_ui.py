"""The Dagster UI as a user meets it: `dagster dev` (what `make ui` runs) on 127.0.0.1, the asset
graph in headless Chromium, and a materialisation launched through GraphQL the way the UI does.

Needs Debian's ``chromium`` and the ``playwright`` package (``make browser`` installs both); the
browser part is skipped, saying so, where they are absent. The GraphQL part always runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, tiny_params_dict, write_params
from tests.services import free_port, stop_group

pytestmark = pytest.mark.slow

DAGSTER = Path(sys.executable).parent / "dagster"
SCREENSHOT_DIR = Path(os.environ.get("VISIONFORGE_TEST_ARTIFACTS", REPO_ROOT / "artifacts" / "tests"))
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300


@dataclass
class DagsterUI:
    url: str
    workdir: Path
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.load(response)
        assert "errors" not in payload, payload["errors"]
        return payload["data"]


def _restore_sigint() -> None:
    # A shell that started us in the background may have set SIGINT to ignored; dagster dev
    # would then ignore our stop signal too (DESIGN.md, "Facts").
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started (webserver, daemon, code server) by its group:
    SIGINT is what dagster dev handles as a clean shutdown."""
    stop_group(process, ((signal.SIGINT, 30), (signal.SIGTERM, 10)))


LOCATIONS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[DagsterUI]:
    """`dagster dev` in a scratch directory holding the tiny params.yaml and a workspace file."""
    workdir = tmp_path_factory.mktemp("ui")
    write_params(workdir, tiny_params_dict(workdir))
    (workdir / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: pipelines.definitions\n"
        f"      working_directory: {workdir}\n"
    )
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "pipelines" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    log = workdir / "dagster_dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_sigint,
        )
    ui = DagsterUI(f"http://127.0.0.1:{port}", workdir, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dagster dev not ready:\n{log.read_text()[-3000:]}"
            try:
                entries = ui.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1)
        yield ui
    finally:
        _stop(process)


def test_code_location_loads_with_the_traffic_assets(ui):
    entries = ui.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    assert [e["locationOrLoadError"]["__typename"] for e in entries] == ["RepositoryLocation"]
    nodes = ui.graphql("query { assetNodes { assetKey { path } } }")["assetNodes"]
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert {f"traffic/{s}" for s in ("dataset", "model", "onnx", "int8", "tensorrt", "validation")} <= keys


LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"
LATEST = """
query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename ... on Asset {
  assetMaterializations(limit: 1) { runId metadataEntries { label } } } } }
"""


def _launch(ui: DagsterUI, path: list[str], checks: list[str], run_config: dict | None = None) -> dict:
    location = ui.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"][0]["name"]
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": path}],
            "assetCheckSelection": [{"assetKey": {"path": path}, "name": name} for name in checks],
        },
        "mode": "default",
        "runConfigData": run_config or {},
        "executionMetadata": {"tags": [{"key": "visionforge/source", "value": "test_ui"}]},
    }
    return ui.graphql(LAUNCH, {"executionParams": params})["launchPipelineExecution"]


@pytest.fixture(scope="module")
def dataset_run(ui) -> str:
    """``traffic/dataset`` and its integrity check, launched as the UI's Materialize button does."""
    launched = _launch(ui, ["traffic", "dataset"], ["integrity"])
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        status = ui.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{ui.log.read_text()[-3000:]}"
    return run_id


def test_materialisation_launched_through_graphql_succeeds(ui, dataset_run):
    latest = ui.graphql(LATEST, {"key": {"path": ["traffic", "dataset"]}})["assetOrError"]
    materialization = latest["assetMaterializations"][0]
    assert materialization["runId"] == dataset_run
    labels = {entry["label"] for entry in materialization["metadataEntries"]}
    assert {"train_images", "data_version", "plot_box_sizes_train"} <= labels
    # the run read params.yaml from the code location's working directory
    assert (ui.workdir / "data" / "traffic" / "annotations" / "instances_train.json").is_file()


def test_a_run_config_with_an_unknown_key_is_refused_at_launch(ui):
    launched = _launch(
        ui, ["traffic", "dataset"], ["integrity"], {"resources": {"params": {"config": {"epoch": 1}}}}
    )
    assert launched["__typename"] == "RunConfigValidationInvalid"
    assert any("epoch" in error["message"] for error in launched["errors"])


def _dismiss_first_visit_dialog(page) -> None:
    """The UI greets a new browser profile with a newsletter dialog that covers the page."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.first.wait_for(timeout=10_000)
    except Exception:  # noqa: BLE001 - no dialog this time
        return
    skip.first.click()
    skip.first.wait_for(state="detached", timeout=10_000)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_asset_graph_and_plots_render_in_headless_chromium(ui, dataset_run):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make browser installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (make browser installs it)"
    )
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # one group per task: the traffic group's graph
            location = ui.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"][0]["name"]
            page.goto(f"{ui.url}/locations/{location}/asset-groups/traffic", wait_until="networkidle")
            _dismiss_first_visit_dialog(page)
            for stage in ("dataset", "model", "onnx", "int8", "tensorrt", "validation", "release"):
                page.get_by_text(stage, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(SCREENSHOT_DIR / "dagster_asset_graph.png"), full_page=True)

            # The dataset's page after the GraphQL-launched run: a plot opens as an inline image.
            page.goto(f"{ui.url}/assets/traffic/dataset", wait_until="networkidle")
            page.get_by_text("[Show Markdown]").first.click()
            plot = page.locator("img[src^='data:image/png;base64']").first
            plot.wait_for(timeout=60_000)
            assert plot.evaluate("img => img.naturalWidth") > 0
            page.wait_for_timeout(1000)  # let the dialog finish fading in
            page.screenshot(path=str(SCREENSHOT_DIR / "dagster_dataset_plot.png"))
        finally:
            browser.close()
    assert (SCREENSHOT_DIR / "dagster_asset_graph.png").stat().st_size > 0

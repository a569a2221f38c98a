"""The MLflow UI over a finished sweep's store, opened in a real headless browser.

A small sweep runs against the test Ray cluster; ``mlflow server`` serves its store on
127.0.0.1 (own process group, ended by group id); headless Chromium (Debian's
``chromium``, driven by Playwright) opens the experiment link the sweep printed and
clicks through as a user would. Without a browser the test is skipped with the reason
(``.ci/run`` installs one), never passed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from processes import free_port, ray_env, server

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 60_000


def browser_problem() -> str | None:
    """Why no browser can be driven here, or None."""
    if shutil.which("chromium") is None:
        return "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def test_mlflow_ui_shows_the_sweep_for_comparing_trials(ray_cluster, tmp_path):
    problem = browser_problem()
    if problem:
        pytest.skip(f"browser test not run: {problem}")
    from playwright.sync_api import sync_playwright

    cmd = [sys.executable, str(ROOT / "sweeps" / "tau_grid.py"), "--address", "auto", "--storage", str(tmp_path),
           "--name", "ui", "--preset", "digits", "--teacher", "cnn-8", "--student", "cnn-4", "--teacher-epochs", "2",
           "--epochs", "2",
           "--seeds", "1", "--taus", "1,inf", "--alphas", "0.5,1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ray_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    link = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\S+)", proc.stdout)
    assert link, proc.stdout[-2000:]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ui").experiment_id])
    parent = next(r for r in runs if r.data.tags["kd_tune.role"] == "sweep")
    child = next(r for r in runs if r.info.run_name == "kl tau=inf alpha=1 seed=0")

    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    with server([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", uri,
                 "--workers", "1"], port=port, log=tmp_path / "mlflow-server.log", timeout=180), \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            # The link the sweep printed opens the Model training view: its runs table, not GenAI's overview.
            page.goto(f"http://127.0.0.1:{port}{link.group(1)}")
            page.get_by_text(parent.info.run_name).first.wait_for()
            assert "/runs" in page.url and "workflowType=machine_learning" in page.url
            assert page.get_by_text("Tool calls").count() == 0  # a tab of the GenAI overview
            # The parent lists its child runs by name once expanded.
            page.locator("button[data-component-id*=runnamecellrenderer]").first.click()
            page.get_by_text(child.info.run_name, exact=True).first.wait_for()
            assert page.get_by_text("ce seed=0", exact=True).count() >= 1
            # A child run's page shows the selected metric.
            page.get_by_text(child.info.run_name, exact=True).first.click()
            page.get_by_text("test_acc_at_best_val").first.wait_for()
            assert child.info.run_id in page.url
            # The parent's heatmap artifact loads as an image.
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs/"
                      f"{parent.info.run_id}/artifacts?workflowType=machine_learning")
            page.get_by_text("figures", exact=True).first.click()
            page.get_by_text("heatmap.png", exact=True).first.click()
            page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('blob:') && i.complete "
                                   "&& i.naturalWidth > 400)")
        finally:
            browser.close()

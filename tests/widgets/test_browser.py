"""The dashboard in a real browser: JupyterLab on loopback, headless Debian Chromium driven by Playwright.

Runs notebooks/widgets_dashboard.ipynb (a copy, so JupyterLab's autosave never touches the committed one) with
Run > Run All Cells, waits for the dashboard, checks its labels and a non-zero token count are visible, and
saves a screenshot to test-artifacts/widgets_dashboard.png. Needs /usr/bin/chromium
(scripts/install_browser.sh) and the ``playwright`` package; skipped without them unless
SGLKIT_REQUIRE_BROWSER=1, which turns the skip into a failure (CI).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "widgets_dashboard.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DASHBOARD_LABELS = ("KV pool", "Radix cache", "Requests", "Throughput", "Totals since start")
START_TIMEOUT_MS = 180_000  # until the dashboard cell ran (tiny models made, server launched)
RUN_TIMEOUT_MS = 360_000  # until the last cell ran


def _missing(reason: str) -> None:
    if os.environ.get("SGLKIT_REQUIRE_BROWSER", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Lab:
    """A running JupyterLab: its URL, token and process."""

    url: str
    token: str
    process: subprocess.Popen
    log_path: Path

    def api(self, method: str, path: str) -> requests.Response:
        """Call the Jupyter server REST API (loopback, no proxies)."""
        with requests.Session() as session:
            session.trust_env = False
            return session.request(
                method, f"{self.url}{path}", timeout=10, headers={"Authorization": f"token {self.token}"}
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """No news or update prompts over the page."""
    target = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _copy_without_outputs(source: Path, target: Path) -> None:
    """The notebook's cells without stored outputs or widget state: whatever renders comes from this run."""
    notebook = json.loads(source.read_text())
    notebook.get("metadata", {}).pop("widgets", None)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    target.write_text(json.dumps(notebook, indent=1))


def _stop_tree(process: subprocess.Popen, lab: Lab | None) -> None:
    """Shut the kernels down through the API, then end JupyterLab and everything it started."""
    if lab is not None and process.poll() is None:
        try:
            for kernel in lab.api("GET", "/api/kernels").json():
                lab.api("DELETE", f"/api/kernels/{kernel['id']}")
        except (requests.RequestException, ValueError):
            pass
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for child in descendants:  # the kernel, and the sglkit server the notebook launched
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def jupyter_lab(tmp_path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a token, rooted in a temp folder holding a copy of the notebook."""
    root = tmp_path / "root"
    root.mkdir()
    _copy_without_outputs(NOTEBOOK, root / NOTEBOOK.name)
    _write_lab_settings(tmp_path / "lab-settings")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        SGLKIT_ECHO_LOGS="0",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    env.pop("JUPYTER_TOKEN", None)
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    lab = Lab(f"http://127.0.0.1:{port}", token, process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if lab.api("GET", "/api/status").status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield lab
    finally:
        _stop_tree(process, lab)


@pytest.fixture
def chromium() -> str:
    """The system Chromium, with Playwright to drive it (skip or fail when either is missing)."""
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing: run scripts/install_browser.sh")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is missing (pip install -c constraints.txt playwright)")
    return CHROMIUM


def test_dashboard_renders_in_jupyterlab(chromium: str, jupyter_lab: Lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "widgets_dashboard.png"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1100},
        )
        page = context.new_page()
        try:
            page.goto(f"{jupyter_lab.url}/lab/tree/{NOTEBOOK.name}?token={jupyter_lab.token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            # Run All only once the kernel is up, or JupyterLab asks which kernel to start.
            idle = page.locator(".jp-StatusBar-Widget").filter(has_text="| Idle").first
            expect(idle).to_be_visible(timeout=120_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            dashboard = page.locator(".sglkit-dashboard").first
            dashboard.wait_for(timeout=START_TIMEOUT_MS)
            # The last cells terminate the server: the light turns "stopped" once every cell has run.
            stopped = dashboard.locator(".sglkit-health-stopped")
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
            while stopped.count() == 0:
                if errors.count() and "Traceback" in errors.first.inner_text():
                    break
                assert time.monotonic() < deadline, "the notebook did not reach its last cell"
                page.wait_for_timeout(500)
            dashboard.scroll_into_view_if_needed()
            dashboard.screenshot(path=str(screenshot))
            assert errors.filter(has_text="Traceback").count() == 0, errors.first.inner_text()

            for label in DASHBOARD_LABELS:
                title = dashboard.locator(".sglkit-card-title", has_text=re.compile(f"^{label}$"))
                expect(title).to_be_visible()
            expect(stopped).to_be_visible()
            tokens = dashboard.locator(".sglkit-generated-tokens")
            expect(tokens).to_be_visible()
            assert int(tokens.inner_text().replace(",", "")) > 0
            expect(dashboard.get_by_text("generated tokens")).to_be_visible()
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "widgets_dashboard_failure.png"))
            raise
        finally:
            context.close()
    assert screenshot.stat().st_size > 0

"""The explorer in a real JupyterLab, in headless Debian Chromium: it renders, the column picker redraws the plot, nothing leaves loopback.

Follows the recipe in /work/shared/TOOLCHAIN.md ("A real-browser test of a widget in JupyterLab").
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT/".venv"/"bin"/"python" if (ROOT/".venv"/"bin"/"python").exists() else Path(sys.executable)
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT/"tests"/"artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
NOTEBOOK_CELLS = [
    "try:\n    from mlops_workbench.eda import explore\nexcept ImportError:\n    from mlops_workbench.eda_widgets import explore\n"
    "import plotly.express as px",
    'ex = explore(px.data.tips(), target="day")\nex',
]

pytestmark = pytest.mark.slow


def _need_chromium() -> None:
    if CHROMIUM.exists(): return
    if os.environ.get("CI") == "true": pytest.fail(f"{CHROMIUM} is required under CI (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(settings_dir: Path) -> None:
    "The two settings files that keep dialogs away: start the default kernel, no news or update popup."
    files = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
             "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False}}
    for name, value in files.items():
        path = settings_dir/name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _wait_ready(proc: subprocess.Popen, port: int, token: str, log: Path, timeout: float = 40) -> None:
    "Poll /api/status until it answers 200; fail at once if the server exits."
    url, deadline = f"http://127.0.0.1:{port}/api/status?token={token}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: pytest.fail(f"jupyterlab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except (urllib.error.URLError, ConnectionError, TimeoutError): pass
        time.sleep(0.25)
    pytest.fail(f"jupyterlab did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free loopback port with fresh runtime, settings and workspace dirs; yields (url base, token, root)."
    root, log = tmp_path/"root", tmp_path/"lab.log"
    for d in ("root", "runtime", "settings", "workspaces"): (tmp_path/d).mkdir()
    _settings(tmp_path/"settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path/"runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path/"settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path/"workspaces")}
    cmd = [str(PYTHON), "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.extension_manager=readonly",
           "--LabApp.news_url=None", "--expose-app-in-browser"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(proc, port, token, log)
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_explorer_renders_and_redraws_in_jupyterlab(lab):
    _need_chromium()
    from playwright.sync_api import sync_playwright
    base, token, root = lab
    _notebook(root/"explorer.ipynb")
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{base}/lab/tree/explorer.ipynb?token={token}")
            page.wait_for_function("""() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                return k && k.status === 'idle'; }""", timeout=40_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            picker = page.locator(".jp-OutputArea-output .widget-dropdown select").first
            picker.wait_for(timeout=40_000)
            page.wait_for_selector(".js-plotly-plot .barlayer .point", timeout=30_000)
            title = page.locator(".js-plotly-plot .xtitle")
            assert title.text_content() == "total_bill"
            assert page.locator(".js-plotly-plot .legendtext").all_text_contents() == ["Fri", "Sat", "Sun", "Thur"]

            page.select_option(".jp-OutputArea-output .widget-dropdown select >> nth=0", label="tip")
            page.wait_for_function("() => document.querySelector('.js-plotly-plot .xtitle').textContent === 'tip'", timeout=20_000)
            assert title.text_content() == "tip"
            assert "244 rows" in page.locator(".jp-OutputArea-output .widget-html").first.text_content()

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            output = page.locator(".jp-OutputArea-output").filter(has=page.locator(".js-plotly-plot"))
            output.screenshot(path=str(ARTIFACTS/"explorer.png"))

            page.select_option(".jp-OutputArea-output .widget-dropdown select >> nth=1", label="violin")
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .violinlayer .trace').length === 4", timeout=20_000)
            page.select_option(".jp-OutputArea-output .widget-dropdown select >> nth=3", label="total_bill")
            page.locator(".jp-OutputArea-output .widget-hslider").first.wait_for(state="visible", timeout=20_000)
            output.screenshot(path=str(ARTIFACTS/"explorer_violin.png"))
        finally:
            browser.close()

    hosts = {urlsplit(u).hostname for u in requests if urlsplit(u).scheme not in ("data", "blob")}
    assert requests and hosts <= {"127.0.0.1", "localhost"}, f"requests left loopback: {sorted(hosts)}"

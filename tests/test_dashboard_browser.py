"""The evaluation report in headless Debian Chromium: every tab's figures draw, the static threshold slider works, nothing leaves file://."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT/"tests"/"artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TABS = ["overview", "curves", "confusion", "slices", "fairness", "explanations", "champion"]
DRAWN = ".scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm"  # what plotly.js draws for scatter, bar and heatmap traces

pytestmark = pytest.mark.slow


def _need_chromium() -> None:
    if CHROMIUM.exists(): return
    if os.environ.get("CI") == "true": pytest.fail(f"{CHROMIUM} is required under CI (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    "A dashboard with every tab filled (sensitive feature, champion, gate) written as HTML; yields (dashboard, path)."
    from sklearn.linear_model import LogisticRegression
    from mlops_workbench.dashboards import evaluation_dashboard
    from mlops_workbench.evaluate import evaluate, synthetic_groups
    from mlops_workbench.features import build_pipeline, suggest_spec
    from mlops_workbench.gates import Policy
    train, test = synthetic_groups(3000, seed=1), synthetic_groups(2000, seed=2)
    spec, X, y = suggest_spec(train, "y"), test.drop(columns="y"), test["y"]
    fit = lambda C: build_pipeline(spec, LogisticRegression(C=C)).fit(train.drop(columns="y"), train["y"])
    ev = evaluate(fit(1.0), X, y, sensitive_features=["group", "region"], n_boot=100)
    champion = evaluate(fit(0.001), X, y, n_boot=100)
    gate = Policy(["roc_auc >= 0.7", "demographic_parity_difference <= 0.1"]).check(ev.metrics)
    dash = evaluation_dashboard(ev, champion=champion, gate=gate, title="Synthetic groups: challenger")
    return dash, dash.to_html(tmp_path_factory.mktemp("report")/"evaluation.html")


def _figures_per_tab(dash) -> dict[str, int]:
    "How many figures each tab of the static report holds (the confusion tab: one, with its slider)."
    return {name: sum(not isinstance(p, str) for p in parts) for name, parts in dash.tabs.items()}


def test_report_renders_offline_in_chromium(report):
    _need_chromium()
    from playwright.sync_api import expect, sync_playwright
    dash, path = report
    expected = _figures_per_tab(dash)
    assert list(expected) == TABS and all(n >= 1 for n in expected.values()), expected
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            total = sum(expected.values())
            page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {total}", timeout=60_000)
            drawn = page.evaluate("""([tabs, sel]) => Object.fromEntries(tabs.map(t => [t,
                [...document.querySelectorAll(`#tab-${t} .js-plotly-plot`)].map(p => p.querySelectorAll(sel).length)]))""", [TABS, DRAWN])
            for tab in TABS:
                assert len(drawn[tab]) == expected[tab], (tab, drawn[tab], expected[tab])
                assert all(n > 0 for n in drawn[tab]), f"a figure of tab {tab} drew no trace: {drawn[tab]}"
            assert errors == [], errors

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS/"evaluation_dashboard.png"))

            # the static threshold slider: click the tick of 0.3, the title and the heatmap follow
            plot = page.locator("#tab-confusion .js-plotly-plot").first
            plot.scroll_into_view_if_needed()
            tick = plot.locator(".slider-tick-rect").nth(5).bounding_box()
            rail = plot.locator(".slider-rail-rect").bounding_box()
            page.mouse.click(tick["x"] + tick["width"] / 2, rail["y"] + rail["height"] / 2)
            page.wait_for_function("() => document.querySelector('#tab-confusion .gtitle').textContent.startsWith('Confusion matrix at threshold 0.3:')",
                                   timeout=10_000)
            z = page.evaluate("() => document.querySelector('#tab-confusion .js-plotly-plot').data[0].z")
            assert np.array(z).tolist() == dash.evaluation.confusion(0.3).values.tolist()
            plot.screenshot(path=str(ARTIFACTS/"evaluation_confusion.png"))
        finally:
            browser.close()
    schemes = {urlsplit(u).scheme for u in requests}
    assert requests and schemes <= {"file", "data", "blob"}, f"requests left the file: {sorted(u for u in requests if not u.startswith(('file:', 'data:', 'blob:')))[:5]}"


# ---------------------------------------------------------------- the widget in a real JupyterLab

from test_explorer_browser import lab  # noqa: E402,F401  (the JupyterLab server fixture)

WIDGET_CELLS = [
    "from sklearn.linear_model import LogisticRegression\n"
    "from mlops_workbench.evaluate import evaluate, synthetic_groups\n"
    "from mlops_workbench.features import build_pipeline, suggest_spec\n"
    "from mlops_workbench.dashboards import evaluation_dashboard\n"
    "train, test = synthetic_groups(2000, seed=1), synthetic_groups(1000, seed=2)\n"
    "model = build_pipeline(suggest_spec(train, 'y'), LogisticRegression()).fit(train.drop(columns='y'), train['y'])\n"
    "ev = evaluate(model, test.drop(columns='y'), test['y'], sensitive_features='group', n_boot=20)",
    "dash = evaluation_dashboard(ev, top=1)\ndash",
]


def test_widget_threshold_slider_in_jupyterlab(lab):
    "The tabs render in JupyterLab; typing a threshold into the slider redraws the FigureWidget and the metrics table."
    _need_chromium()
    import nbformat
    from playwright.sync_api import expect, sync_playwright
    base, token, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in WIDGET_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root/"dashboard.ipynb")
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{base}/lab/tree/dashboard.ipynb?token={token}")
            page.wait_for_function("""() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                return k && k.status === 'idle'; }""", timeout=40_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            tabs = page.locator(".jp-OutputArea-output .widget-tab .lm-TabBar-tab")
            tabs.first.wait_for(timeout=120_000)  # kernel start, imports, fit, dashboard and 20 FigureWidgets: slow on a busy machine
            assert tabs.all_text_contents() == ["Overview", "Curves", "Confusion", "Slices", "Fairness", "Explanations", "Champion"]
            page.wait_for_selector(".widget-tab .js-plotly-plot .scatterlayer .trace", timeout=60_000)  # the overview's metrics figure
            tabs.nth(2).click()
            page.wait_for_function("() => [...document.querySelectorAll('.widget-tab .js-plotly-plot .gtitle')]"
                                   ".some(t => t.textContent.startsWith('Confusion matrix at threshold 0.5:'))", timeout=60_000)
            readout = page.locator(".widget-tab .widget-hslider .widget-readout").filter(has_text="0.50").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("0.3")
            page.keyboard.press("Enter")
            page.wait_for_function("() => [...document.querySelectorAll('.widget-tab .js-plotly-plot .gtitle')]"
                                   ".some(t => t.textContent.startsWith('Confusion matrix at threshold 0.3:'))", timeout=60_000)
            table = page.locator(".widget-tab .widget-html").filter(has_text="at threshold").first.locator("td").nth(1)
            expect(table).to_have_text("0.3", timeout=30_000)  # the table is a second widget: its update may arrive after the figure's
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-tab")).screenshot(path=str(ARTIFACTS/"evaluation_widget.png"))
        finally:
            browser.close()
    hosts = {urlsplit(u).hostname for u in requests if urlsplit(u).scheme not in ("data", "blob")}
    assert requests and hosts <= {"127.0.0.1", "localhost"}, f"requests left loopback: {sorted(hosts)}"

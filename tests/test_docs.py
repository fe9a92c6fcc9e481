"""The docs site (`make docs`, .ci/docs.py): the build's rules on small notebooks, then the real site in headless
Debian Chromium from file:// (figures drawn, sidebar in life-cycle order, search, nothing fetched from the network).

The real site is built into _docs/ by the same incremental command as `make docs` (without touching README.md):
after `make docs` it only checks that nothing changed (seconds); on a fresh checkout it is the cold build (about
75 s on 2 cores), which leaves the site in _docs/ for CI to publish.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from html.parser import HTMLParser
from urllib.parse import unquote

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT/".venv"/"bin"/"python" if (ROOT/".venv"/"bin"/"python").exists() else Path(sys.executable)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SITE = ROOT/"_docs"
ARTIFACTS = ROOT/"tests"/"artifacts"

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("mlwb_docs_build", ROOT/".ci"/"docs.py")
docs = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLWB_") and k != "IN_TEST"}


def build(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    "Run the docs build (never touching README.md) and return the finished process."
    return subprocess.run([str(PYTHON), str(ROOT/".ci"/"docs.py"), "--no-readme", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def nb(path: Path, *cells: str, title: str = "", frontmatter: str = "") -> Path:
    "Write a notebook of code `cells` (a cell starting with `md:` is markdown) under a `# title` cell."
    made = []
    if frontmatter: made.append(nbformat.v4.new_raw_cell(f"---\n{frontmatter}\n---"))
    if title: made.append(nbformat.v4.new_markdown_cell(title))
    for c in cells:
        made.append(nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c))
    book = nbformat.v4.new_notebook(cells=made)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


def executed(res: subprocess.CompletedProcess) -> int:
    "How many notebooks the build executed (from its log line)."
    return int(re.search(r"notebooks: executing (\d+),", res.stderr).group(1))


class _Refs(HTMLParser):
    "The ids of a page and the href/src attributes of its tags."
    def __init__(self, text: str):
        super().__init__()
        self.ids, self.refs = set(), []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        self.refs += [(tag, a[k]) for k in ("href", "src") if a.get(k)]


def _parsed(site: Path) -> dict[Path, _Refs]:
    pages = [p for p in site.rglob("*.html") if not {".cache", "_static"} & set(p.relative_to(site).parts)]
    return {p.resolve(): _Refs(p.read_text()) for p in pages}


def broken_links(site: Path) -> list[str]:
    "Relative links and sources of the site's pages whose file or anchor does not exist."
    parsed, bad = _parsed(site), []
    for page, refs in parsed.items():
        for _, ref in refs.refs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", ref) or ref == "#": continue
            path, _, frag = ref.partition("#")
            target = (page.parent/unquote(path.split("?")[0])).resolve() if path else page
            if not target.exists(): bad.append(f"{page.relative_to(site.resolve())}: {ref} (no such file)")
            elif frag and target in parsed and frag not in parsed[target].ids:
                bad.append(f"{page.relative_to(site.resolve())}: {ref} (no such anchor)")
    return bad


def remote(site: Path) -> list[str]:
    "Scripts, stylesheets, images and frames that a page of the site would fetch from the network."
    return [f"{page.name}: {ref}" for page, refs in _parsed(site).items() for tag, ref in refs.refs
            if tag in ("script", "link", "img", "iframe", "source") and re.match(r"^(https?:)?//", ref)]


# ---------------------------------------------------------------- the build's rules, on small notebooks

@pytest.fixture
def small(tmp_path):
    "A notebook folder with an index, a module notebook (API, figure, skipped cells), a job notebook and a tutorial."
    nbs = tmp_path/"nbs"
    nb(nbs/"index.ipynb", "md:Front page text.", title="# Small site\n\n> A site of four pages")
    nb(nbs/"10_things.ipynb",
       "#| export\ndef double(x: int, # the number\n          ) -> int: # twice `x`\n    \"Twice `x`.\"\n    return 2 * x",
       "md:Why `double` exists.",
       "import os\nassert 'IN_TEST' not in os.environ\nprint('IN_TEST unset; MLWB_HOME', os.environ.get('MLWB_HOME'))",
       "#| eval: false\nraise RuntimeError('eval false cells never run')",
       "#| slow\nraise RuntimeError('slow cells do not run')",
       "#| hide\nhidden_marker = 'HIDDEN-CELL-SOURCE'",
       "import plotly.express as px\npx.bar(x=['a', 'b', 'c'], y=[1, 3, 2], title='three bars')",
       title="# Things\n\n> Doubling numbers")
    nb(nbs/"jobs"/"job.ipynb", "raise RuntimeError('a job notebook with skip_exec is not run')",
       title="# A job\n\n> Shown as written", frontmatter="skip_exec: true")
    nb(nbs/"tutorials"/"01_walk.ipynb", "print(2 + 2)", title="# A walk\n\n> Four")
    return nbs


def test_small_site_pages_api_figure_and_skipped_cells(small, tmp_path):
    out = tmp_path/"site"
    res = build("--nbs", str(small), "--out", str(out), timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert executed(res) == 3  # index, things, the tutorial: not the skip_exec job
    page = (out/"things.html").read_text()
    assert 'id="double"' in page and "the number" in page and "twice" in page  # show_doc's entry with its docments
    assert "IN_TEST unset; MLWB_HOME None" in page
    assert "eval false cells never run" in page and "slow cells do not run" in page  # shown, not run
    assert "Traceback" not in page
    assert "HIDDEN-CELL-SOURCE" not in page and "#| export" not in page and "#|" not in page
    assert page.count("plotly-graph-div") == 1 and "_static/plotly.min.js" in page
    assert remote(out) == [] and "cdn.plot.ly" not in page
    assert (out/"_static"/"plotly.min.js").stat().st_size > 1_000_000
    assert "plotly.min.js" not in (out/"tutorials"/"walk.html").read_text()  # only pages with a figure load it
    job = (out/"jobs"/"job.html").read_text()
    assert "a job notebook with skip_exec is not run" in job and "Traceback" not in job
    index = (out/"index.html").read_text()
    assert [m for m in re.findall(r'<span class="caption-text">([^<]+)</span>', index)] == \
        ["Overview", "Data &amp; EDA", "Job notebooks", "Tutorials"]
    assert broken_links(out) == []

    again = build("--nbs", str(small), "--out", str(out), timeout=300)  # the cache: nothing to execute
    assert again.returncode == 0 and executed(again) == 0, again.stderr[-3000:]
    nb(small/"tutorials"/"01_walk.ipynb", "print(3 + 3)", title="# A walk\n\n> Six")
    edited = build("--nbs", str(small), "--out", str(out), timeout=300)  # one notebook edited: only it runs
    assert edited.returncode == 0 and executed(edited) == 1, edited.stderr[-3000:]
    assert ">6<" in (out/"tutorials"/"walk.html").read_text().replace("\n", "")


def test_failing_notebook_fails_the_build(tmp_path):
    nbs = tmp_path/"nbs"
    nb(nbs/"index.ipynb", "md:Front page.", title="# Index")
    nb(nbs/"20_bad.ipynb", "x = 1", "assert x == 2, 'x is not two'", "print('never')", title="# Bad")
    res = build("--nbs", str(nbs), "--out", str(tmp_path/"site"), timeout=300)
    assert res.returncode == 1
    assert "20_bad.ipynb failed in cell 3 of 4" in res.stderr and "assert x == 2" in res.stderr
    assert "AssertionError: x is not two" in res.stderr and "no site built" in res.stderr
    assert not (tmp_path/"site"/"index.html").exists()


def test_notebook_over_its_time_fails_the_build(tmp_path):
    nbs = tmp_path/"nbs"
    nb(nbs/"index.ipynb", "import time\ntime.sleep(60)", title="# Index")
    start = time.monotonic()
    res = build("--nbs", str(nbs), "--out", str(tmp_path/"site"), "--timeout", "5", timeout=300)
    assert res.returncode == 1 and "index.ipynb: still running after 5 s (--timeout), stopped" in res.stderr
    assert time.monotonic() - start < 45


def test_fatal_sphinx_warning_fails_the_build(tmp_path):
    nbs = tmp_path/"nbs"
    nb(nbs/"index.ipynb", "md:![a figure](images/missing.png)", title="# Index")
    res = build("--nbs", str(nbs), "--out", str(tmp_path/"site"), timeout=300)
    assert res.returncode == 1
    assert "fatal Sphinx warnings" in res.stderr and "image file not readable: images/missing.png" in res.stderr


def test_sidebar_sections_follow_the_life_cycle(tmp_path):
    rels = ["index.ipynb", "90_cli.ipynb", "00_errors.ipynb", "50_monitor.ipynb", "31_gates.ipynb", "jobs/train.ipynb",
            "tutorials/01_a.ipynb", "migrations/0001_initial.ipynb", "12_eda_widgets.ipynb", "61_scheduler.ipynb"]
    for r in rels: nb(tmp_path/r, "1", title=f"# {r}")
    site = docs.pages(tmp_path)
    assert [(p.section, p.docname) for p in site] == [
        ("Overview", "index"), ("Workspace & store", "errors"), ("Data & EDA", "eda_widgets"),
        ("Evaluation & gates", "gates"), ("Monitoring & alerts", "monitor"), ("Jobs & scheduling", "scheduler"),
        ("CLI", "cli"), ("Job notebooks", "jobs/train"), ("Tutorials", "tutorials/a"),
        ("Migrations", "migrations/initial")]


def test_nbdev_links_become_relative_and_point_at_api_entries():
    host = "https://mlops-workbench.invalid"
    anchors = {"eda": {"profile", "profile-to-html"}, "tracking": {"run"}}
    md = (f"See [`profile`]({host}/eda.html#profile), [`Profile.to_html`]({host}/eda.html#profile.to_html), "
          f"[`Run.log_metric`]({host}/tracking.html#run.log_metric), [`_helper`]({host}/eda.html#_helper) and "
          f"[source]({host}/mlops_workbench/blob/main/x.py#L3){{target=\"_blank\"}} [pandas](https://pandas.pydata.org)")
    out = docs.relink(md, "tutorials/walk", host, anchors)
    assert '<a class="reference internal" href="../eda.html#profile"><code' in out
    assert 'href="../eda.html#profile-to-html"' in out
    assert 'href="../tracking.html#run"' in out  # a method without an entry of its own: its class
    assert "_helper</span></code>" in out and "#_helper" not in out  # no entry: code, no link
    assert "source" not in out and "target=" not in out and "[pandas](https://pandas.pydata.org)" in out


# ---------------------------------------------------------------- the real site

@pytest.fixture(scope="module")
def site():
    "The site in _docs/, brought up to date with nbs/ (a no-op when `make docs` ran before)."
    res = build()
    if res.returncode != 0: pytest.fail(f"the docs build failed:\n{res.stderr[-6000:]}", pytrace=False)
    return SITE


def test_every_notebook_has_a_page_and_links_resolve(site):
    for pg in docs.pages():
        assert (site/f"{pg.docname}.html").exists(), f"{pg.rel} has no page"
    assert broken_links(site) == []
    assert remote(site) == []


def _need_chromium() -> None:
    if CHROMIUM.exists(): return
    if os.environ.get("CI") == "true": pytest.fail(f"{CHROMIUM} is required under CI (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


FIGURES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
    traces: (gd.data || []).length,
    drawn: gd.querySelectorAll('g.trace, g.hm image, .gl-container canvas').length,
    width: gd.querySelector('.main-svg').getBoundingClientRect().width,
    room: gd.parentElement.getBoundingClientRect().width}))"""


def _figures(page, url: str, at_least: int) -> list[dict]:
    "Open `url`, wait for its figures, and check each has traces drawn and fits the page."
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot g.trace, .js-plotly-plot g.hm image')"
                           f".length >= {at_least}", timeout=20_000)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:  # figures are drawn while the page is parsed, then laid out again to the column's final width
        page.wait_for_function(f"() => ({FIGURES})().every(f => f.width <= f.room + 1)", timeout=10_000)
    except PlaywrightTimeout: pass  # the figure that does not fit is named below
    figs = page.evaluate(FIGURES)
    assert len(figs) >= at_least, (url, figs)
    for f in figs:
        assert f["traces"] > 0 and f["drawn"] > 0, (url, f)
        assert f["width"] <= f["room"] + 1, (url, f)  # laid out to the final column width, not cut off
    return figs


def test_site_in_chromium(site):
    _need_chromium()
    from playwright.sync_api import sync_playwright
    tutorials = [pg for pg in docs.pages() if pg.section == "Tutorials"]
    with_figures = [pg for pg in tutorials if "plotly-graph-div" in (site/f"{pg.docname}.html").read_text()]
    expected = [c for c, _ in docs.SECTIONS if any(pg.section == c for pg in docs.pages())]
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto((site/"index.html").as_uri())
            nav = page.locator("nav.mlwb-nav")
            assert nav.locator("p.caption").evaluate_all("els => els.map(e => e.textContent.trim())") == expected
            links = nav.locator("a.reference").evaluate_all("els => els.map(e => e.getAttribute('href'))")
            assert links[:2] == ["#", "errors.html"] and "evaluate.html" in links and "monitor.html" in links
            assert links.index("errors.html") < links.index("eda.html") < links.index("evaluate.html") < \
                links.index("registry.html") < links.index("monitor.html") < links.index("cli.html")
            assert page.locator("article h1").first.text_content().strip().startswith("mlops_workbench")

            evaluation = _figures(page, (site/"evaluate.html").as_uri(), at_least=8)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator(".cell:has(.js-plotly-plot)").first.screenshot(path=str(ARTIFACTS/"docs_evaluate_figure.png"))
            assert {"heatmap", "scatter", "bar"} <= set(page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(gd => gd.data.map(t => t.type))"))
            current = page.locator("nav.mlwb-nav a.current")
            assert current.first.get_attribute("href") == "#" and current.first.text_content().strip() == "Evaluation"
            assert page.locator(".tag_mlwb-showdoc").count() >= 5  # the API reference (show_doc entries)

            drift = _figures(page, (site/"monitor.html").as_uri(), at_least=3)
            page.locator(".cell:has(.js-plotly-plot)").first.screenshot(path=str(ARTIFACTS/"docs_monitor_figure.png"))
            assert len(evaluation) >= 8 and len(drift) >= 3

            if with_figures:
                _figures(page, (site/f"{with_figures[0].docname}.html").as_uri(), at_least=1)
            elif tutorials:
                page.goto((site/f"{tutorials[0].docname}.html").as_uri())
                assert page.locator("article h1").count() == 1

            page.goto((site/"search.html").as_uri() + "?q=drift")
            results = page.locator("#search-results ul.search li a")
            results.first.wait_for(timeout=20_000)
            hrefs = results.evaluate_all("els => els.map(e => e.getAttribute('href'))")
            assert any(h.startswith("monitor.html") for h in hrefs), hrefs
        finally:
            browser.close()
    assert errors == [], errors  # "Plotly is not defined" and the like
    assert [u for u in requests if not u.startswith(("file://", "data:", "blob:", "about:"))] == []

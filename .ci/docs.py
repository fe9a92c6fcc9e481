"""Build the docs site offline into `_docs/` from the notebooks in nbs/, without quarto.

    1. execute   every notebook (a copy of nbs/, each notebook's folder as working directory, IN_TEST unset,
                 MLWB_* variables unset), cells flagged `#| eval: false` or with a test flag (`#| slow`) not run:
                 nbdev_test's rules and nbdev's own in-process executor (execnb's CaptureShell), 2 at a time in
                 forked workers that have the heavy imports done; notebooks whose frontmatter says
                 `skip_exec: true` (the job notebooks) are shown as written.
    2. process   nbdev's notebook processing (the FilterDefaults processors proc_nbs runs): show_doc API
                 reference added, hidden and export cells gone, title turned into frontmatter, doc links.
    3. clean     our post-processing into notebooks myst-nb reads: title cell back, quarto options turned
                 into myst-nb tags, Pandoc links into HTML, links to our pages made relative, widget outputs
                 replaced by a note, the sidebar's toctrees added to the index page.
    4. Sphinx    + myst-nb (nb_execution_mode="off") + pydata-sphinx-theme; configuration in docs/conf.py.

Steps 1 and 2 are cached by content hash in `<out>/.cache/`: a rebuild after editing one notebook executes and
processes only that one, and Sphinx rewrites only the pages whose source changed. An executed notebook is keyed
by its own content only: when a change to one module alters what another notebook shows, `--force` (or a cold
build, as in CI) runs everything again. Processing is redone for every page when the set of exported names
(mlops_workbench/_modidx.py, the doc links) changes. README.md is regenerated from nbs/index.ipynb first
(.ci/readme.py).

Plotly figures: the executing shell renders them as a <div> and a Plotly.newPlot script with neither plotly.js
nor MathJax (renderer "mlwb_docs" below); every page with a figure loads `_static/plotly.min.js`, copied once
from the installed plotly, in its <head>. No page loads anything from the network.

Usage: python .ci/docs.py [--out _docs] [--workers 2] [--timeout 300] [--force] [--no-readme] [--keep-going]
                          [--nbs nbs]
Exit status 1 on any failure: a notebook that raises or runs longer than --timeout (its log and the notebook as
far as it ran are in <out>/.cache/logs/), nbdev's processing failing (a show_doc that cannot run), Sphinx failing
or emitting a warning that matches FATAL_WARNINGS (a page missing from the toctree, an unreadable image, any
MyST or myst-nb warning ...). Other Sphinx warnings are printed and kept in <out>/.cache/sphinx-warnings.txt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS = ROOT/"nbs", ROOT/"docs"
RECIPE = "1"  # bump when the execution or processing recipe changes: every cached notebook is redone

# The sidebar in life-cycle order: (caption, key). Module notebooks go by the first digit of their number
# prefix; notebooks in folders of nbs/ by the folder's name (other folders get a section of their own before
# Migrations).
SECTIONS = [("Overview", "index"), ("Workspace & store", "0"), ("Data & EDA", "1"), ("Features & tuning", "2"),
            ("Evaluation & gates", "3"), ("Registry & serving", "4"), ("Monitoring & alerts", "5"),
            ("Jobs & scheduling", "6"), ("More modules", "78"), ("CLI", "9"), ("Job notebooks", "jobs"),
            ("Tutorials", "tutorials"), ("Migrations", "migrations")]

# Sphinx warnings that fail the build: the site would miss a page or hold a broken link or output.
FATAL_WARNINGS = [r"toctree", r"isn't included in any toctree", r"nonexisting document", r"undefined label",
                  r"unknown document", r"Unknown directive", r"Unknown interpreted text role", r"image file not readable",
                  r"Notebook JSON is invalid", r"could not read", r"duplicate label", r"cross-reference target not found",
                  r"mime type", r"Failed to", r"Could not lex", r"\[myst", r"\[mystnb"]

# Run in each executing shell before the notebook: plotly figures as static HTML for a page that loads plotly.js.
STARTUP = '''\
import plotly.io as _pio
from plotly.io.base_renderers import MimetypeRenderer as _MimetypeRenderer

class _StaticHtml(_MimetypeRenderer):
    "A plotly figure as a <div> and its Plotly.newPlot script, without plotly.js or MathJax (the page loads plotly.js)."
    def to_mimebundle(self, fig_dict):
        return {"text/html": _pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                                          default_width="100%", default_height=450, validate=False)}

_pio.renderers["mlwb_docs"] = _StaticHtml()
_pio.renderers.default = "mlwb_docs"
del _StaticHtml, _MimetypeRenderer
'''

# Imported once by the build process, before it forks a worker per notebook: each notebook then starts in a
# fraction of a second instead of paying for a kernel and these imports.
PRELOAD = ["numpy", "pandas", "scipy.stats", "sklearn", "sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing",
           "sklearn.impute", "sklearn.linear_model", "sklearn.ensemble", "sklearn.model_selection", "sklearn.metrics",
           "sklearn.inspection", "sklearn.datasets", "plotly.graph_objects", "plotly.express", "plotly.io._renderers",
           "plotly.subplots", "nbformat", "sqlalchemy", "alembic", "pyarrow", "pyarrow.parquet", "optuna", "pandera.pandas",
           "ipywidgets", "anywidget", "fairlearn.metrics", "skops.io", "fastapi", "httpx", "croniter", "typer", "papermill",
           "IPython", "execnb.shell", "nbdev.process", "nbdev.processors", "nbdev.serve_drv", "nbdev.showdoc",
           "fastcore.test", "mlops_workbench"]


def log(msg: str) -> None: print(f"docs: {msg}", file=sys.stderr, flush=True)


def sha(*parts: bytes | str) -> str:
    "A short content hash of `parts`."
    h = hashlib.sha256()
    for p in parts: h.update(p.encode() if isinstance(p, str) else p); h.update(b"\0")
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- the pages and their order

@dataclass
class Page:
    root: Path       # the notebooks' folder (nbs/)
    rel: str         # path under it: "30_evaluate.ipynb", "jobs/train.ipynb"
    section: str     # sidebar caption
    execute: bool    # False when the frontmatter says `skip_exec: true`

    @property
    def src(self) -> Path: return self.root/self.rel
    @property
    def docname(self) -> str:
        "nbdev's page name (what its doc links point at): number prefix dropped, lower case, no suffix."
        from nbdev.doclinks import _nbpath2html
        return _nbpath2html(Path(self.rel)).with_suffix("").as_posix()
    @property
    def flat(self) -> str: return self.rel.replace("/", "__")


def _skipped(rel: Path) -> bool:
    "nbdev's rule: files and folders whose name starts with `_` or `.` are no notebooks of the project."
    return any(part.startswith(("_", ".")) for part in rel.parts)


def _section(rel: Path) -> str:
    if rel.as_posix() == "index.ipynb": return "Overview"
    if len(rel.parts) > 1:
        return next((c for c, k in SECTIONS if k == rel.parts[0]), rel.parts[0].replace("_", " ").capitalize())
    digit = rel.name[0] if rel.name[:1].isdigit() else "7"
    return next(c for c, k in SECTIONS if k.isdigit() and digit in k)


def _skip_exec(path: Path) -> bool:
    "Whether the notebook's frontmatter says `skip_exec: true`, read as nbdev_test reads it."
    from fastcore.basics import str2bool
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    return bool(str2bool(getattr(nb, "frontmatter_", {}).get("skip_exec", False)))


def pages(nbs: Path = NBS) -> list[Page]:
    "Every notebook in `nbs` in sidebar order: by section, then by path."
    rels = [p.relative_to(nbs) for p in nbs.rglob("*.ipynb")]
    found = [Page(nbs, r.as_posix(), _section(r), not _skip_exec(nbs/r)) for r in rels if not _skipped(r)]
    order = [c for c, _ in SECTIONS]
    rank = lambda pg: (order.index(pg.section) if pg.section in order else len(order) - 1.5, pg.rel)
    res = sorted(found, key=rank)
    names = [pg.docname for pg in res]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash: raise SystemExit(f"docs: two notebooks make the same page {clash}: rename one")
    return res


# ---------------------------------------------------------------- forked workers

def _fork(target, *args) -> int:
    "Run `target(*args)` in a child process in a process group of its own (so a timeout can stop all of it)."
    pid = os.fork()
    if pid: return pid
    code = 1
    try:
        os.setpgid(0, 0)
        target(*args)
        code = 0
    except SystemExit as e:
        print(e, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)


def run_jobs(jobs: list[tuple[str, object, tuple]], workers: int, timeout: float, logs: Path,
             times: dict[str, float] | None = None) -> dict[str, str]:
    """Run `jobs` (name, function, args), `workers` at a time in forked children, each stopped after `timeout`
    seconds; {name: error report} of the jobs that failed. The seconds each took go into `times`."""
    logs.mkdir(parents=True, exist_ok=True)
    queue, running, errors = list(jobs), {}, {}
    times = {} if times is None else times
    try:
        while queue or running:
            while queue and len(running) < workers:
                name, fn, args = queue.pop(0)
                log_path = logs/f"{name}.log"
                running[_fork(_logged, fn, args, log_path)] = (name, time.monotonic(), log_path)
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # a child that ended, not reaped
            if info is None or info.si_pid not in running:
                for pid, (name, start, log_path) in list(running.items()):
                    if time.monotonic() - start > timeout:
                        _killpg(pid); os.waitpid(pid, 0); del running[pid]
                        errors[name] = f"{name}: still running after {timeout:.0f} s (--timeout), stopped\n{_tail(log_path)}"
                        log(f"TIMEOUT {name}")
                if info is not None: os.waitpid(info.si_pid, 0)  # not one of ours
                else: time.sleep(0.05)
                continue
            pid = info.si_pid
            _killpg(pid)  # what the notebook left running (servers, subprocesses); the group id is still reserved
            _, status = os.waitpid(pid, 0)
            name, start, log_path = running.pop(pid)
            times[name] = round(time.monotonic() - start, 1)
            if os.waitstatus_to_exitcode(status) != 0:
                errors[name] = f"{name} failed:\n{_tail(log_path)}"
                log(f"FAILED {name} ({times[name]:.1f} s), log: {log_path}")
            else: log(f"{name} ({times[name]:.1f} s)")
    finally:  # Ctrl-C or an error here: the workers (in process groups of their own) must not outlive the build
        for pid in running: _killpg(pid)
        for pid in running: os.waitpid(pid, 0)
    return errors


def _killpg(pid: int) -> None:
    try: os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError): pass


def _logged(fn, args, log_path: Path) -> None:
    "In the child: stdout and stderr (file descriptors too: subprocesses, loggers) go to `log_path`."
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
    fn(*args)


def _tail(path: Path, n: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


def _write_nb(nb, dest: Path) -> None:
    "Write notebook `nb` to `dest` atomically (a cache entry exists only when complete)."
    from execnb.nbio import write_nb
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    write_nb(nb, part)
    part.replace(dest)


# ---------------------------------------------------------------- 1. execute

def _no_eval(cell, flags: set[str]) -> bool:
    "nbdev_test's rule: markdown is not run, `#| eval: false` never, cells with a test flag (`#| slow`) not."
    if cell.cell_type != "code": return True
    if "nbdev_export" + "(" in cell.source: return True
    direc = getattr(cell, "directives_", {}) or {}
    if direc.get("eval:", [""])[0].lower() == "false": return True
    return bool(flags & direc.keys())


def execute_one(path: Path, dest: Path, failed: Path, flags: set[str], scratch_root: Path) -> None:
    """Run notebook `path` top to bottom in this (forked) process as nbdev_test does, and write it to `dest`;
    on an error, write it as far as it ran to `failed` and raise."""
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    for k in [k for k in os.environ if k.startswith("MLWB_") or k == "IN_TEST"]: del os.environ[k]
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=scratch_root))  # mkdtemp() in the notebook lands here
    os.environ["TMPDIR"] = str(scratch); tempfile.tempdir = None
    os.chdir(path.parent)
    nb = NBProcessor(path, rm_directives=False).nb  # cells get `directives_`, sources stay as written
    shell = CaptureShell(path)
    shell.run_cell(STARTUP)
    try: shell.run_all(nb, exc_stop=True, preproc=lambda c: _no_eval(c, flags))
    except BaseException:
        for c in nb.cells: c.pop("directives_", None)
        _write_nb(nb, failed)
        idx = getattr(shell, "_cell_idx", None)
        where = f" in cell {idx} of {len(nb.cells)}:\n{nb.cells[idx - 1].source}\n" if idx else ""
        print(f"{path.relative_to(scratch_root/'nbs')} failed{where}", file=sys.stderr)
        raise
    for c in nb.cells: c.pop("directives_", None)
    _write_nb(nb, dest)


# ---------------------------------------------------------------- 2. nbdev's processing

def _patch_nbdev() -> None:
    """nbdev's exec_show_docs reruns every cell that contains an import, to define what show_doc needs; for a cell
    that also holds example code that means running the example a second time (in the repository root, with
    IN_TEST=1, without our figure renderer) and replacing the outputs step 1 recorded. Here such a cell contributes
    its import statements only, and keeps its outputs. Export, import-only and show_doc cells run as in nbdev."""
    import ast
    import nbdev.processors as P
    from fastcore.basics import str2bool

    def imports_only(cell) -> str | None:
        "The import statements of a cell that also holds other code, or None when nbdev may run it as is."
        if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}: return None
        trees = cell.parsed_()
        if not trees or P._show_docs(trees): return None
        imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
        return None if len(imports) == len(trees) else "\n".join(ast.unparse(t) for t in imports)

    def __call__(self, cell):
        if not self.nb.has_docs_ or not hasattr(self, "k"): return
        fm = getattr(self.nb, "frontmatter_", {})
        if str2bool(fm.get("skip_showdoc", False)): return
        if P._do_eval(cell):
            src = imports_only(cell)
            if src is None: self.k.cell(cell)
            else: self.k.run(src)
        if self.k.exc:  # recorded, and the page gets the error in place of the output: process_one then fails
            e, self.k.exc = self.k.exc, None
            msg = f"{type(e).__name__}: {e}"
            PROBLEMS.append(f"cell {cell.idx_}:\n{cell.source}\n{msg}")
            cell.outputs = [{"output_type": "stream", "name": "stderr", "text": f"nbdev could not run this cell: {msg}\n"}]

    P.exec_show_docs.__call__ = __call__


PROBLEMS: list[str] = []  # in a processing worker: the cells nbdev could not run


def process_one(name: str, src: Path, dest: Path, failed: Path) -> None:
    """nbdev's processing of one executed notebook (what nbdev.serve.proc_nbs runs for each file) into `dest`; when
    a cell fails (a show_doc that cannot resolve an annotation, say), the page goes to `failed` and this raises."""
    import warnings
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    warnings.filterwarnings("ignore", message="Found cells containing imports and other code")
    os.chdir(ROOT)  # nbdev finds settings.ini from the working directory, as proc_nbs does
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    nbdev.serve_drv.main((src, part, FilterDefaults))
    if PROBLEMS:
        part.replace(failed)
        raise SystemExit(f"nbdev's processing of {name} failed in\n" + "\n".join(PROBLEMS))
    part.replace(dest)


# ---------------------------------------------------------------- 3. clean for myst-nb

def _host() -> str:
    from nbdev.config import get_config
    cfg = get_config()
    return (cfg.doc_host.rstrip("/") + "/" + cfg.doc_baseurl.strip("/")).rstrip("/")


_re_pandoc_attrs = re.compile(r"(\[[^\]]*\]\([^)\s]*\))\{[^}\n]*\}")
_re_source_link = re.compile(r"\[source\]\([^)\s]*\)(\{[^}\n]*\})?")
_re_md_link = re.compile(r"\[(`?)([^\]`]+)\1\]\(([^)\s]+)\)")
_re_directive = re.compile(r"^\s*#\|\s*(.*?)\s*$")
WIDGET = "application/vnd.jupyter.widget-view+json"
ASSETS = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}


def _anchor(a: str) -> str:
    "The id Sphinx gives the show_doc heading nbdev links to (`run.log_metric` -> `run-log-metric`)."
    from docutils.nodes import make_id
    return make_id(a)


_re_show_doc = re.compile(r"^\s*show_doc\(\s*([\w.]+)", re.MULTILINE)


def api_anchors(nb: dict) -> set[str]:
    "The ids of the API entries on a processed page: one per show_doc cell (`Run.log_metric` -> `run-log-metric`)."
    srcs = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return {_anchor(m.group(1).lower()) for s in srcs for m in _re_show_doc.finditer(s)}


def relink(md: str, here: str, host: str, anchors: dict[str, set[str]]) -> str:
    """Markdown `md` of page `here` with nbdev's doc links to our own pages made relative HTML links, pointing at
    the show_doc entry of the name (or of its class, for a method without an entry of its own; no link for a name
    without an entry, such as a private helper). Source links (to a repository host the offline site cannot
    reach) and Pandoc attributes are dropped."""
    md = _re_source_link.sub("", md)
    md = _re_pandoc_attrs.sub(r"\1", md)

    def one(m: re.Match) -> str:
        tick, text, url = m.groups()
        if not url.startswith(host + "/"): return m.group(0)
        path, _, frag = url[len(host) + 1:].partition("#")
        inner = f'<code class="docutils literal notranslate"><span class="pre">{text}</span></code>' if tick else text
        if frag:
            shown = anchors.get(path.removesuffix(".html"), set())
            frag = next((a for a in (_anchor(frag), _anchor(frag.rpartition(".")[0])) if a in shown), None)
            if frag is None: return inner
        href = posixpath.relpath(path, posixpath.dirname(here) or ".") + (f"#{frag}" if frag else "")
        return f'<a class="reference internal" href="{href}">{inner}</a>'
    return _re_md_link.sub(one, md)


def _quarto_options(cell: dict) -> dict[str, str]:
    "Strip quarto's `#| key: value` lines from a code cell; the options they set."
    lines, opts = cell["source"].splitlines(True), {}
    while lines and (m := _re_directive.match(lines[0])):
        key, _, value = m.group(1).partition(":")
        opts[key.strip()] = value.strip()
        lines.pop(0)
    cell["source"] = "".join(lines)
    return opts


def _widget_note(out: dict) -> dict:
    "A widget output as a note: a static page cannot run it (and must not fetch the widget manager from a CDN)."
    text = "".join(out["data"].get("text/plain", "widget"))
    kind = re.match(r"\w+", text)
    note = (f'<div class="mlwb-widget-note"><strong>Interactive widget</strong> (<code>{kind.group(0) if kind else "widget"}'
            '</code>): run this notebook in JupyterLab to use it.</div>')
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": note, "text/plain": text}}


def _clean_output(out: dict, opts: dict[str, str], tags: list[str], relinked) -> dict | None:
    "One output of a code cell for myst-nb; None to drop it (an empty result)."
    if out["output_type"] not in ("execute_result", "display_data"): return out
    data = out.get("data", {})
    if not data: return None
    if WIDGET in data: return _widget_note(out)
    if "text/markdown" in data:
        text = relinked("".join(data["text/markdown"]))
        if opts.get("output") == "asis":  # show_doc: its leading rule becomes the cell's border (CSS)
            text = re.sub(r"^\s*---\s*\n", "", text)
            if "mlwb-showdoc" not in tags: tags.append("mlwb-showdoc")
        data["text/markdown"] = text
    out.setdefault("metadata", {})
    if out["output_type"] == "execute_result": out.setdefault("execution_count", None)
    return out


def _clean_code(cell: dict, relinked) -> bool:
    "Quarto's cell options into myst-nb tags, outputs cleaned, in place; False when the cell is not to be shown."
    opts, md = _quarto_options(cell), cell["metadata"]
    if opts.get("include") == "false": return False
    tags = md.setdefault("tags", [])
    if opts.get("echo") == "false": tags.append("remove-input")
    if opts.get("output") == "false": tags.append("remove-output")
    cell.setdefault("execution_count", None)
    cell["outputs"] = [o for o in (_clean_output(o, opts, tags, relinked) for o in cell.get("outputs", [])) if o]
    if not tags: del md["tags"]
    return True


def clean(nb: dict, page: Page, host: str, anchors: dict[str, set[str]]) -> dict:
    "Processed notebook `nb` as a clean nbformat 4.5 notebook for myst-nb, its title cell first."
    import yaml
    cells, fm = [], {}
    relinked = lambda md: relink(md, page.docname, host, anchors)
    for cell in nb["cells"]:
        cell = {k: v for k, v in cell.items() if k in ("cell_type", "source", "metadata", "outputs", "execution_count",
                                                         "id", "attachments")}  # nbdev's `has_sd`, `idx_` ...
        cell["source"] = src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("language", "execution")}
        if cell["cell_type"] == "raw" and not cells and not fm and src.startswith("---"):
            fm = yaml.safe_load(src.strip().strip("-")) or {}
        elif cell["cell_type"] == "markdown":
            if "WARNING: THIS FILE WAS AUTOGENERATED" not in src: cells.append({**cell, "source": relinked(src)})
        elif cell["cell_type"] != "code" or _clean_code(cell, relinked): cells.append(cell)
    head = f"# {fm.get('title') or Path(page.rel).stem}"
    if fm.get("description"): head += f"\n\n> {fm['description']}"
    return _notebook(nb, [{"cell_type": "markdown", "metadata": {}, "source": head}, *cells], page.docname)


def _notebook(nb: dict, cells: list[dict], docname: str) -> dict:
    "An nbformat 4.5 notebook of `cells`, with the kernel metadata of `nb`; cells without an id get a stable one."
    seen = set()
    for i, cell in enumerate(cells):
        if not cell.get("id") or cell["id"] in seen: cell["id"] = sha(docname, str(i))[:12]
        seen.add(cell["id"])
    meta = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    meta.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": meta, "cells": cells}


def toctree_cells(site: list[Page]) -> list[dict]:
    "The sidebar: one hidden toctree per life-cycle section, in order, appended to the index page."
    cells = []
    for caption in dict.fromkeys(pg.section for pg in site):
        entries = ["self" if pg.docname == "index" else pg.docname for pg in site if pg.section == caption]
        body = "\n".join(entries)
        cells.append({"cell_type": "markdown", "metadata": {},
                      "source": f"```{{toctree}}\n:hidden:\n:caption: {caption}\n:maxdepth: 1\n\n{body}\n```"})
    return cells


def write_sources(site: list[Page], processed: dict[str, Path], src: Path) -> list[list[str]]:
    """The Sphinx source folder: one clean notebook per page (a file is rewritten only when its content changed, so
    Sphinx reads only those again) and the images; [docname, section, title] of each page, in sidebar order."""
    import nbformat
    host, wanted, manifest = _host(), set(), []
    nbs = {pg.rel: json.loads(processed[pg.rel].read_text()) for pg in site}
    anchors = {pg.docname: api_anchors(nbs[pg.rel]) for pg in site}
    for pg in site:
        nb = clean(nbs[pg.rel], pg, host, anchors)
        if pg.docname == "index": nb = _notebook(nb, nb["cells"] + toctree_cells(site), pg.docname)
        nbformat.validate(nbformat.from_dict(nb))
        manifest.append([pg.docname, pg.section, nb["cells"][0]["source"].splitlines()[0]])
        target = src/f"{pg.docname}.ipynb"
        wanted.add(target)
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    nbs = site[0].root
    for asset in nbs.rglob("*"):  # images the notebooks show, by paths relative to their folder
        rel = asset.relative_to(nbs)
        if asset.suffix.lower() in ASSETS and asset.is_file() and not _skipped(rel):
            target = src/rel
            wanted.add(target)
            if not target.exists() or target.read_bytes() != asset.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(asset, target)
    for old in src.rglob("*"):
        if old.is_file() and old not in wanted: old.unlink()
    return manifest


def prune_site(out: Path, docnames: set[str]) -> None:
    "Delete the pages of notebooks that are gone (Sphinx never deletes a page it wrote)."
    keep = docnames | {"genindex", "search", "py-modindex"}
    for page in out.rglob("*.html"):
        rel = page.relative_to(out)
        if rel.parts[0] in (".cache", "_static", "_images", "_sources"): continue
        if rel.with_suffix("").as_posix() not in keep: page.unlink()


# ---------------------------------------------------------------- 4. Sphinx

def sphinx(src: Path, out: Path, cache: Path, everything: bool) -> int:
    """Sphinx into `out`, incremental unless `everything` (pages added, removed, renamed or moved: every page's
    sidebar changes); 1 when it fails or emits a fatal warning."""
    warnings, doctrees = cache/"sphinx-warnings.txt", cache/"doctrees"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(DOCS), "-d", str(doctrees),
           "-w", str(warnings), *(["-E", "-a"] if everything else []), str(src), str(out)]
    res = subprocess.run(cmd, cwd=ROOT)
    lines = warnings.read_text().splitlines() if warnings.exists() else []
    fatal = [l for l in lines if any(re.search(p, l) for p in FATAL_WARNINGS)]
    if res.returncode or fatal:
        shutil.rmtree(doctrees, ignore_errors=True)  # or the next (incremental) build would not read them again
        log(f"sphinx-build failed (exit {res.returncode})" if res.returncode else
            "fatal Sphinx warnings:\n" + "\n".join(fatal))
        return 1
    return 0


# ---------------------------------------------------------------- the build

def _imports(paths: list[Path]) -> set[str]:
    "The top-level packages the notebooks `paths` import."
    pat = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", re.MULTILINE)
    found = set()
    for p in paths:
        for cell in json.loads(p.read_text()).get("cells", []):
            if cell.get("cell_type") == "code": found |= set(pat.findall("".join(cell.get("source", ""))))
    return found


def _preload(paths: list[Path]) -> None:
    """The imports the workers running notebooks `paths` would each repeat, done once here (they are forked from this
    process): nbdev's and IPython's, and the packages of PRELOAD the notebooks use (all of them, and every module of
    mlops_workbench, when a notebook uses mlops_workbench: its modules import them)."""
    import importlib
    import pkgutil
    import warnings
    used = _imports(paths)
    ours = "mlops_workbench" in used
    names = [n for n in PRELOAD if ours or n.split(".")[0] in used or n.split(".")[0] in ("IPython", "execnb", "nbdev")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try: importlib.import_module(name)
            except Exception: pass  # a module broken mid-edit: its notebook reports it
        if ours:
            try:
                import mlops_workbench
                for m in pkgutil.iter_modules(mlops_workbench.__path__, "mlops_workbench."):
                    try: importlib.import_module(m.name)
                    except Exception: pass
            except Exception: pass


def build(out: Path, workers: int = 2, timeout: float = 300, force: bool = False, readme: bool = True,
          keep_going: bool = False, nbs: Path = NBS) -> int:
    """Build the site into `out`; 0 on success. A failing notebook stops the build before Sphinx, unless
    `keep_going`: the site is then built with the failed pages as far as they got, and the status is still 1."""
    t0 = time.monotonic()
    if readme: subprocess.run([sys.executable, str(ROOT/".ci"/"readme.py")], check=True)
    cache, failures = out/".cache", {}
    if force: shutil.rmtree(cache, ignore_errors=True)
    (cache/"logs").mkdir(parents=True, exist_ok=True)
    site = pages(nbs)
    if not any(pg.docname == "index" for pg in site): raise SystemExit(f"docs: {nbs/'index.ipynb'} is missing")
    for k in [k for k in os.environ if k.startswith("MLWB_") or k == "IN_TEST"]: del os.environ[k]
    from nbdev.config import get_config
    flags = set(get_config().get("tst_flags", "").split())

    # 1. execute
    exe = {pg.rel: cache/"exec"/f"{pg.flat}.{sha(RECIPE, STARTUP, pg.src.read_bytes())}.ipynb"
           for pg in site if pg.execute}
    failed = {pg.rel: cache/"logs"/f"{pg.flat}.failed.ipynb" for pg in site}
    todo = [pg for pg in site if pg.rel in exe and not exe[pg.rel].exists()]
    log(f"{len(site)} notebooks: executing {len(todo)}, {len(exe) - len(todo)} from the cache, "
        f"{len(site) - len(exe)} shown as written (skip_exec)")
    if todo: _preload([pg.src for pg in todo])
    times = _times(cache)
    tmp = Path(tempfile.mkdtemp(prefix="mlwb-docs-"))
    try:
        if todo:
            shutil.copytree(nbs, tmp/"nbs", ignore=shutil.ignore_patterns(".*", "__pycache__", "*.lock"))
            todo.sort(key=lambda pg: -times.get(pg.flat, pg.src.stat().st_size / 5e4))  # longest first
            jobs = [(pg.flat, execute_one, (tmp/"nbs"/pg.rel, exe[pg.rel], failed[pg.rel], flags, tmp)) for pg in todo]
            errors = run_jobs(jobs, workers, timeout, cache/"logs", times)
            (cache/"times.json").write_text(json.dumps(times, indent=1, sort_keys=True))
            failures.update({pg.rel: errors[pg.flat] for pg in todo if pg.flat in errors})
            if failures and not keep_going: return _failed(failures)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    t1 = time.monotonic()

    # 2. nbdev's processing
    def executed(pg: Page) -> Path:
        if not pg.execute: return pg.src
        return failed[pg.rel] if pg.rel in failures else exe[pg.rel]
    modidx = ROOT/"mlops_workbench"/"_modidx.py"  # the doc links: which names exist, on which page
    links = modidx.read_bytes() if modidx.exists() else b""
    proc = {pg.rel: cache/"proc"/f"{pg.flat}.{sha(RECIPE, links, executed(pg).read_bytes())}.ipynb" for pg in site}
    todo = [pg for pg in site if not proc[pg.rel].exists() or pg.rel in failures]
    log(f"nbdev's processing of {len(todo)} notebooks")
    if todo:
        _preload([executed(pg) for pg in todo])
        _patch_nbdev()
        jobs = [(f"proc-{pg.flat}", process_one, (pg.rel, executed(pg), proc[pg.rel], failed[pg.rel])) for pg in todo]
        errors = run_jobs(jobs, workers, timeout, cache/"logs")
        for pg in todo:
            if f"proc-{pg.flat}" in errors: failures[pg.rel] = errors[f"proc-{pg.flat}"]
        if failures and not keep_going: return _failed(failures)
    t2 = time.monotonic()

    # 3. clean, 4. Sphinx
    page_src = {pg.rel: proc[pg.rel] if proc[pg.rel].exists() else failed[pg.rel] for pg in site}
    missing = [pg.rel for pg in site if not page_src[pg.rel].exists()]
    if missing: return _failed({**failures, **{m: f"{m}: nothing to show" for m in missing}})
    manifest = write_sources(site, page_src, cache/"src")
    _prune(cache, set(exe.values()) | set(proc.values()))
    known = cache/"manifest.json"
    everything = not known.exists() or json.loads(known.read_text()) != manifest
    known.unlink(missing_ok=True)
    status = sphinx(cache/"src", out, cache, everything)
    if status == 0:
        known.write_text(json.dumps(manifest, indent=1))
        prune_site(out, {d for d, _, _ in manifest})
    t3 = time.monotonic()
    log(f"execute {t1 - t0:.1f} s, nbdev processing {t2 - t1:.1f} s, Sphinx {t3 - t2:.1f} s: {t3 - t0:.1f} s in all")
    if failures: return _failed(failures, built=status == 0)
    if status == 0: log(f"site: {out/'index.html'}")
    return status


def _failed(failures: dict[str, str], built: bool = False) -> int:
    for report in failures.values(): log(report)
    log(f"{len(failures)} notebook(s) failed: {', '.join(failures)}; " +
        ("the site was built with them as far as they got (--keep-going)" if built else "no site built"))
    return 1


def _times(cache: Path) -> dict[str, float]:
    "How long each notebook ran last time (to start the longest first: the workers then finish together)."
    try: return json.loads((cache/"times.json").read_text())
    except (OSError, ValueError): return {}


def _prune(cache: Path, keep: set[Path]) -> None:
    "Forget cached notebooks that no page uses any more (the older versions of edited notebooks)."
    for sub in ("exec", "proc"):
        for f in (cache/sub).glob("*"):
            if f not in keep: f.unlink()


def main(argv: list[str] | None = None) -> int:
    # Two notebooks run at once on two cores: one BLAS/OpenMP thread each, or their threads fight for the cores
    # (set before numpy is first imported; a value the caller set wins).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(var, "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: clean up (the workers, the temporary copy)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT/"_docs", help="where the site goes (default: _docs/)")
    ap.add_argument("--workers", type=int, default=2, help="notebooks executed at once (default: 2)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a notebook may run (default: 300)")
    ap.add_argument("--force", action="store_true", help="forget the cache: execute and process every notebook")
    ap.add_argument("--no-readme", dest="readme", action="store_false", help="leave README.md alone")
    ap.add_argument("--nbs", type=Path, default=NBS, help="the notebooks (default: nbs/)")
    ap.add_argument("--keep-going", action="store_true",
                    help="build the site even when notebooks fail (the failed pages as far as they got); still exit 1")
    a = ap.parse_args(argv)
    return build(a.out.resolve(), a.workers, a.timeout, a.force, a.readme, a.keep_going, a.nbs.resolve())


if __name__ == "__main__":
    sys.exit(main())

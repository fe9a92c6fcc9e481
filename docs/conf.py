"""Sphinx configuration of the docs site. Build it with `make docs` (.ci/docs.py), which writes the pages
(clean, executed notebooks) to _docs/.cache/src/ and runs Sphinx with this folder as configuration directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import plotly

project = "mlops_workbench"
author = "mlops_workbench developers"
copyright = "2026 onwards, mlops_workbench developers"
try:
    from mlops_workbench import __version__ as release
except Exception:
    release = ""

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["**.ipynb_checkpoints"]
templates_path = ["_templates"]

# The notebooks arrive executed: myst-nb only renders them.
nb_execution_mode = "off"
nb_render_markdown_format = "myst"          # show_doc's tables and headings
nb_ipywidgets_js = {}                        # never load the widget manager from a CDN: widgets become a note
nb_output_stderr = "show"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "html_admonition", "html_image"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]          # a show_doc heading inside an output may start at ###

html_theme = "pydata_sphinx_theme"
html_title = "mlops_workbench"
html_static_path = ["_static"]
html_css_files = ["mlwb.css"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_show_search_summary = False             # a summary fetch()es each result page, which file:// refuses
html_sidebars = {"**": ["lifecycle-nav.html"]}
html_theme_options = {
    "navbar_start": ["navbar-logo"],
    "navbar_center": [],
    "navbar_end": ["theme-switcher"],
    "navbar_persistent": ["search-button-field"],
    "secondary_sidebar_items": ["page-toc"],
    "show_toc_level": 2,
    "show_prev_next": True,
    "footer_start": ["copyright"],
    "footer_center": [],
    "footer_end": [],
    "navigation_with_keys": False,
    "collapse_navigation": False,
}


def _plotly_js(app, exception) -> None:
    "Ship plotly.js once, from the installed plotly: pages with a figure load it in their <head> (see layout.html)."
    if exception is not None or app.builder.format != "html": return
    src = Path(plotly.__file__).parent/"package_data"/"plotly.min.js"
    dest = Path(app.outdir)/"_static"/"plotly.min.js"
    if not dest.exists() or dest.stat().st_size != src.stat().st_size: shutil.copyfile(src, dest)


def _output_folder(app) -> None:
    "myst-nb copies each notebook to <outdir>/../jupyter_execute (the repository root): put them by the doctrees."
    config = app.env.mystnb_config
    app.env.mystnb_config = config.copy(output_folder=str(Path(app.doctreedir).parent/"jupyter_execute"))


def setup(app):
    app.connect("builder-inited", _output_folder, priority=900)  # after myst-nb's own handler
    app.connect("build-finished", _plotly_js)

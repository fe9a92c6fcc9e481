"""Notebook jobs: parameters refused before the kernel starts, failures kept, timeouts that kill the kernel, `mlwb run`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import mlwb
from mlops_workbench.errors import JobError
from mlops_workbench.jobs import run_notebook
from mlops_workbench.query import runs
from mlops_workbench.tracking import get_run


def make_notebook(path: Path, params: str, *cells: str) -> Path:
    """A notebook with a tagged parameters cell followed by code cells."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def test_wrong_parameters_are_refused_before_anything_runs(sqlite_ws, tmp_path):
    nb = make_notebook(tmp_path/"nb.ipynb", "n = 3\nname = 'x'", "open('ran', 'w').write('yes')")
    for params, message in [({"n": "3"}, "n = '3' is a str, expected int"), ({"n": 2.5}, "expected int"),
                            ({"typo": 1}, "unknown parameter 'typo'"), ({"name": 7}, "name = 7 is a int, expected str")]:
        with pytest.raises(JobError, match=message):
            run_notebook(nb, params)
    assert runs().empty and not (sqlite_ws.root/"ran").exists()
    with pytest.raises(JobError, match="timeout = -1"):
        run_notebook(nb, timeout=-1)


def test_a_notebook_without_parameters_cell_takes_none(sqlite_ws, tmp_path):
    nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path/"plain.ipynb")
    with pytest.raises(JobError, match="has no cell tagged 'parameters'"):
        run_notebook(tmp_path/"plain.ipynb", {"x": 2})
    assert run_notebook(tmp_path/"plain.ipynb").ok


def test_runs_inside_the_job_are_its_children(sqlite_ws, tmp_path):
    nb = make_notebook(tmp_path/"train.ipynb", "lr = 0.1",
                       "import mlops_workbench as mw\nwith mw.start_run(experiment='inner') as r:\n    r.log_metric('loss', lr)",
                       "from mlops_workbench.jobs import record\nrecord(inner_run=r.id)")
    result = run_notebook(nb, {"lr": 0.5})
    assert result.ok, result.error
    inner = get_run(result.records["inner_run"])
    assert inner.info["parent_id"] == result.run_id and inner.metrics == {"loss": 0.5}
    assert inner.info["source"] == str(nb.resolve())  # lineage points at the notebook, not at papermill


@pytest.mark.slow
def test_timeout_kills_the_kernel_and_marks_the_run(sqlite_ws, tmp_path):
    pid_file = tmp_path/"kernel.pid"
    nb = make_notebook(tmp_path/"hang.ipynb", f"pid_file = {str(pid_file)!r}",
                       "import os, time\nopen(pid_file, 'w').write(str(os.getpid()))", "time.sleep(600)")
    started = time.monotonic()
    result = run_notebook(nb, timeout=4)
    took = time.monotonic() - started
    assert result.status == "failed" and result.error.startswith("TimeoutError") and took < 40
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(kernel) and psutil.Process(kernel).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    run = get_run(result.run_id)
    assert run.info["status"] == "failed" and "TimeoutError" in run.info["error"]
    assert "notebook.ipynb" in set(run.artifacts["name"])  # what ran before the deadline is kept


def test_mlwb_run_converts_values_and_exits_1_on_failure(sqlite_ws, tmp_path):
    nb = make_notebook(tmp_path/"job.ipynb", "code = 'x'  # an id that looks like a number\nn = 1\nfail = False",
                       "from mlops_workbench.jobs import record\nrecord(code=code, twice=2 * n)\nassert not fail, 'asked to fail'")
    ok = mlwb("run", str(nb), "-p", "code", "007", "-p", "n", "21", "--json", cwd=sqlite_ws.root)
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["status"] == "finished" and info["records"] == {"code": "007", "twice": 42}
    bad = mlwb("run", str(nb), "-p", "fail", "true", cwd=sqlite_ws.root)
    assert bad.returncode == 1 and "AssertionError: asked to fail" in bad.stderr
    wrong = mlwb("run", str(nb), "-p", "n", "many", cwd=sqlite_ws.root)
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines() == ["error: job.ipynb: n = 'many' is not a int. The notebook's parameters are: "
                                                                          "code: str = 'x', n: int = 1, fail: bool = False"]
    dangling = mlwb("run", str(nb), "-p", "n", cwd=sqlite_ws.root)
    assert dangling.returncode != 0 and "expected '-p NAME VALUE' pairs" in dangling.stderr

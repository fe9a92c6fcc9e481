"""The job notebooks keep papermill's `parameters` tag through nbdev_clean, and papermill's values win."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOBS = sorted((ROOT/"nbs"/"jobs").glob("*.ipynb"))


def tags_of(nb_path: Path) -> list[list[str]]:
    """The tags of every cell of a notebook."""
    return [c.get("metadata", {}).get("tags", []) for c in json.loads(nb_path.read_text())["cells"]]


@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_every_job_has_one_parameters_cell(job):
    assert sum("parameters" in t for t in tags_of(job)) == 1


def test_nbdev_clean_keeps_the_parameters_tag(tmp_path):
    copy = tmp_path/"train.ipynb"
    shutil.copy(ROOT/"nbs"/"jobs"/"train.ipynb", copy)
    subprocess.run([str(BIN/"nbdev_clean"), "--fname", str(copy)], cwd=ROOT, check=True, capture_output=True)
    assert sum("parameters" in t for t in tags_of(copy)) == 1


def test_without_our_setting_nbdev_clean_would_strip_it():
    """The control: nbdev's default drops cell tags, so the setting in settings.ini is what keeps them."""
    from nbdev.clean import clean_nb
    nb = json.loads((ROOT/"nbs"/"jobs"/"train.ipynb").read_text())
    clean_nb(nb, allowed_cell_metadata_keys=[])
    assert not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


@pytest.mark.slow
def test_papermill_values_reach_the_run(tmp_path):
    """Run the train job as `make demo` does; the injected values, not the defaults, are what the run logs and registers."""
    ws = tmp_path/"ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWB_")}
    subprocess.run([str(BIN/"mlwb"), "init", str(ws)], check=True, capture_output=True, env=env)
    out = subprocess.run([str(BIN/"papermill"), "--no-progress-bar", str(ROOT/"nbs"/"jobs"/"train.ipynb"), str(tmp_path/"out.ipynb"),
                          "-p", "trials", "2", "-p", "model_name", "injected", "-p", "experiment", "papermill-test", "-p", "model", "logreg"],
                         cwd=ws, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    listing = subprocess.run([str(BIN/"mlwb"), "runs", "ls", "-e", "papermill-test", "--json"], cwd=ws, capture_output=True, text=True, env=env, check=True)
    [run] = [r for r in json.loads(listing.stdout) if r["kind"] == "run"]
    assert (run["params.model"], run["params.trials"], run["status"]) == ("logreg", 2, "finished")
    models = subprocess.run([str(BIN/"mlwb"), "models", "ls", "--json"], cwd=ws, capture_output=True, text=True, env=env, check=True)
    assert [m["name"] for m in json.loads(models.stdout)] == ["injected"]


@pytest.mark.slow
def test_the_job_notebooks_run_with_no_parameters(sqlite_ws):
    """train, evaluate and monitor each run with their defaults on a fresh workspace, in the order the loop runs them."""
    from mlops_workbench.jobs import run_notebook
    from mlops_workbench.registry import aliases
    train = run_notebook(ROOT/"nbs"/"jobs"/"train.ipynb").raise_if_failed()
    assert train.records["model_version"] == 1 and train.records["gate_passed"] is True
    evaluate = run_notebook(ROOT/"nbs"/"jobs"/"evaluate.ipynb").raise_if_failed()
    assert evaluate.records["promoted"] is True and aliases("churn") == {"production": 1}
    monitor = run_notebook(ROOT/"nbs"/"jobs"/"monitor.ipynb").raise_if_failed()
    assert monitor.records["n_rows"] == 1000 and (sqlite_ws.root/"reports"/"monitor.html").exists()

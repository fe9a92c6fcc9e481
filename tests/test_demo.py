"""`make demo`, the README's first command, as an end-to-end test: the whole continuous-training loop in a fresh workspace."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import clean_env
from mlops_workbench.alerts import alerts
from mlops_workbench.registry import alias_history, aliases
from mlops_workbench.scheduler import history
from mlops_workbench.tracking import get_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_demo_closes_the_loop(tmp_path):
    demo = tmp_path/"demo"
    out = subprocess.run(["make", "demo", f"DEMO={demo}"], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the promoted version: trained, promoted, then replaced by the retrained challenger through the gate
    assert aliases("churn", workspace=demo) == {"production": 2}
    moves = alias_history("churn", "production", workspace=demo)
    assert list(zip(moves["from_version"].astype("Int64"), moves["to_version"])) == [(pd.NA, 1), (1, 2)]
    assert set(moves["gate"]) == {"passed"}
    # the alert the drifted traffic fired, and the jobs it set off
    fired = alerts(workspace=demo)
    assert list(fired["rule"]) == ["drift_high"] and fired["value"].iloc[0] > 0.3
    jobs = history(workspace=demo)
    assert sorted(zip(jobs["job"], jobs["trigger"], jobs["status"])) == [
        ("evaluate", "after", "finished"), ("monitor", "manual", "finished"), ("retrain", "alert", "finished"), ("train", "manual", "finished")]
    # the running server answered with the new version, and the reports exist
    [loop] = list((demo/"jobs"/"demo").glob("*.ipynb"))
    records = json.loads(get_run(loop.stem.split("-")[-1], workspace=demo).load_artifact("records.json"))
    assert (records["production_version"], records["served_version"], records["alerts"]) == (2, 2, ["drift_high"])
    for report in ("churn-train-profile.html", "evaluate.html", "monitor.html"):
        assert (demo/"reports"/report).stat().st_size > 10_000, report
    assert "churn@production and how it moved" in out.stdout and "drift_high" in out.stdout
    again = subprocess.run(["make", "demo", f"DEMO={demo}"], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "exists from an earlier demo" in again.stderr  # never runs over an earlier demo's workspace

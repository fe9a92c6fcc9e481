"""monitor.run against a registered model, alert rules, history and `mlwb monitor`, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import re

import pytest
from sklearn.linear_model import LogisticRegression

from conftest import mlwb
from mlops_workbench.alerts import alerts
from mlops_workbench.errors import MonitorError, NotFound
from mlops_workbench.features import build_pipeline, suggest_spec
from mlops_workbench.monitor import history, make_drift_data, run
from mlops_workbench.registry import promote, register


@pytest.fixture
def production(ws):
    """A churn model registered from generated data and promoted to production, with alert rules in mlwb.toml."""
    with ws.config_path.open("a") as f: f.write('\n[alerts]\ndrift_high = "drift_share > 0.25"\nbalance_missing = "missing_rate.balance > 0.2"\n')
    train = make_drift_data(3000, seed=1)
    X, y = train.drop(columns="churn"), train["churn"]
    model = build_pipeline(suggest_spec(train, target="churn"), LogisticRegression(max_iter=500)).fit(X, y)
    v = register(model, "churn", X=X, y=y, metrics={"roc_auc": 0.66}, workspace=ws)
    promote("churn", v.version, "production", workspace=ws)
    return ws


def test_drift_fires_once_and_history_keeps_every_window(production):
    ws = production
    calm = run("churn@production", data=make_drift_data(2000, seed=2), target="churn", workspace=ws)
    assert calm.alerts == [] and calm.drift.drifted_columns == [] and set(calm.metrics) >= {"roc_auc", "accuracy"}
    moved = make_drift_data(2000, shift={"income": 1.0, "age": 1.0, "plan": 0.5}, seed=3)
    first = run("churn@production", data=moved, target="churn", workspace=ws)
    again = run("churn@production", data=moved, workspace=ws)
    assert [a["rule"] for a in first.alerts] == ["drift_high"] and again.alerts == []
    table = alerts(workspace=ws)
    assert list(zip(table["rule"], table["status"], table["times_seen"])) == [("drift_high", "firing", 2)]
    holes = moved.copy()
    holes.loc[holes.index[:800], "balance"] = None  # 40 % missing instead of 5 %
    fired = run("churn@production", data=holes, workspace=ws).alerts
    assert [a["rule"] for a in fired] == ["balance_missing"]
    run("churn@production", data=make_drift_data(2000, seed=4), workspace=ws)  # calm again: both resolve
    assert set(alerts(workspace=ws)["status"]) == {"resolved"}
    h = history("churn", workspace=ws)
    assert len(h.table) == 5 and [s > 0.25 for s in h.table["drift_share"]] == [False, True, True, True, False]
    assert h.table["metrics"].iloc[0]["roc_auc"] == calm.metrics["roc_auc"] and h.table["metrics"].iloc[2] == {}
    assert len(h.figure().data) >= 2


def test_monitor_errors_are_clear(production):
    ws = production
    with pytest.raises(MonitorError, match="target column 'label' is not in the data"):
        run("churn@production", data=make_drift_data(100, seed=5), target="label", workspace=ws)
    with pytest.raises(MonitorError, match="no logged predictions of churn"):
        run("churn@production", workspace=ws)
    with pytest.raises(NotFound, match="no alias 'staging'"):
        run("churn@staging", data=make_drift_data(100, seed=5), workspace=ws)
    with pytest.raises(MonitorError, match="must be a positive duration"):
        run("churn@production", window="soon", workspace=ws)


def test_mlwb_monitor(production, tmp_path):
    ws = production
    make_drift_data(1500, shift={"income": 1.5, "age": 1.5, "plan": 0.5}, seed=6).to_csv(tmp_path/"batch.csv", index=False)
    out = mlwb("monitor", "churn@production", "--data", str(tmp_path/"batch.csv"), "--target", "churn", "--out", str(tmp_path/"m.html"), "--json",
               cwd=ws.root)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["version"], info["n_rows"], info["n_labelled"]) == (1, 1500, 1500)
    assert {"age", "income"} <= set(info["drifted_columns"]) and info["alerts"] == ["drift_high"]
    page = (tmp_path/"m.html").read_text()
    assert "Monitoring churn@production" in page and not re.search(r"<script[^>]+src=[\"']https?:", page)  # plotly.js inlined, no CDN
    bad = mlwb("monitor", "churn@production", "--window", "1d", cwd=ws.root)
    assert bad.returncode == 1 and bad.stderr.startswith("error: no logged predictions of churn")

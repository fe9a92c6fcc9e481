"""The continuous-training loop, closed: train and promote, serve, drifted traffic, a drift alert, retraining triggered by it,
the challenger promoted through its gate, and the running server answering with the new version."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import MLWB, clean_env
from mlops_workbench.alerts import alerts
from mlops_workbench.monitor import make_drift_data
from mlops_workbench.registry import alias_history, aliases
from mlops_workbench.scheduler import history, run_job, tick

JOBS = Path(__file__).resolve().parent.parent/"nbs"/"jobs"
SHIFT = {"income": 1.5, "age": 1.5, "plan": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r: return json.loads(r.read())


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value: return value
        except OSError: pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_loop_closes(sqlite_ws):
    ws = sqlite_ws
    (ws.root/"data").mkdir()
    make_drift_data(3000, shift=SHIFT, seed=11).to_csv(ws.root/"data"/"recent.csv", index=False)  # labelled data after the shift
    make_drift_data(1500, shift=SHIFT, seed=12).to_csv(ws.root/"data"/"holdout.csv", index=False)
    with ws.config_path.open("a") as f:
        f.write(f'''
[alerts]
drift_high = "drift_share > 0.3"

[jobs.train]
notebook = "{JOBS/'train.ipynb'}"
params = {{ trials = 3, gate = "roc_auc >= 0.55" }}

[jobs.evaluate]
notebook = "{JOBS/'evaluate.ipynb'}"
after = ["train"]
params = {{ policy = "roc_auc >= 0.55" }}

[jobs.monitor]
notebook = "{JOBS/'monitor.ipynb'}"
params = {{ window = "1h" }}

[jobs.retrain]
notebook = "{JOBS/'retrain.ipynb'}"
on_alert = ["drift_high"]
params = {{ data = "data/recent.csv", holdout = "data/holdout.csv", trials = 3, policy = "roc_auc >= 0.55; roc_auc >= champion - 0.02" }}
''')
    assert tick(ws.root) == []  # the scheduler sees the jobs: baselines, nothing due

    # 1. train, then the evaluate job chained after it promotes the first model
    assert run_job("train", workspace=ws.root)["status"] == "finished"
    assert [(r["job"], r["trigger"], r["status"]) for r in tick(ws.root)] == [("evaluate", "after", "finished")]
    assert aliases("churn", workspace=ws.root) == {"production": 1}

    # 2. the server serves it
    port = free_port()
    server = subprocess.Popen([str(MLWB), "serve", "churn@production", "--port", str(port), "--reload-interval", "0.5"], cwd=ws.root,
                              env=clean_env(MLWB_HOME=str(ws.root)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: call(port, "/health").get("version") == 1, 60, "the server to serve version 1")

        # 3. drifted traffic arrives, and its labels later
        traffic = make_drift_data(800, shift=SHIFT, seed=13)
        answers = [call(port, "/predict", {"records": json.loads(chunk.drop(columns="churn").to_json(orient="records"))})
                   for chunk in (traffic.iloc[i:i + 200] for i in range(0, len(traffic), 200))]
        assert {a["version"] for a in answers} == {1}
        labels = pd.DataFrame({"request_id": [f"{a['request_id']}:{i}" for a in answers for i in range(len(a["predictions"]))],
                               "label": traffic["churn"].to_numpy()})
        labels.to_csv(ws.root/"labels.csv", index=False)
        fed = subprocess.run([str(MLWB), "feedback", "labels.csv"], cwd=ws.root, env=clean_env(MLWB_HOME=str(ws.root)), capture_output=True, text=True)
        assert fed.returncode == 0, fed.stderr
        time.sleep(2)  # the server's prediction log flushes every second

        # 4. the monitor job sees the drift in the logged traffic and fires the alert
        monitored = run_job("monitor", workspace=ws.root)
        assert monitored["status"] == "finished", monitored["error"]
        fired = alerts(workspace=ws.root)
        assert list(fired["rule"]) == ["drift_high"] and list(fired["status"]) == ["firing"] and fired["value"].iloc[0] > 0.3

        # 5. the alert triggers retraining, whose challenger passes the gate and is promoted
        ran = tick(ws.root)
        assert [(r["job"], r["trigger"], r["status"]) for r in ran] == [("retrain", "alert", "finished")], ran
        assert aliases("churn", workspace=ws.root) == {"production": 2}
        moves = alias_history("churn", "production", workspace=ws.root)
        assert list(zip(moves["from_version"].astype("Int64"), moves["to_version"])) == [(pd.NA, 1), (1, 2)]

        # 6. the running server answers with the new version
        wait_until(lambda: call(port, "/health").get("version") == 2, 30, "the server to switch to version 2")
        answer = call(port, "/predict", {"records": json.loads(traffic.drop(columns="churn").head(3).to_json(orient="records"))})
        assert (answer["model"], answer["version"], len(answer["predictions"])) == ("churn", 2, 3)
    finally:
        server.terminate()
        server.wait(timeout=30)
    jobs = history(workspace=ws.root)
    assert sorted(zip(jobs["job"], jobs["trigger"], jobs["status"])) == [
        ("evaluate", "after", "finished"), ("monitor", "manual", "finished"), ("retrain", "alert", "finished"), ("train", "manual", "finished")]

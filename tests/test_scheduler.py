"""The scheduler: racing schedulers run each due job once, a killed job is detected and retried, the CLI, SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import sqlalchemy as sa

from conftest import MLWB, clean_env, mlwb, set_tracking
from mlops_workbench import store as S
from mlops_workbench.scheduler import history, tick


def write_job(root: Path, name: str, body: str, params: str = "marker_dir = ''") -> None:
    """A job notebook `name.ipynb` in the workspace."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, root/f"{name}.ipynb")


MARK = "import os, uuid\nopen(os.path.join(marker_dir, '{name}-' + uuid.uuid4().hex), 'w').close()"


def add_jobs(ws, text: str) -> None:
    with ws.config_path.open("a") as f: f.write("\n" + text)


def rewind_schedules(ws, seconds: float) -> None:
    """Move every job's schedule cursor into the past, as if the scheduler had been away."""
    with ws.open_store().write() as conn:
        conn.execute(S.job_state.update().values(schedule_cursor=S.job_state.c.schedule_cursor - seconds))


@pytest.mark.slow
def test_two_schedulers_racing_run_every_due_job_once(ws, tmp_path):
    marks = tmp_path/"marks"; marks.mkdir()
    for name in ("a", "b", "c", "d"): write_job(ws.root, name, MARK.format(name=name))
    add_jobs(ws, "".join(f'[jobs.{n}]\nnotebook = "{n}.ipynb"\nschedule = "* * * * *"\nparams = {{ marker_dir = "{marks}" }}\n' for n in "abc")
             + f'[jobs.d]\nnotebook = "d.ipynb"\nafter = ["a"]\nparams = {{ marker_dir = "{marks}" }}\n')
    assert tick(ws.root, run=False) == []  # first sight: cursors start now
    rewind_schedules(ws, 300)  # five missed minutes; catch_up = "latest" makes it one run each
    env = clean_env(MLWB_HOME=str(ws.root))
    procs = [subprocess.Popen([str(MLWB), "scheduler", "tick", "--json"], cwd=ws.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ran = [r for out, _ in outs for r in json.loads(out)]
    assert sorted(r["job"] for r in ran) == ["a", "b", "c", "d"]  # split between the two, none twice
    assert sorted(p.name.split("-")[0] for p in marks.iterdir()) == ["a", "b", "c", "d"]
    h = history(workspace=ws.root)
    assert sorted(h["job"]) == ["a", "b", "c", "d"] and set(h["status"]) == {"finished"}
    assert h.set_index("job").loc["d", "trigger"] == "after"


@pytest.mark.slow
def test_a_killed_job_is_detected_and_retried(sqlite_ws, tmp_path):
    ws = sqlite_ws
    set_tracking(ws, heartbeat_interval=0.5, heartbeat_timeout=3.0, flush_interval=0.5)
    first = tmp_path/"first-attempt.pid"
    write_job(ws.root, "slow", "import os, time\nif not os.path.exists(pid_file):\n    open(pid_file, 'w').write(str(os.getpid()))\n    time.sleep(600)",
              params=f"pid_file = {str(first)!r}")
    add_jobs(ws, '[jobs.slow]\nnotebook = "slow.ipynb"\nretries = 1\nretry_backoff = 0\n')
    proc = subprocess.Popen([str(MLWB), "jobs", "run", "slow"], cwd=ws.root, env=clean_env(MLWB_HOME=str(ws.root)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline: time.sleep(0.2)
    assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "the job never started"
    kernel = int(first.read_text())
    proc.send_signal(signal.SIGKILL); proc.wait()
    time.sleep(4)  # longer than heartbeat_timeout
    ran = tick(ws.root)
    assert [(r["job"], r["trigger"], r["attempt"], r["status"]) for r in ran] == [("slow", "retry", 2, "finished")]
    h = history("slow", workspace=ws.root)
    lost = h[h["attempt"] == 1].iloc[0]
    assert lost["status"] == "failed" and lost["error"].startswith("lost: no heartbeat from")
    gone = time.monotonic() + 15  # the killed scheduler's notebook died with it
    while psutil.pid_exists(kernel) and psutil.Process(kernel).status() != psutil.STATUS_ZOMBIE and time.monotonic() < gone: time.sleep(0.2)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


def test_jobs_cli(sqlite_ws, tmp_path):
    ws = sqlite_ws
    write_job(ws.root, "hello", "from mlops_workbench.jobs import record\nassert who != 'nobody', 'no one to greet'\nrecord(greeting='hi ' + who)",
              params="who = 'world'")
    add_jobs(ws, '[jobs.hello]\nnotebook = "hello.ipynb"\nschedule = "30 6 * * 1-5"\ntimezone = "Europe/Paris"\n')
    ls = mlwb("jobs", "ls", "--json", cwd=ws.root)
    assert ls.returncode == 0, ls.stderr
    [job] = json.loads(ls.stdout)
    assert (job["job"], job["schedule"], job["enabled"], job["last_status"]) == ("hello", "30 6 * * 1-5", True, None)
    ok = mlwb("jobs", "run", "hello", "-p", "who", "you", "--json", cwd=ws.root)
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "finished", ok.stderr
    bad = mlwb("jobs", "run", "hello", "-p", "who", "nobody", cwd=ws.root)
    assert bad.returncode == 1 and "AssertionError: no one to greet" in bad.stdout
    hist = json.loads(mlwb("jobs", "history", "hello", "--json", cwd=ws.root).stdout)
    assert [(h["trigger"], h["status"]) for h in hist] == [("manual", "failed"), ("manual", "finished")]
    assert mlwb("jobs", "disable", "hello", cwd=ws.root).stdout.strip() == "job hello disabled"
    assert json.loads(mlwb("jobs", "ls", "--json", cwd=ws.root).stdout)[0]["enabled"] is False
    assert mlwb("scheduler", "tick", cwd=ws.root).stdout.strip() == "nothing was due"
    missing = mlwb("jobs", "run", "nope", cwd=ws.root)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no job 'nope'")


@pytest.mark.parametrize("text, message", [
    ('[jobs.t]\nnotebook = "t.ipynb"\nschedule = "0 25 * * *"\n', "[jobs.t] schedule = '0 25 * * *' is not a valid cron expression"),
    ('[jobs.t]\nnotebook = "t.ipynb"\non_commit = true\n', "[jobs.t] unknown setting 'on_commit'"),
    ('[jobs.t]\nnotebook = "t.ipynb"\ncatch_up = "sometimes"\n', "[jobs.t] catch_up = 'sometimes'"),
])
def test_an_invalid_job_definition_is_refused_naming_the_job(sqlite_ws, text, message):
    write_job(sqlite_ws.root, "t", "pass")
    add_jobs(sqlite_ws, text)
    for args in (["jobs", "ls"], ["scheduler", "tick"]):
        out = mlwb(*args, cwd=sqlite_ws.root)
        assert out.returncode == 1 and out.stderr.startswith("error: " + message), out.stderr


@pytest.mark.slow
def test_new_data_and_code_change_triggers(sqlite_ws, tmp_path):
    ws = sqlite_ws
    marks = tmp_path/"marks"; marks.mkdir()
    write_job(ws.root, "on_data", MARK.format(name="data"))
    (ws.root/"data").mkdir()
    (ws.root/"data"/"day1.csv").write_text("a\n1\n")
    add_jobs(ws, f'[jobs.on_data]\nnotebook = "on_data.ipynb"\non_new_data = ["data/*.csv"]\non_code_change = true\nparams = {{ marker_dir = "{marks}" }}\n')
    assert tick(ws.root) == []  # baseline
    (ws.root/"data"/"day2.csv").write_text("a\n2\n")
    assert [r["trigger"] for r in tick(ws.root)] == ["new_data"]
    assert tick(ws.root) == []  # nothing new
    write_job(ws.root, "on_data", MARK.format(name="data") + "\n# a change to the code")
    assert [r["trigger"] for r in tick(ws.root)] == ["code_change"]
    assert len(list(marks.iterdir())) == 2


@pytest.mark.slow
def test_scheduler_run_stops_on_sigterm(sqlite_ws):
    proc = subprocess.Popen([str(MLWB), "scheduler", "run", "--interval", "0.5"], cwd=sqlite_ws.root,
                            env=clean_env(MLWB_HOME=str(sqlite_ws.root)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped" in err


def test_an_alert_triggers_its_job_once_per_firing(sqlite_ws, tmp_path):
    from mlops_workbench.alerts import evaluate
    ws = sqlite_ws
    marks = tmp_path/"marks"; marks.mkdir()
    write_job(ws.root, "retrain", MARK.format(name="retrain"))
    add_jobs(ws, f'[alerts]\ndrift_high = "drift_share > 0.3"\n[jobs.retrain]\nnotebook = "retrain.ipynb"\non_alert = ["drift_high"]\n'
                 f'params = {{ marker_dir = "{marks}" }}\n')
    assert tick(ws.root) == []
    assert [a["rule"] for a in evaluate({"drift_share": 0.5}, "cancer@production")] == ["drift_high"]
    assert [(r["job"], r["trigger"], r["status"]) for r in tick(ws.root)] == [("retrain", "alert", "finished")]
    assert evaluate({"drift_share": 0.6}, "cancer@production") == []  # still firing: deduplicated
    assert tick(ws.root) == [] and len(list(marks.iterdir())) == 1
    alerts_out = mlwb("alerts", "ls", "--json", cwd=ws.root)
    [alert] = json.loads(alerts_out.stdout)
    assert (alert["rule"], alert["status"], alert["times_seen"]) == ("drift_high", "firing", 2)
    assert mlwb("alerts", "ack", str(alert["id"]), "-m", "retrained", cwd=ws.root).returncode == 0
    again = mlwb("alerts", "ack", str(alert["id"]), cwd=ws.root)
    assert again.returncode == 1 and "is acknowledged, not firing" in again.stderr

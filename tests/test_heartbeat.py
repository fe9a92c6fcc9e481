"""A run whose process dies is reported as killed once its heartbeat is older than the timeout; a live run never is."""
from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest

from conftest import PYTHON, clean_env, forget_stores, mlwb, set_tracking
from mlops_workbench.config import init_workspace, use_workspace
from mlops_workbench.query import runs
from mlops_workbench.tracking import get_run

pytestmark = pytest.mark.slow

INTERVAL, TIMEOUT, FLUSH = 0.2, 1.5, 0.1

CHILD = textwrap.dedent("""
    import sys, time
    from mlops_workbench.tracking import start_run
    run = start_run("hb", name=sys.argv[2], workspace=sys.argv[1])
    run.log_metric("m", 1.5)
    run.flush()
    print(run.id, flush=True)
    time.sleep(float(sys.argv[3]))
""")


def fast_heartbeat(ws):
    "The workspace with a fast heartbeat: interval 0.2 s, timeout 1.5 s, flush every 0.1 s (pinned again)."
    set_tracking(ws, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT, flush_interval=FLUSH)
    reloaded = use_workspace(ws.root)
    assert reloaded.tracking == {"heartbeat_interval": INTERVAL, "heartbeat_timeout": TIMEOUT, "flush_interval": FLUSH}
    return reloaded


@pytest.fixture
def hb_ws(ws): return fast_heartbeat(ws)


@pytest.fixture
def hb_sqlite_ws(sqlite_ws): return fast_heartbeat(sqlite_ws)


@pytest.fixture
def child(tmp_path):
    "Start a process with a running run in a workspace; returns (process, run id). Killed at the end."
    procs = []
    def start(ws, name: str, sleep: float = 60):
        p = subprocess.Popen([str(PYTHON), "-c", CHILD, str(ws.root), name, str(sleep)], cwd=tmp_path, env=clean_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stdout.readline().strip()
        assert len(line) == 32, (line, p.poll(), p.stderr.read() if p.poll() is not None else "")
        return p, line
    yield start
    for p in procs:
        if p.poll() is None: p.kill()
        p.wait()


def test_killed_process_is_reported_killed_after_the_timeout(hb_ws, child):
    p, run_id = child(hb_ws, "doomed")
    p.kill()  # SIGKILL: no atexit, no chance to end the run
    p.wait()
    killed_at = time.time()
    info = get_run(run_id).info
    assert info["status"] == "running" and info["error"] is None and info["end_time"] is None
    last_beat = info["heartbeat_at"]
    assert killed_at - last_beat < TIMEOUT  # the check above really happened before the timeout

    seen, deadline = [], killed_at + 5
    while time.time() < deadline:
        t = time.time()
        seen.append((t, get_run(run_id).info["status"]))
        if seen[-1][1] == "killed": break
        time.sleep(0.1)
    assert seen[-1][1] == "killed", seen
    assert all(s == "running" for _, s in seen[:-1])
    assert seen[-1][0] >= last_beat + TIMEOUT  # not before the timeout
    info = get_run(run_id).info
    assert info["status"] == "killed"
    assert "heartbeat" in info["error"] and f"{TIMEOUT:g} s" in info["error"]
    assert info["end_time"] == last_beat
    assert get_run(run_id).metrics == {"m": 1.5}  # what it flushed before dying is kept


def test_killed_run_shows_killed_in_every_view(hb_sqlite_ws, child, tmp_path):
    "Whichever view looks first after the timeout (`mlwb runs ls --json` or `runs()`) marks and reports it killed."
    other = fast_heartbeat(init_workspace(tmp_path/"other"))
    use_workspace(hb_sqlite_ws)
    (p1, id1), (p2, id2) = child(hb_sqlite_ws, "doomed-1"), child(other, "doomed-2")
    for p in (p1, p2): p.kill()
    for p in (p1, p2): p.wait()
    time.sleep(TIMEOUT + 0.3)
    # first workspace: the CLI looks first, then runs()
    out = mlwb("runs", "ls", "--json", cwd=hb_sqlite_ws.root)
    assert out.returncode == 0, out.stderr
    assert [(r["run_id"], r["name"], r["status"]) for r in json.loads(out.stdout)] == [(id1, "doomed-1", "killed")]
    assert runs(workspace=hb_sqlite_ws).loc[id1, "status"] == "killed"
    # second workspace: runs() looks first, then the CLI
    df = runs(workspace=other)
    assert list(df.index) == [id2] and df.loc[id2, "status"] == "killed"
    out = mlwb("runs", "ls", "--json", cwd=other.root)
    assert [(r["run_id"], r["status"]) for r in json.loads(out.stdout)] == [(id2, "killed")]
    shown = mlwb("runs", "show", id1[:8], cwd=hb_sqlite_ws.root)
    assert shown.returncode == 0 and "status      killed" in shown.stdout and "heartbeat" in shown.stdout
    forget_stores(lambda url: str(url.database).startswith(str(other.root)))


def test_live_run_is_never_marked_killed(hb_ws, child):
    p, run_id = child(hb_ws, "alive", sleep=30)
    beats, end = [], time.time() + 2 * TIMEOUT  # well past the timeout
    while time.time() < end:
        info = get_run(run_id).info
        assert info["status"] == "running", info["error"]
        beats.append(info["heartbeat_at"])
        time.sleep(0.1)
    assert runs().loc[run_id, "status"] == "running"
    out = mlwb("runs", "ls", "--json", cwd=hb_ws.root)
    assert [r["status"] for r in json.loads(out.stdout)] == ["running"]
    assert p.poll() is None
    assert beats[-1] - beats[0] >= 2 * TIMEOUT - 4 * INTERVAL  # it kept beating
    assert max(b - a for a, b in zip(beats, beats[1:])) < TIMEOUT


EXITING = textwrap.dedent("""
    import sys
    from mlops_workbench.tracking import start_run
    run = start_run("exit", name=sys.argv[2], workspace=sys.argv[1])  # never ended by the script
    run.log_metric("m", 2.5)
    print(run.id, flush=True)
    if sys.argv[2] == "crash": raise ValueError("crashed on purpose")
""")


@pytest.mark.parametrize("how", ["normal", "crash"])
def test_process_exit_ends_open_runs(sqlite_ws, tmp_path, how):
    "A script that never ends its run: a normal exit finishes it, an uncaught exception fails it (buffered points kept)."
    res = subprocess.run([str(PYTHON), "-c", EXITING, str(sqlite_ws.root), how], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=60)
    run_id = res.stdout.strip()
    info = get_run(run_id).info
    if how == "normal":
        assert (res.returncode, res.stderr) == (0, "")
        assert (info["status"], info["error"]) == ("finished", None)
    else:
        assert res.returncode == 1 and "ValueError: crashed on purpose" in res.stderr
        assert info["status"] == "failed" and "ValueError: crashed on purpose" in info["error"]
    assert info["end_time"] is not None
    assert get_run(run_id).metrics == {"m": 2.5}

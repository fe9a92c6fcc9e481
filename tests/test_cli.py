"""The `mlwb` command: as a user runs it (a subprocess in the workspace folder, no MLWB_* variables), and
in-process through `mlops_workbench.cli.main` where many variants are checked (same code, no start-up cost)."""
from __future__ import annotations

import json
import math
import subprocess
import tomllib

import pytest

from conftest import clean_env, mlwb
from mlops_workbench.cli import main
from mlops_workbench.config import load_workspace, use_workspace
from mlops_workbench.tracking import start_run


def ok(res) -> str:
    assert (res.returncode, res.stderr) == (0, ""), (res.returncode, res.stderr)
    return res.stdout


@pytest.fixture
def cli(capsys, monkeypatch):
    "`mlwb ARGS` in this process, in folder `cwd`, with no workspace pinned: a CompletedProcess."
    def run(*args: str, cwd) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        use_workspace(None)
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as e: main(list(args))
        finally:
            use_workspace(None)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, out.out, out.err)
    return run


def test_init(tmp_path, cli, no_mlwb_env):
    out = ok(mlwb("init", "ws", cwd=tmp_path))
    root = (tmp_path/"ws").resolve()
    assert out.splitlines()[0] == f"Workspace ready in {root}"
    assert (root/"mlwb.toml").is_file() and (root/".mlwb"/"mlwb.db").is_file() and (root/".mlwb"/"artifacts").is_dir()
    cfg = tomllib.loads((root/"mlwb.toml").read_text())
    assert cfg["tracking"] == {"heartbeat_interval": 5.0, "heartbeat_timeout": 60.0, "flush_interval": 1.0}
    assert "url" not in cfg["store"]
    # again: the same workspace, nothing changes
    before = (root/"mlwb.toml").read_text()
    info = json.loads(ok(mlwb("init", str(root), "--json", cwd=tmp_path)))
    assert info == {"workspace": str(root), "config": str(root/"mlwb.toml"),
                    "store": f"sqlite:///{root}/.mlwb/mlwb.db", "artifacts": str(root/".mlwb"/"artifacts")}
    assert (root/"mlwb.toml").read_text() == before
    assert json.loads(ok(cli("runs", "ls", "--json", cwd=root))) == []
    assert ok(cli("runs", "ls", cwd=root)).strip() == "no runs"
    assert ok(cli("runs", "ls", "-q", cwd=root)) == ""


def test_init_in_the_current_folder_and_explicit_sqlite_url(tmp_path):
    ok(mlwb("init", cwd=tmp_path))
    assert (tmp_path/"mlwb.toml").is_file()
    db = tmp_path/"elsewhere.db"
    ok(mlwb("init", "other", "--store-url", f"sqlite:///{db}", cwd=tmp_path))
    assert load_workspace(tmp_path/"other").store_url == f"sqlite:///{db}"
    assert db.is_file()


@pytest.fixture
def two_runs(ws):
    with start_run("cli", name="alpha", params={"lr": 0.1, "model": "rf", "layers": [64, 32]}, tags={"team": "x"}) as a:
        a.log_metric("auc", 0.875)
        a.log_metric("loss", 0.5)
        a.log_metric("loss", 0.123456789)
    with start_run("cli", name="beta", params={"lr": 0.01, "model": "lr"}) as b:
        b.log_metric("auc", 0.9)
        b.log_metric("nan", float("nan"))
        b.log_metric("inf", float("inf"))
    return a, b


def test_runs_ls_json(ws, two_runs):
    a, b = two_runs
    recs = json.loads(ok(mlwb("runs", "ls", "--json", cwd=ws.root)))
    assert [r["run_id"] for r in recs] == [b.id, a.id]  # newest first
    ra, rb = recs[1], recs[0]
    assert (ra["name"], ra["experiment"], ra["status"], ra["kind"]) == ("alpha", "cli", "finished", "run")
    assert (ra["params.lr"], ra["params.model"], ra["params.layers"]) == (0.1, "rf", "[64, 32]")
    assert (ra["metrics.auc"], ra["metrics.loss"], ra["tags.team"]) == (0.875, 0.123456789, "x")
    assert ra["metrics.nan"] is None and ra["metrics.inf"] is None  # no such metric
    assert (rb["name"], rb["params.lr"], rb["params.model"], rb["metrics.auc"]) == ("beta", 0.01, "lr", 0.9)
    assert rb["metrics.loss"] is None and rb["params.layers"] is None and rb["tags.team"] is None
    assert rb["metrics.nan"] is None and rb["metrics.inf"] is None  # NaN and inf have no JSON spelling: null
    assert math.isclose(ra["duration_s"], a.info["end_time"] - a.info["start_time"], abs_tol=1e-3)


def test_runs_ls_filter_order_limit(ws, two_runs, cli):
    a, b = two_runs
    run = lambda *args: json.loads(ok(cli("runs", "ls", "--json", *args, cwd=ws.root)))
    assert [r["name"] for r in run("--where", "params.model = 'rf'")] == ["alpha"]
    assert [r["name"] for r in run("-w", "metrics.auc > 0.88")] == ["beta"]
    assert [r["name"] for r in run("--order-by", "metrics.auc")] == ["alpha", "beta"]
    assert [r["name"] for r in run("-o", "params.lr desc", "-n", "1")] == ["alpha"]
    assert [r["name"] for r in run("-e", "nope")] == []
    ids = ok(cli("runs", "ls", "-q", cwd=ws.root)).split()
    assert ids == [b.id, a.id]


def test_runs_ls_text(ws, two_runs, cli):
    a, b = two_runs
    lines = ok(cli("runs", "ls", cwd=ws.root)).splitlines()
    assert lines[0].split() == ["experiment", "name", "status", "start_time", "duration_s", "metrics.auc", "metrics.inf",
                                "metrics.loss", "metrics.nan"]
    assert lines[1].split() == ["run_id"]
    rows = {l.split()[0]: l.split() for l in lines[2:]}
    assert set(rows) == {a.id[:12], b.id[:12]}
    ra, rb = rows[a.id[:12]], rows[b.id[:12]]
    assert ra[1:4] == ["cli", "alpha", "finished"] and ra[-4:] == ["0.875", "-", "0.1235", "-"]
    assert rb[1:4] == ["cli", "beta", "finished"] and rb[-4:] == ["0.9", "inf", "-", "-"]  # NaN shows as "-" like a missing value
    wide = ok(cli("runs", "ls", "--all", cwd=ws.root))
    assert "params.model" in wide and "tags.team" in wide


def test_runs_show(ws, two_runs, cli):
    a, b = two_runs
    d = json.loads(ok(cli("runs", "show", a.id[:8], "--json", cwd=ws.root)))
    assert (d["id"], d["name"], d["experiment"], d["status"], d["error"]) == (a.id, "alpha", "cli", "finished", None)
    assert d["params"] == {"layers": [64, 32], "lr": 0.1, "model": "rf"}
    assert d["metrics"] == {"auc": 0.875, "loss": 0.123456789}
    assert d["tags"] == {"team": "x"}
    assert d["artifacts"] == [] and d["inputs"] == []
    db = json.loads(ok(cli("runs", "show", b.id, "--json", cwd=ws.root)))
    assert db["metrics"] == {"auc": 0.9, "inf": None, "nan": None}
    text = ok(cli("runs", "show", a.id, cwd=ws.root))
    assert f"id          {a.id}" in text and "status      finished" in text
    assert "  lr      0.1" in text and "  model   rf" in text and "  loss  0.123457" in text


def test_runs_show_artifacts_and_error(sqlite_ws, cli):
    with pytest.raises(RuntimeError):
        with start_run("cli", name="broken") as run:
            run.log_text("hello", "notes.txt")
            raise RuntimeError("exploded at step 3")
    d = json.loads(ok(cli("runs", "show", run.id, "--json", cwd=sqlite_ws.root)))
    assert d["status"] == "failed" and "RuntimeError: exploded at step 3" in d["error"]
    assert [(x["name"], x["format"], x["size"]) for x in d["artifacts"]] == [("notes.txt", "txt", 5)]
    text = ok(cli("runs", "show", run.id, cwd=sqlite_ws.root))
    assert "notes.txt (txt)" in text and "RuntimeError: exploded at step 3" in text


def test_runs_compare(ws, two_runs, tmp_path, cli):
    a, b = two_runs
    out = tmp_path/"figs"/"cmp.html"
    recs = json.loads(ok(mlwb("runs", "compare", a.id, b.id[:6], "--out", str(out), "--json", cwd=ws.root)))
    assert out.is_file()
    html = out.read_text()
    assert "plotly" in html and "parcoords" in html
    assert [r["run_id"] for r in recs] == [a.id, b.id]
    assert [(r["name"], r["params.lr"], r["params.model"], r["metrics.auc"]) for r in recs] == \
        [("alpha", 0.1, "rf", 0.875), ("beta", 0.01, "lr", 0.9)]
    assert recs[0]["metrics.loss"] == 0.123456789 and recs[1]["metrics.loss"] is None
    text = ok(cli("runs", "compare", a.id, b.id, cwd=ws.root))
    assert text.splitlines()[0].split() == ["run_id", a.id[:12], b.id[:12]]
    assert "figure written" not in text


def test_workspace_option_and_home(sqlite_ws, tmp_path):
    with start_run("cli", name="where") as run: pass
    elsewhere = tmp_path/"elsewhere"
    elsewhere.mkdir()
    [rec] = json.loads(ok(mlwb("-W", str(sqlite_ws.root), "runs", "ls", "--json", cwd=elsewhere)))
    assert rec["run_id"] == run.id
    [rec] = json.loads(ok(mlwb("runs", "ls", "--json", cwd=elsewhere, env=clean_env(MLWB_HOME=str(sqlite_ws.root)))))
    assert rec["run_id"] == run.id
    sub = sqlite_ws.root/"notebooks"/"deep"
    sub.mkdir(parents=True)
    assert ok(mlwb("runs", "ls", "-q", cwd=sub)).split() == [run.id]  # found by searching upward


def test_two_workspaces_share_a_postgres_store(pg_url, tmp_path, no_mlwb_env):
    for name in ("laptop", "server"):
        info = json.loads(ok(mlwb("init", name, "--store-url", pg_url, "--json", cwd=tmp_path)))
        assert info["store"] == pg_url.replace("postgresql://", "postgresql+psycopg://")
    with start_run("shared-store", name="from-laptop", workspace=tmp_path/"laptop") as run:
        run.log_metric("auc", 0.75)
    recs = json.loads(ok(mlwb("runs", "ls", "-e", "shared-store", "--json", cwd=tmp_path/"server")))
    assert [(r["run_id"], r["name"], r["metrics.auc"]) for r in recs] == [(run.id, "from-laptop", 0.75)]
    assert not (tmp_path/"server"/".mlwb"/"mlwb.db").exists()

"""Every user mistake gives one clear error (a WorkbenchError in Python, one `error:` line and exit 1 in the shell)
and leaves the store as it was."""
from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa

from conftest import clean_env, mlwb
from mlops_workbench import store as S
from mlops_workbench.config import get_workspace, init_workspace
from mlops_workbench.errors import FilterError, NotFound, StoreError, WorkbenchError, WorkspaceError
from mlops_workbench.query import runs
from mlops_workbench.store import audit_entries, open_store
from mlops_workbench.tracking import get_run, start_run


def assert_cli_error(res, *needles: str) -> str:
    "Exit code 1, exactly one line on stderr starting with `error:`, no traceback anywhere; returns the line."
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = res.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles: assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------- store URLs

BAD_URLS = [
    pytest.param("nonsense", "does not parse", id="nonsense"),
    pytest.param("mysql://u:secret@h/db", "mysql", id="mysql"),
    pytest.param("sqlite://", "in-memory", id="sqlite-memory"),
    pytest.param("sqlite:///:memory:", "in-memory", id="sqlite-memory-explicit"),
    pytest.param("sqlite:////no/such/dir/x.db", "/no/such/dir", id="sqlite-missing-folder"),
    pytest.param("postgresql://postgres@127.0.0.1:1/x", "cannot reach the store", id="pg-unreachable"),
    pytest.param("postgresql://u:secret@127.0.0.1:1/x", "cannot reach the store", id="pg-unreachable-password"),
    # malformed URLs that hold a password: still a StoreError, and the password is not echoed
    pytest.param("postgresql:/u:secret@h/db", "does not parse", id="pg-one-slash-password"),
    pytest.param("postgresql:/u:hunter2/secret@h/db", "does not parse", id="pg-one-slash-password-with-slash"),
    pytest.param("postgresql:/u:hunter2:secret@h/db", "does not parse", id="pg-one-slash-password-with-colon"),
    pytest.param("postgresql://u:secret@h:notaport/db", "", id="pg-bad-port"),
    pytest.param("postgresql+nodriver://u:secret@127.0.0.1:1/db", "", id="pg-unknown-driver"),
    pytest.param("postgresql+asyncpg://u:secret@127.0.0.1:1/db", "", id="pg-uninstalled-driver"),
]


@pytest.mark.parametrize("url, needle", BAD_URLS)
def test_bad_store_url_open_store(url, needle, tmp_path):
    t = time.time()
    with pytest.raises(StoreError) as e:
        open_store(url, tmp_path)
    assert time.time() - t < 10
    assert needle in str(e.value)
    assert "secret" not in str(e.value) and "hunter2" not in str(e.value)  # no part of a password
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url, needle", BAD_URLS)
def test_bad_store_url_mlwb_init(url, needle, tmp_path):
    target = tmp_path/"new"
    t = time.time()
    res = mlwb("init", str(target), "--store-url", url, cwd=tmp_path)
    assert time.time() - t < 10
    line = assert_cli_error(res, needle)
    assert "secret" not in res.stderr + res.stdout and "hunter2" not in res.stderr + res.stdout, line
    assert not (target/"mlwb.toml").exists()
    assert not target.exists()  # the folder it created is removed again


def test_bad_store_url_in_an_existing_folder(tmp_path):
    target = tmp_path/"mine"
    target.mkdir()
    (target/"keep.txt").write_text("mine")
    assert_cli_error(mlwb("init", str(target), "--store-url", "sqlite:////no/such/dir/x.db", cwd=tmp_path))
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]  # no mlwb.toml, no .mlwb


def test_init_on_a_file(tmp_path):
    f = tmp_path/"file"
    f.write_text("not a folder")
    assert_cli_error(mlwb("init", str(f), cwd=tmp_path), "is a file")
    assert f.read_text() == "not a folder"


def test_init_workspace_bad_url_in_python(tmp_path, no_mlwb_env):
    with pytest.raises(StoreError, match="does not parse"):
        init_workspace(tmp_path/"w", store_url="nonsense")
    assert not (tmp_path/"w").exists()


def test_unreachable_postgres_is_quick(tmp_path):
    t = time.time()
    with pytest.raises(StoreError, match="cannot reach the store"):
        open_store("postgresql://postgres@127.0.0.1:1/x")
    assert time.time() - t < 10


def test_reinit_with_another_url_leaves_the_workspace(sqlite_ws):
    before = sqlite_ws.config_path.read_text()
    with start_run("keep"): pass
    res = mlwb("init", str(sqlite_ws.root), "--store-url", "postgresql://postgres@127.0.0.1:1/x", cwd=sqlite_ws.root)
    assert_cli_error(res, "already a workspace")
    assert sqlite_ws.config_path.read_text() == before
    assert len(runs()) == 1


def test_store_url_from_environment_is_checked(sqlite_ws):
    env = clean_env(MLWB_STORE_URL="mysql://u:secret@h/db")
    res = mlwb("runs", "ls", cwd=sqlite_ws.root, env=env)
    assert "secret" not in res.stderr
    assert_cli_error(res, "mysql")


# ---------------------------------------------------------------- workspaces

def test_missing_workspace_in_python(tmp_path, no_mlwb_env, monkeypatch):
    with pytest.raises(WorkspaceError, match="mlwb init"):
        get_workspace("/nonexistent")
    monkeypatch.setenv("MLWB_HOME", "/nonexistent")
    with pytest.raises(WorkspaceError, match="mlwb init"):
        get_workspace()
    monkeypatch.delenv("MLWB_HOME")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkspaceError, match="mlwb init"):
        get_workspace()
    with pytest.raises(WorkspaceError, match="mlwb init"):
        runs()


def test_missing_workspace_in_the_shell(tmp_path):
    assert_cli_error(mlwb("runs", "ls", cwd=tmp_path, env=clean_env(MLWB_HOME="/nonexistent")), "mlwb init", "/nonexistent")
    assert_cli_error(mlwb("runs", "ls", cwd=tmp_path), "mlwb init")
    assert_cli_error(mlwb("-W", "/nonexistent", "runs", "ls", cwd=tmp_path), "mlwb init")
    assert not (tmp_path/"mlwb.toml").exists()


def test_broken_config_file(sqlite_ws):
    sqlite_ws.config_path.write_text("[tracking\nheartbeat_interval = ")
    assert_cli_error(mlwb("runs", "ls", cwd=sqlite_ws.root), "not valid TOML")
    sqlite_ws.config_path.write_text("[tracking]\nheartbeat_timeout = -1\n")
    assert_cli_error(mlwb("runs", "ls", cwd=sqlite_ws.root), "heartbeat_timeout")


# ---------------------------------------------------------------- filters and injection

@pytest.fixture
def three_runs(ws):
    ids = {}
    for name in ("x", "it's", 'say "hi"'):
        with start_run("f", name=name, params={"a": "b", "n": 1}) as run: pass
        ids[name] = run.id
    return ids


def run_count(ws) -> int:
    store = open_store(ws.store_url, ws.root)
    with store.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(S.runs_table)).scalar_one()


@pytest.mark.parametrize("where", [
    "name =", "name = ", "= 'x'", "params.a >", "foo = 1", "metrics.auc > 'high'", "name = 'x' and", "((name = 'x')",
    "name ~ 'x'", "name = 'unterminated", "params.a like 'b%'", "start_time > 'not a date'", "name in 'x'",
    "name = x", "status = 'finished' status = 'failed'",
])
def test_filters_that_do_not_parse(three_runs, ws, where):
    with pytest.raises(FilterError):
        runs(where=where)
    assert run_count(ws) == 3


@pytest.mark.parametrize("where", [
    "name = 'x'; DROP TABLE mlwb_runs",
    "name = 'x'; DROP TABLE mlwb_runs; --",
    "name = 'x' or 1=1",
    "name = 'x' -- ",
    "params.`a` = 'b'' OR ''1''=''1'",
    "params.`a' OR '1'='1` = 'b'",
    "name = 'nobody'' OR ''1''=''1'",
    "name = 'nobody\\' OR 1=1 --'",
    "name = \"nobody\\\" OR \\\"1\\\"=\\\"1\"",
    "tags.`x') OR 1=1 --` = 'y'",
    "name in ('nobody', 'x'' OR 1=1')",
    "name like '%' || (SELECT 'x')",
])
def test_injection_attempts(three_runs, ws, where):
    "Each attempt either does not parse or is compared as plain text, matching nothing."
    try:
        df = runs(where=where)
    except FilterError:
        pass
    else:
        assert list(df.index) == [], (where, list(df["name"]))
    assert run_count(ws) == 3
    assert len(runs()) == 3


def test_quotes_in_values_are_plain_text(three_runs, ws):
    assert list(runs(where="name = \"it's\"")["name"]) == ["it's"]
    assert list(runs(where="name = 'it\\'s'")["name"]) == ["it's"]
    assert list(runs(where="name = 'say \"hi\"'")["name"]) == ['say "hi"']
    assert list(runs(where="name = \"say \\\"hi\\\"\"").index) == [three_runs['say "hi"']]
    assert set(runs(where="params.`a` = 'b'")["name"]) == {"x", "it's", 'say "hi"'}
    assert list(runs(where="name like 'it%'")["name"]) == ["it's"]
    assert run_count(ws) == 3


def test_bad_filter_in_the_shell(three_runs, ws):
    assert_cli_error(mlwb("runs", "ls", "--where", "name = 'x'; DROP TABLE mlwb_runs", cwd=ws.root), "filter")
    assert_cli_error(mlwb("runs", "ls", "--order-by", "bogus", cwd=ws.root), "order")
    assert run_count(ws) == 3


# ---------------------------------------------------------------- run ids, delete

def test_unknown_and_ambiguous_run_ids(sqlite_ws):
    with start_run("ids", name="real") as run: pass
    store = open_store(sqlite_ws.store_url, sqlite_ws.root)
    with store.write() as conn:
        exp = conn.execute(sa.select(S.runs_table.c.experiment_id).where(S.runs_table.c.id == run.id)).scalar_one()
        for rid in ("abcd" + "0" * 28, "abcd" + "1" * 28):
            conn.execute(S.runs_table.insert().values(id=rid, experiment_id=exp, name=rid[-3:], kind="run",
                                                      status="finished", start_time=time.time(), end_time=time.time()))
    for bad in ("abcd", "abc", "zzzzzzzz", "", "abcd%", "abcd_", "'; drop table mlwb_runs; --"):
        with pytest.raises(NotFound):
            get_run(bad)
    assert get_run("abcd0").info["name"] == "000"
    root = sqlite_ws.root
    assert_cli_error(mlwb("runs", "show", "abcd", cwd=root), "ambiguous")
    assert_cli_error(mlwb("runs", "show", "ffffffffffff", cwd=root), "no run")
    assert_cli_error(mlwb("runs", "show", "not-an-id", cwd=root))
    assert_cli_error(mlwb("runs", "delete", "abcd", "--yes", cwd=root), "ambiguous")
    assert_cli_error(mlwb("runs", "compare", run.id, "ffffffffffff", cwd=root), "no run")
    assert run_count(sqlite_ws) == 3


def test_delete_needs_confirmation(sqlite_ws):
    with start_run("del", name="victim") as run: pass
    store = open_store(sqlite_ws.store_url, sqlite_ws.root)
    root = sqlite_ws.root
    assert_cli_error(mlwb("runs", "delete", run.id, cwd=root), "pass --yes")  # stdin is /dev/null, not a terminal
    assert get_run(run.id).info["name"] == "victim"
    assert audit_entries(store, run.id) == []
    res = mlwb("runs", "delete", run.id[:10], "--yes", cwd=root)
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.strip() == f"deleted 1 run(s): {run.id}"
    with pytest.raises(NotFound):
        get_run(run.id)
    [entry] = audit_entries(store, run.id)
    assert (entry["action"], entry["target_id"], entry["details"]["name"]) == ("run.delete", run.id, "victim")
    assert_cli_error(mlwb("runs", "delete", run.id, "--yes", cwd=root), "no run")
    assert len(audit_entries(store, run.id)) == 1


def test_delete_running_run_in_the_shell_needs_force(sqlite_ws):
    run = start_run("del", name="live")
    try:
        assert_cli_error(mlwb("runs", "delete", run.id, "--yes", cwd=sqlite_ws.root), "still running", "--force")
        assert get_run(run.id).info["status"] == "running"
    finally:
        run.end()


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("args", [[], ["init"], ["runs"], ["runs", "ls"], ["runs", "show"], ["runs", "compare"], ["runs", "delete"]],
                         ids=lambda a: " ".join(a) or "mlwb")
def test_help(args, tmp_path):
    res = mlwb(*args, "--help", cwd=tmp_path)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert "Usage: mlwb" in res.stdout and "--help" in res.stdout
    assert not (tmp_path/"mlwb.toml").exists()


def test_version(tmp_path):
    from mlops_workbench import __version__
    res = mlwb("--version", cwd=tmp_path)
    assert (res.returncode, res.stdout.strip()) == (0, f"mlwb {__version__}")


def test_usage_errors_exit_non_zero(tmp_path):
    res = mlwb("runs", "frobnicate", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = mlwb("runs", "ls", "--limit", "0", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_workbench_errors_are_one_family():
    for cls in (StoreError, WorkspaceError, FilterError, NotFound):
        assert issubclass(cls, WorkbenchError)

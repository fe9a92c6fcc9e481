"""Shared fixtures: SQLite and PostgreSQL workspaces, helpers to run `mlwb` and Python in other processes."""
from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from mlops_workbench import store as S
from mlops_workbench import tracking as T
from mlops_workbench.config import init_workspace, use_workspace

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT/".venv"/"bin" if (ROOT/".venv"/"bin"/"mlwb").exists() else Path(sys.executable).parent
PYTHON = BIN/"python"
MLWB = BIN/"mlwb"

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL_TEMPLATE = "postgresql://postgres@127.0.0.1:5432/{db}"


# ---------------------------------------------------------------- helpers

def clean_env(**extra: str) -> dict[str, str]:
    "The environment of this process without any MLWB_* variable, plus `extra`."
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWB_")}
    env.update(extra)
    return env


def mlwb(*args: str, cwd: str | os.PathLike, env: dict | None = None, timeout: float = 60,
         stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    "Run the installed `mlwb` command in `cwd` with no MLWB_* variables (unless `env` says otherwise)."
    return subprocess.run([str(MLWB), *args], cwd=cwd, env=clean_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout, stdin=stdin)


def set_tracking(ws, **values: float) -> None:
    "Replace values of the [tracking] section in the workspace's mlwb.toml (the file init_workspace wrote)."
    text = ws.config_path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key}\s*=\s*[0-9.]+", f"{key} = {value}", text)
        assert n == 1, f"{key} not found once in {ws.config_path}"
    ws.config_path.write_text(text)


def forget_stores(match) -> None:
    "Dispose and drop the cached stores (of this process) whose URL satisfies `match(url)`."
    for key, store in list(S._stores.items()):
        if match(store.url):
            store.engine.dispose()
            del S._stores[key]


def end_active_runs(root: Path) -> None:
    "End runs still active in this process that log into the workspace at `root` (their heartbeat threads stop)."
    for run in list(T._active):
        if run.workspace.root == root:
            with contextlib.suppress(Exception):
                run.end("killed", error="test teardown")


# ---------------------------------------------------------------- markers

def pytest_collection_modifyitems(config, items):
    "Tests that ask for a PostgreSQL fixture directly carry the `postgres` marker."
    for item in items:
        if {"pg_admin", "pg_url", "pg_ws"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


# ---------------------------------------------------------------- SQLite

@pytest.fixture
def no_mlwb_env(monkeypatch):
    "No MLWB_* variable reaches the code under test."
    for name in [k for k in os.environ if k.startswith("MLWB_")] + ["MLWB_HOME", "MLWB_STORE_URL"]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_ws(tmp_path, no_mlwb_env):
    "A fresh SQLite workspace in tmp_path, pinned as the current workspace."
    ws = init_workspace(tmp_path/"ws")
    use_workspace(ws)
    yield ws
    use_workspace(None)
    end_active_runs(ws.root)
    forget_stores(lambda url: url.get_backend_name() == "sqlite" and str(url.database).startswith(str(ws.root)))


# ---------------------------------------------------------------- PostgreSQL

def _create_database(admin: sa.Engine) -> str:
    name = f"mlwb_test_{secrets.token_hex(6)}"
    with admin.connect() as conn: conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(admin: sa.Engine, name: str) -> None:
    "Drop a test database, after disposing the cached stores (connection pools) that point at it."
    forget_stores(lambda url: url.get_backend_name() == "postgresql" and url.database == name)
    with admin.connect() as conn: conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class DatabasePool:
    "Empty databases created ahead of time by a background thread: CREATE DATABASE mostly waits for the disk."
    def __init__(self, admin: sa.Engine, ahead: int = 2):
        self.admin, self.closed = admin, False
        self.ready: queue.Queue = queue.Queue()
        self.wanted = threading.Semaphore(ahead)
        self.thread = threading.Thread(target=self._fill, name="mlwb-test-databases", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        while True:
            self.wanted.acquire()
            if self.closed: return
            try: self.ready.put(_create_database(self.admin))
            except BaseException as e:  # handed to the next taker
                self.ready.put(e)
                return

    def take(self) -> str:
        item = self.ready.get(timeout=60)
        self.wanted.release()
        if isinstance(item, BaseException): raise item
        return item

    def close(self) -> None:
        self.closed = True
        self.wanted.release()
        self.thread.join(timeout=60)
        while not self.ready.empty():
            item = self.ready.get_nowait()
            if isinstance(item, str): _drop_database(self.admin, item)


@pytest.fixture(scope="session")
def pg_admin():
    "A pool of fresh databases on the PostgreSQL server; skips (fails under CI) when the server cannot be reached."
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn: conn.execute(sa.text("SELECT 1"))
    except Exception as e:
        engine.dispose()
        first_line = str(e).splitlines()[0]
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required under CI and is not reachable: {first_line}", pytrace=False)
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({first_line}); postgres tests skipped")
    pool = DatabasePool(engine)
    yield pool
    pool.close()
    engine.dispose()


@contextlib.contextmanager
def temporary_database(pool: DatabasePool):
    "A new, empty database: postgresql://postgres@127.0.0.1:5432/mlwb_test_<hex>; dropped at the end."
    name = pool.take()
    try:
        yield PG_URL_TEMPLATE.format(db=name)
    finally:
        _drop_database(pool.admin, name)


@pytest.fixture(scope="session")
def pg_url(pg_admin):
    "A PostgreSQL database for the whole session."
    with temporary_database(pg_admin) as url:
        yield url


@pytest.fixture
def pg_database(pg_admin):
    "A fresh, empty PostgreSQL database for one test."
    with temporary_database(pg_admin) as url:
        yield url


@pytest.fixture
def pg_ws(tmp_path, no_mlwb_env, pg_database):
    "A workspace in tmp_path whose store is a fresh PostgreSQL database, pinned as the current workspace."
    ws = init_workspace(tmp_path/"ws", store_url=pg_database)
    use_workspace(ws)
    yield ws
    use_workspace(None)
    end_active_runs(ws.root)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ws(request):
    "The same test on a SQLite workspace and on a PostgreSQL one."
    return request.getfixturevalue("sqlite_ws" if request.param == "sqlite" else "pg_ws")

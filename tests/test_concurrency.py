"""Many processes logging into one store at once: no error reaches a user, no point is lost."""
from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import PYTHON, clean_env, set_tracking

pytestmark = pytest.mark.slow

N_PROCS, N_POINTS = 8, 2000

# Each worker imports everything first, says it is ready, waits for the go file, then opens the store
# (migrating it if nobody has yet) and logs its points one by one.
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mlops_workbench.tracking import start_run
    ws, barrier, i, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    (barrier/f"ready-{i}").touch()
    deadline = time.time() + 120
    while not (barrier/"go").exists():
        if time.time() > deadline: sys.exit("no go signal")
        time.sleep(0.002)
    with start_run("race", name=f"p{i}", params={"worker": i}, workspace=ws) as run:
        for step in range(n):
            run.log_metric("m", i * 100000 + step)
            if step % 250 == 249: run.flush()  # more, smaller write transactions: more contention
    print(run.id)
""")


def race(ws_root: Path, tmp_path: Path, n_procs: int = N_PROCS, n_points: int = N_POINTS) -> list[str]:
    "Start the workers, release them together, and return their run ids; every worker must succeed silently."
    barrier = tmp_path/"barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([str(PYTHON), "-c", WORKER, str(ws_root), str(barrier), str(i), str(n_points)],
                              cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n_procs)]
    try:
        deadline = time.time() + 90
        while len(list(barrier.glob("ready-*"))) < n_procs:
            assert time.time() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        (barrier/"go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert (p.returncode, err) == (0, ""), f"worker {i} exit {p.returncode}:\n{err[-3000:]}"
    ids = [out.strip() for out, _ in outs]
    assert all(len(i) == 32 for i in ids) and len(set(ids)) == n_procs
    return ids


def check_store(url: str, ids: list[str], n_points: int = N_POINTS) -> None:
    "Exactly the points the workers logged, in finished runs, and one schema version."
    from mlops_workbench.store import VERSION_TABLE, head_revision, resolve_url
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as conn:
            q = lambda sql: conn.execute(sa.text(sql)).all()
            assert q("SELECT count(*) FROM mlwb_metrics") == [(len(ids) * n_points,)]
            assert q("SELECT status, count(*) FROM mlwb_runs GROUP BY status") == [("finished", len(ids))]
            assert sorted(r[0] for r in q("SELECT id FROM mlwb_runs")) == sorted(ids)
            per_run = q("SELECT run_id, count(*), count(DISTINCT step), min(step), max(step), min(value), max(value) "
                        "FROM mlwb_metrics GROUP BY run_id")
            params = dict(q("SELECT run_id, value FROM mlwb_params WHERE key = 'worker'"))
            assert len(per_run) == len(ids)
            for run_id, n, distinct, lo, hi, vmin, vmax in per_run:
                i = int(params[run_id])
                assert (n, distinct, lo, hi) == (n_points, n_points, 0, n_points - 1)
                assert (vmin, vmax) == (i * 100000, i * 100000 + n_points - 1)
            latest = q("SELECT run_id, step, value FROM mlwb_latest_metrics")
            assert sorted((int(params[r]), s, v) for r, s, v in latest) == \
                [(i, n_points - 1, i * 100000 + n_points - 1) for i in range(len(ids))]
            assert q(f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]
            assert q("SELECT count(*) FROM mlwb_experiments") == [(1,)]
    finally:
        engine.dispose()


def test_eight_writers_on_one_sqlite_workspace(sqlite_ws, tmp_path):
    set_tracking(sqlite_ws, heartbeat_interval=0.05, flush_interval=0.05)  # background writes compete too
    ids = race(sqlite_ws.root, tmp_path)
    check_store(sqlite_ws.store_url, ids)


def write_config(root: Path, url_line: str = "") -> None:
    "A workspace whose store does not exist yet: mlwb.toml and .mlwb/, no database."
    (root/".mlwb").mkdir(parents=True)
    (root/"mlwb.toml").write_text(f"[store]\n{url_line}\n\n[tracking]\nheartbeat_interval = 0.05\nflush_interval = 0.05\n")


def test_eight_writers_race_to_create_the_sqlite_store(tmp_path, no_mlwb_env):
    root = tmp_path/"fresh"
    write_config(root)
    db = root/".mlwb"/"mlwb.db"
    assert not db.exists()
    ids = race(root, tmp_path)
    assert db.exists()
    check_store(f"sqlite:///{db}", ids)


def test_eight_writers_race_to_migrate_a_postgres_store(tmp_path, no_mlwb_env, pg_database):
    root = tmp_path/"fresh"
    write_config(root, f'url = "{pg_database}"')
    engine = sa.create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []  # nothing created by the parent
    engine.dispose()
    ids = race(root, tmp_path)
    check_store(pg_database, ids)

"""Benchmark: metric logging of mlops_workbench against MLflow (SQLite backend) and a raw sqlite3 floor.

What it measures (each contender in a fresh temporary folder, the same process, the same run of
this script, timed with `time.perf_counter`; every measurement is repeated and the median kept):

1. one by one      1,000 points of one metric, one `log_metric` call each, inside one run.
                   Timed from the first call through the end of the run (ours: `run.end()`,
                   which writes what is still buffered; MLflow: `mlflow.end_run()`).
2. runs x metrics  100 runs, each started, given 10 metrics (one `log_metric` call each) and
                   ended. Timed from the first start to the last end; per point and per run.
3. batched         100,000 points: ours `run.log_metrics({100 keys}, step=i)` for 1,000 steps
                   then `run.end()`; MLflow `MlflowClient.log_batch` in chunks of 1,000 metrics
                   (its per-call limit) then `set_terminated`; the floor is Python's `sqlite3`
                   in WAL mode (synchronous=NORMAL, like our store) with one `executemany` of
                   the 100,000 rows in one transaction into a table indexed on
                   (run_id, key, step) like ours. Building the points (dict, Metric objects,
                   row tuples) is inside the timed region for all three.

Setup is outside the timed regions: creating the workspace or the MLflow database (both run
schema migrations on first use; MLflow's take seconds, so one empty migrated MLflow database is
made once and copied for each measurement), the experiment, and, in scenarios 1 and 3, the run
itself. A tiny untimed warm-up of every contender runs first, so lazy imports are not timed.
After each measurement the rows are counted in the database (and the sum of the steps checked);
a mismatch stops the script with an error. Targets (PASS/MISS is printed; the exit code is 0
either way, this is a report): one by one MLflow/ours >= 20x, batched ours/raw <= 3x.

Not a test; never run in CI. Needs the `bench` extra (`pip install -e ".[bench]"`). Run with

    .venv/bin/python bench/tracking.py            # full sizes, 3 repeats (about 1-2 minutes)
    .venv/bin/python bench/tracking.py --quick    # smaller sizes, a smoke run (about 10-20 seconds)
    .venv/bin/python bench/tracking.py --json     # also print the results as JSON
    .venv/bin/python bench/tracking.py --profile  # also cProfile our batched scenario
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/profile.py is named like the standard library's `profile`, which cProfile imports: keep this folder off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse, cProfile, gc, io, json, logging, os, platform, pstats, sqlite3, statistics, tempfile, time, warnings
from dataclasses import dataclass, field
from typing import Callable

# Quiet MLflow before it is imported: no telemetry, no INFO lines about migrations.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")

import sqlalchemy
from mlops_workbench import __version__ as mlwb_version
from mlops_workbench import store as S
from mlops_workbench.config import Workspace, init_workspace
from mlops_workbench.tracking import start_run

try:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric
except ImportError:  # pragma: no cover - a message, not a crash
    sys.exit('mlflow is not installed; install the bench extra: .venv/bin/pip install -e ".[bench]"')

for _name in ("mlflow", "alembic", "sqlalchemy.engine", "git"):
    logging.getLogger(_name).setLevel(logging.ERROR)

EXPERIMENT = "bench"
MLFLOW_BATCH_LIMIT = 1000  # metrics per MlflowClient.log_batch call


class BenchError(RuntimeError):
    "A measurement did not store what it logged."


@dataclass(frozen=True)
class Sizes:
    "How much each scenario logs."
    one_by_one: int = 1000      # points in scenario 1
    runs: int = 100             # runs in scenario 2
    metrics_per_run: int = 10   # metrics per run in scenario 2
    steps: int = 1000           # steps in scenario 3
    keys: int = 100             # metrics per step in scenario 3

    @property
    def batched(self) -> int: return self.steps*self.keys

QUICK = Sizes(one_by_one=200, runs=20, metrics_per_run=10, steps=100, keys=100)


@dataclass
class Result:
    "The timings of one scenario: seconds per repeat for each contender, and how many points/runs."
    name: str
    points: int
    runs: int
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, who: str) -> float: return statistics.median(self.seconds[who])
    def us_per_point(self, who: str) -> float: return self.median(who)/self.points*1e6
    def ms_per_run(self, who: str) -> float: return self.median(who)/self.runs*1e3
    def ratio(self, slow: str, fast: str) -> float: return self.median(slow)/self.median(fast)


# ---------------------------------------------------------------- helpers

def _value(i: int) -> float:
    "A deterministic, non-NaN metric value."
    return ((i*7919) % 10007)/1000.0

def _expected_step_sum(sizes_steps: int, per_step: int) -> int:
    "The sum of the steps stored when `per_step` points are logged at each of steps 0..n-1."
    return per_step*sizes_steps*(sizes_steps - 1)//2

def _check(what: str, got: tuple, want: tuple) -> None:
    "Fail loudly when the database does not hold what was logged."
    if tuple(got) != tuple(want):
        raise BenchError(f"{what}: the database holds (rows, step sum, finished runs) = {tuple(got)}, expected {tuple(want)}")

def _query(db: Path, sql: str) -> tuple:
    "One row of a query on a SQLite file, through a fresh connection."
    conn = sqlite3.connect(db)
    try: return conn.execute(sql).fetchone()
    finally: conn.close()

def _timed(fn: Callable[[], None]) -> float:
    "Seconds that `fn()` takes, after a garbage collection."
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

# ---------------------------------------------------------------- ours

def _our_workspace(tmp: Path) -> Workspace:
    "A fresh workspace with its store opened and migrated (untimed setup)."
    ws = init_workspace(tmp/"ours")
    S.open_store(ws.store_url, ws.root)
    return ws

def _our_counts(ws: Workspace) -> tuple:
    "(metric rows, sum of steps, finished runs) in our store."
    db = ws.state_dir/"mlwb.db"
    rows, steps = _query(db, "SELECT count(*), coalesce(sum(step), 0) FROM mlwb_metrics")
    (finished,) = _query(db, "SELECT count(*) FROM mlwb_runs WHERE status = 'finished'")
    return rows, steps, finished

def _our_close(ws: Workspace) -> None:
    "Close the pooled connections of the workspace's store so that its folder can go."
    S.open_store(ws.store_url, ws.root).engine.dispose()

def ours_one_by_one(tmp: Path, n: int) -> float:
    "Scenario 1, ours: `n` log_metric calls in one run, through run.end()."
    ws = _our_workspace(tmp)
    run = start_run(experiment=EXPERIMENT, workspace=ws)
    def work() -> None:
        for i in range(n): run.log_metric("loss", _value(i), step=i)
        run.end()
    dt = _timed(work)
    _check("ours, one by one", _our_counts(ws), (n, _expected_step_sum(n, 1), 1))
    _our_close(ws)
    return dt

def ours_runs(tmp: Path, runs: int, per_run: int) -> float:
    "Scenario 2, ours: `runs` runs started, given `per_run` metrics at step 0, and ended."
    ws = _our_workspace(tmp)
    keys = [f"m{k}" for k in range(per_run)]
    def work() -> None:
        for r in range(runs):
            with start_run(experiment=EXPERIMENT, workspace=ws) as run:
                for k, key in enumerate(keys): run.log_metric(key, _value(r*per_run + k), step=0)
    dt = _timed(work)
    _check("ours, runs x metrics", _our_counts(ws), (runs*per_run, 0, runs))
    _our_close(ws)
    return dt

def ours_batched(tmp: Path, steps: int, n_keys: int) -> float:
    "Scenario 3, ours: one run, log_metrics of `n_keys` metrics at each of `steps` steps, through run.end()."
    ws = _our_workspace(tmp)
    keys = [f"m{k}" for k in range(n_keys)]
    run = start_run(experiment=EXPERIMENT, workspace=ws)
    def work() -> None:
        for i in range(steps): run.log_metrics({key: _value(i + k) for k, key in enumerate(keys)}, step=i)
        run.end()
    dt = _timed(work)
    _check("ours, batched", _our_counts(ws), (steps*n_keys, _expected_step_sum(steps, n_keys), 1))
    _our_close(ws)
    return dt

# ---------------------------------------------------------------- MLflow

_mlflow_template: Path | None = None  # an empty, migrated MLflow database that each measurement starts from a copy of

def prepare_mlflow_template(folder: Path) -> None:
    "Create and migrate one empty MLflow database in `folder` (seconds), so that each measurement copies it instead."
    global _mlflow_template
    db = folder/"template.db"
    MlflowClient(f"sqlite:///{db.as_posix()}").search_experiments()  # creates the tables, runs the migrations
    _mlflow_template = db

def _copy_sqlite(src: Path, dst: Path) -> None:
    "Copy a SQLite database with the backup API (consistent even if a connection is open)."
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try: s.backup(d)
    finally: d.close(); s.close()

def _mlflow_setup(tmp: Path) -> tuple[Path, str]:
    "A fresh MLflow SQLite database, migrated, with an experiment (untimed setup): its path and the experiment id."
    db = tmp/"mlflow"/"mlflow.db"
    db.parent.mkdir(parents=True)
    if _mlflow_template is not None: _copy_sqlite(_mlflow_template, db)
    uri = f"sqlite:///{db.as_posix()}"
    mlflow.set_tracking_uri(uri)
    exp_id = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(tmp/"mlflow"/"artifacts").as_uri())
    return db, exp_id

def _mlflow_counts(db: Path) -> tuple:
    "(metric rows, sum of steps, finished runs) in an MLflow database."
    rows, steps = _query(db, "SELECT count(*), coalesce(sum(step), 0) FROM metrics")
    (finished,) = _query(db, "SELECT count(*) FROM runs WHERE status = 'FINISHED'")
    return rows, steps, finished

def mlflow_one_by_one(tmp: Path, n: int) -> float:
    "Scenario 1, MLflow: `n` mlflow.log_metric calls (synchronous, the default) in one run, through end_run()."
    db, exp_id = _mlflow_setup(tmp)
    mlflow.start_run(experiment_id=exp_id)
    def work() -> None:
        for i in range(n): mlflow.log_metric("loss", _value(i), step=i, synchronous=True)
        mlflow.end_run()
    dt = _timed(work)
    _check("mlflow, one by one", _mlflow_counts(db), (n, _expected_step_sum(n, 1), 1))
    return dt

def mlflow_runs(tmp: Path, runs: int, per_run: int) -> float:
    "Scenario 2, MLflow: `runs` runs started, given `per_run` metrics at step 0, and ended."
    db, exp_id = _mlflow_setup(tmp)
    keys = [f"m{k}" for k in range(per_run)]
    def work() -> None:
        for r in range(runs):
            with mlflow.start_run(experiment_id=exp_id):
                for k, key in enumerate(keys): mlflow.log_metric(key, _value(r*per_run + k), step=0, synchronous=True)
    dt = _timed(work)
    _check("mlflow, runs x metrics", _mlflow_counts(db), (runs*per_run, 0, runs))
    return dt

def mlflow_batched(tmp: Path, steps: int, n_keys: int) -> float:
    "Scenario 3, MLflow: MlflowClient.log_batch in chunks of 1,000 metrics, then set_terminated."
    db, exp_id = _mlflow_setup(tmp)
    client = MlflowClient(f"sqlite:///{db.as_posix()}")
    run_id = client.create_run(exp_id).info.run_id
    keys = [f"m{k}" for k in range(n_keys)]
    def work() -> None:
        chunk: list[Metric] = []
        for i in range(steps):
            ts = int(time.time()*1000)
            for k, key in enumerate(keys):
                chunk.append(Metric(key, _value(i + k), ts, i))
                if len(chunk) == MLFLOW_BATCH_LIMIT:
                    client.log_batch(run_id, metrics=chunk); chunk = []
        if chunk: client.log_batch(run_id, metrics=chunk)
        client.set_terminated(run_id)
    dt = _timed(work)
    _check("mlflow, batched", _mlflow_counts(db), (steps*n_keys, _expected_step_sum(steps, n_keys), 1))
    return dt

# ---------------------------------------------------------------- raw sqlite3 floor

def raw_batched(tmp: Path, steps: int, n_keys: int) -> float:
    "Scenario 3, the floor: one executemany of every row in one transaction, WAL, indexed like ours."
    db = tmp/"raw.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE metrics (run_id TEXT, key TEXT, step INTEGER, value REAL, time REAL)")
    conn.execute("CREATE INDEX ix_metrics_run_key_step ON metrics (run_id, key, step)")
    conn.commit()
    run_id, keys = "0"*32, [f"m{k}" for k in range(n_keys)]
    def work() -> None:
        rows = []
        for i in range(steps):
            now = time.time()
            rows.extend((run_id, key, i, _value(i + k), now) for k, key in enumerate(keys))
        with conn: conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
    try:
        dt = _timed(work)
        rows, step_sum = conn.execute("SELECT count(*), coalesce(sum(step), 0) FROM metrics").fetchone()
    finally: conn.close()
    _check("raw sqlite3, batched", (rows, step_sum, 1), (steps*n_keys, _expected_step_sum(steps, n_keys), 1))
    return dt

# ---------------------------------------------------------------- driver

def measure(name: str, points: int, runs: int, contenders: dict[str, Callable[[Path], float]], repeats: int) -> Result:
    "Run every contender `repeats` times, interleaved, each time in a fresh temporary folder."
    result = Result(name, points, runs, {who: [] for who in contenders})
    for rep in range(repeats):
        for who, fn in contenders.items():
            print(f"  {name}: {who} {rep + 1}/{repeats}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="mlwb-bench-", ignore_cleanup_errors=True) as tmp:
                result.seconds[who].append(fn(Path(tmp)))
    return result

def warm_up() -> None:
    "Run each contender once on a tiny size, untimed, so that lazy imports and first-call caches are paid before timing."
    print("warming up (untimed)", file=sys.stderr, flush=True)
    for fn in (lambda t: ours_one_by_one(t, 10), lambda t: ours_runs(t, 2, 2), lambda t: ours_batched(t, 2, 10),
               lambda t: mlflow_one_by_one(t, 10), lambda t: mlflow_runs(t, 2, 2), lambda t: mlflow_batched(t, 2, 10),
               lambda t: raw_batched(t, 2, 10)):
        with tempfile.TemporaryDirectory(prefix="mlwb-bench-", ignore_cleanup_errors=True) as tmp: fn(Path(tmp))

def run_all(sizes: Sizes, repeats: int) -> list[Result]:
    "The three scenarios."
    n, r, m, st, k = sizes.one_by_one, sizes.runs, sizes.metrics_per_run, sizes.steps, sizes.keys
    return [
        measure("one by one", n, 1, {"ours": lambda t: ours_one_by_one(t, n), "mlflow": lambda t: mlflow_one_by_one(t, n)}, repeats),
        measure(f"{r} runs x {m} metrics", r*m, r, {"ours": lambda t: ours_runs(t, r, m), "mlflow": lambda t: mlflow_runs(t, r, m)}, repeats),
        measure(f"{st*k:,} points batched", st*k, 1, {"ours": lambda t: ours_batched(t, st, k), "mlflow": lambda t: mlflow_batched(t, st, k),
                                                     "raw": lambda t: raw_batched(t, st, k)}, repeats),
    ]

# ---------------------------------------------------------------- report

@dataclass(frozen=True)
class Target:
    "A goal on a ratio of medians: `slow`/`fast` compared with `bound`."
    scenario: int
    slow: str
    fast: str
    op: str      # ">=" or "<="
    bound: float

    def met(self, ratio: float) -> bool: return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

TARGETS = (Target(0, "mlflow", "ours", ">=", 20.0), Target(2, "ours", "raw", "<=", 3.0))

def fmt_num(x: float) -> str:
    "A number with about three significant digits and thousands separators."
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"

def _target_note(result_index: int, slow: str, fast: str, ratio: float) -> str:
    for t in TARGETS:
        if (t.scenario, t.slow, t.fast) == (result_index, slow, fast):
            return f"  (target {t.op} {t.bound:g}x: {'PASS' if t.met(ratio) else 'MISS'})"
    return ""

def report_lines(results: list[Result]) -> list[str]:
    "The table: per-point latency of each contender and the ratios, then the spread of each median."
    lines = []
    for idx, res in enumerate(results):
        cells = [f"{res.name:<26}"] + [f"{who} {fmt_num(res.us_per_point(who))} us/pt" for who in res.seconds]
        line = "   ".join(cells)
        pairs = [("mlflow", "ours")] + ([("ours", "raw")] if "raw" in res.seconds else [])
        for slow, fast in pairs:
            ratio = res.ratio(slow, fast)
            line += f"   {slow}/{fast} {fmt_num(ratio)}x{_target_note(idx, slow, fast, ratio)}"
        lines.append(line)
        if res.runs > 1:
            lines.append(f"{'':<26}per run: " + "   ".join(f"{who} {fmt_num(res.ms_per_run(who))} ms/run" for who in res.seconds))
        spread = "   ".join(f"{who} " + " ".join(f"{s:.3f}" for s in res.seconds[who]) for who in res.seconds)
        lines.append(f"{'':<26}seconds per repeat: {spread}")
    return lines

def summary_lines(results: list[Result]) -> list[str]:
    "One line per target, then the overall verdict."
    lines, missed = [], 0
    for t in TARGETS:
        res = results[t.scenario]
        ratio = res.ratio(t.slow, t.fast)
        ok = t.met(ratio)
        missed += not ok
        lines.append(f"  {'PASS' if ok else 'MISS'}  {res.name}: {t.slow}/{t.fast} = {fmt_num(ratio)}x (target {t.op} {t.bound:g}x)")
    lines.append(f"  {len(TARGETS) - missed} of {len(TARGETS)} targets met")
    return lines

def as_json(results: list[Result], sizes: Sizes, repeats: int, elapsed: float) -> dict:
    "Everything measured, as JSON-safe values."
    out = {"environment": environment(), "sizes": sizes.__dict__, "repeats": repeats, "elapsed_s": round(elapsed, 2), "scenarios": []}
    for idx, res in enumerate(results):
        who_all = list(res.seconds)
        entry = {"name": res.name, "points": res.points, "runs": res.runs, "seconds": res.seconds,
                 "median_s": {w: res.median(w) for w in who_all}, "us_per_point": {w: res.us_per_point(w) for w in who_all},
                 "ratios": {"mlflow/ours": res.ratio("mlflow", "ours")}}
        if res.runs > 1: entry["ms_per_run"] = {w: res.ms_per_run(w) for w in who_all}
        if "raw" in res.seconds: entry["ratios"]["ours/raw"] = res.ratio("ours", "raw")
        entry["targets"] = [{"ratio": f"{t.slow}/{t.fast}", "op": t.op, "bound": t.bound, "value": res.ratio(t.slow, t.fast),
                             "pass": t.met(res.ratio(t.slow, t.fast))} for t in TARGETS if t.scenario == idx]
        out["scenarios"].append(entry)
    return out

def environment() -> dict:
    "Versions of what is compared."
    return {"python": platform.python_version(), "platform": platform.platform(), "sqlite": sqlite3.sqlite_version,
            "mlops_workbench": mlwb_version, "mlflow": mlflow.__version__, "sqlalchemy": sqlalchemy.__version__}

def profile_ours_batched(sizes: Sizes, top: int = 20) -> str:
    "cProfile of our batched scenario (main thread only), sorted by own time, then by cumulative time."
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="mlwb-bench-", ignore_cleanup_errors=True) as tmp:
        prof.enable()
        ours_batched(Path(tmp), sizes.steps, sizes.keys)
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()

def main(argv: list[str] | None = None) -> int:
    "Parse options, measure, print the table (and JSON); 0 even when a target is missed."
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"smaller sizes for a smoke run: {QUICK}")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the median is reported (default 3)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON after the table")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of our batched scenario")
    args = ap.parse_args(argv)
    if args.repeats < 1: ap.error("--repeats must be at least 1")
    sizes = QUICK if args.quick else Sizes()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlwb-bench-", ignore_cleanup_errors=True) as tmp:
        print("migrating an MLflow template database (untimed)", file=sys.stderr, flush=True)
        prepare_mlflow_template(Path(tmp))
        warm_up()
        results = run_all(sizes, args.repeats)
        if args.profile: profile = profile_ours_batched(sizes)
    elapsed = time.perf_counter() - t0

    env = environment()
    print(f"mlops_workbench {env['mlops_workbench']} vs MLflow {env['mlflow']} (SQLite backend) vs raw sqlite3 {env['sqlite']}; "
          f"Python {env['python']}, SQLAlchemy {env['sqlalchemy']}, {env['platform']}")
    print(f"median of {args.repeats} repeat(s){', --quick sizes' if args.quick else ''}; us/pt = microseconds per metric point\n")
    print("\n".join(report_lines(results)))
    print("\nsummary")
    print("\n".join(summary_lines(results)))
    print(f"  total time {elapsed:.1f} s (setup, warm-up and verification included)")
    if args.profile:
        print("\ncProfile of ours, batched (main thread):")
        print(profile)
    if args.json:
        print(json.dumps(as_json(results, sizes, args.repeats, elapsed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

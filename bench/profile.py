"""Benchmark: `mlops_workbench.eda.profile` against ydata-profiling's minimal mode on a 1,000,000 x 20 frame.

What it measures
----------------
One seeded frame: 1,000,000 rows (100,000 with --quick), 15 float columns (3 of them with 2-20% NaN, one
log-normal, one with a few infinities) and 5 text columns of 2, 12, 250, 5,000 and 100,000 levels (one with 5% missing).
The parent process generates it once with numpy and saves it as an `.npz` file (numpy's format reads the same
in any numpy version); each contender then runs in its own subprocess, so timings and memory never mix:

1. the child builds the DataFrame from the `.npz` (text columns as pandas' string dtype, object on pandas 2),
2. runs a small untimed warm-up (1,000 rows) so lazy imports and JIT compilation are not timed,
3. records its resident memory, then times one call with `time.perf_counter`:
   ours   `eda.profile(df)` (exact statistics on all rows, correlations on its default 100,000-row sample),
   ydata  `ProfileReport(df, minimal=True, progress_bar=False).get_description()` (the statistics; no HTML),
4. reports the peak resident memory of the process (`resource.getrusage(...).ru_maxrss`) and the growth over
   the memory it had before the call (the frame itself is not counted in the growth).

Ours is timed `--repeats` times (median kept), ydata once (it is slow). Target: ydata / ours >= 10x (PASS/MISS
is printed; the exit code is 0 either way: this is a report, not a test; never run in CI).

ydata-profiling (4.10-4.18) declares pandas<3, numpy<2.4 and scipy<1.17, so it cannot be installed next to our
pandas 3 stack without downgrading it. The script looks for it in this interpreter first; if it is not
importable, point `--ydata-python` at an interpreter that has it, for example a separate virtualenv:

    python -m venv /tmp/ydata-venv && /tmp/ydata-venv/bin/pip install "ydata-profiling>=4.10"
    .venv/bin/python bench/profile.py --ydata-python /tmp/ydata-venv/bin/python

Both contenders then read the same data, on the same machine, in the same run; only the pandas under
ydata differs (2.x there). Without any ydata interpreter, ours is still measured and reported.

    .venv/bin/python bench/profile.py              # 1,000,000 rows (about 1-3 minutes with ydata)
    .venv/bin/python bench/profile.py --quick      # 100,000 rows, a smoke run
    .venv/bin/python bench/profile.py --json       # also print the results as JSON
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's `profile` module (which `cProfile` imports): keep its folder
# off the import path so nothing imported below picks this script up instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse, json, os, platform, resource, statistics, subprocess, tempfile, time, warnings

import numpy as np

LEVELS = (2, 12, 250, 5_000, 100_000)
TARGET = 10.0


# ---------------------------------------------------------------- data (parent)

def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    "15 float columns and 5 text columns (as codes plus labels), seeded; NaN, infinities and skew on purpose."
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for i in range(15):
        x = rng.normal(loc=i, scale=1 + i, size=n)
        if i == 3: x = rng.lognormal(0, 1.2, n)
        if i in (1, 5, 9): x[rng.random(n) < (0.02, 0.08, 0.2)[(1, 5, 9).index(i)]] = np.nan
        if i == 7: x[rng.integers(0, n, 10)] = np.inf
        cols[f"num_{i:02d}"] = x
    for j, k in enumerate(LEVELS):
        codes = rng.integers(0, k, n).astype("int32")
        if j == 2: codes[rng.random(n) < 0.05] = -1            # missing
        cols[f"cat_{j}_codes"] = codes
        cols[f"cat_{j}_labels"] = np.array([f"{'abcde'[j]}{v:06d}" for v in range(k)])
    return cols


# ---------------------------------------------------------------- child: build, warm up, time

def build_frame(path: str):
    "The DataFrame from the `.npz`: floats as they are, text columns as strings with NaN for missing."
    import pandas as pd
    data = np.load(path)
    frame = {k: data[k] for k in data.files if k.startswith("num_")}
    text = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
    for j in range(len(LEVELS)):
        codes, labels = data[f"cat_{j}_codes"], data[f"cat_{j}_labels"].astype(object)
        values = labels[np.maximum(codes, 0)]
        values[codes < 0] = None
        frame[f"cat_{j}"] = pd.Series(values, dtype=text)
    return pd.DataFrame(frame)


def rss_mb() -> float:
    "Peak resident memory of this process so far, in MB (Linux reports kB, macOS bytes)."
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def current_rss_mb() -> float:
    "Resident memory now, in MB (Linux; falls back to the peak elsewhere)."
    try:
        with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError: return rss_mb()


def run_ours(df, repeats: int) -> list[float]:
    from mlops_workbench import eda
    eda.profile(df.head(1_000))                                   # warm-up, untimed
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); p = eda.profile(df); times.append(time.perf_counter() - t)
    assert p.n_rows == len(df) and len(p.table) == df.shape[1]    # the work happened
    return times


def run_ydata(df, repeats: int) -> list[float]:
    warnings.filterwarnings("ignore")
    from ydata_profiling import ProfileReport
    ProfileReport(df.head(1_000), minimal=True, progress_bar=False).get_description()   # warm-up, untimed
    t = time.perf_counter()
    desc = ProfileReport(df, minimal=True, progress_bar=False).get_description()
    elapsed = time.perf_counter() - t
    assert len(desc.variables) == df.shape[1]
    return [elapsed]


def child(tool: str, path: str, repeats: int) -> None:
    "Runs in a subprocess: prints one JSON line with times and memory."
    import pandas as pd
    df = build_frame(path)
    before = current_rss_mb()
    times = (run_ours if tool == "ours" else run_ydata)(df, repeats)
    print(json.dumps({"tool": tool, "times": times, "peak_rss_mb": rss_mb(), "rss_before_mb": before,
                      "pandas": pd.__version__, "numpy": np.__version__, "shape": list(df.shape)}))


# ---------------------------------------------------------------- parent: run both, report

def run_child(python: str, tool: str, path: str, repeats: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, "--data", path, "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(_HERE.parent))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"tool": tool, "error": (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def ydata_importable(python: str) -> str | None:
    "None when ydata_profiling imports in `python`, else the reason."
    r = subprocess.run([python, "-W", "ignore", "-c", "import ydata_profiling"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    ap.add_argument("--rows", type=int, help="number of rows (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median kept); ydata runs once")
    ap.add_argument("--ydata-python", default=sys.executable, help="interpreter with ydata-profiling installed")
    ap.add_argument("--no-ydata", action="store_true", help="measure ours only")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--child", choices=["ours", "ydata"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(a.child, a.data, a.repeats)

    n = a.rows or (100_000 if a.quick else 1_000_000)
    print(f"generating {n:,} x 20 ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frame.npz")
        np.savez(path, **make_data(n))
        print("timing ours ...", file=sys.stderr)
        ours = run_child(sys.executable, "ours", path, a.repeats)
        ydata, why = None, "skipped (--no-ydata)" if a.no_ydata else ydata_importable(a.ydata_python)
        if why is None:
            print(f"timing ydata-profiling (minimal) with {a.ydata_python} ...", file=sys.stderr)
            ydata = run_child(a.ydata_python, "ydata", path, 1)
            if "error" in ydata: why, ydata = f"failed to run: {ydata['error']}", None
    report(n, ours, ydata, why, a)


def report(n: int, ours: dict, ydata: dict | None, why: str | None, a) -> None:
    print(f"\nprofile of a {n:,} x 20 frame (15 numeric, 5 text of {', '.join(f'{k:,}' for k in LEVELS)} levels)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print(f"{'tool':<34}{'time s':>10}{'peak RSS MB':>14}{'growth MB':>12}   pandas")
    rows = [("mlops_workbench.eda.profile", ours)] + ([("ydata-profiling minimal", ydata)] if ydata else [])
    for name, r in rows:
        if "error" in r:
            print(f"{name:<34}FAILED: {r['error']}"); continue
        t = statistics.median(r["times"])
        print(f"{name:<34}{t:>10.2f}{r['peak_rss_mb']:>14.0f}{r['peak_rss_mb'] - r['rss_before_mb']:>12.0f}   {r['pandas']}")
    if ydata and "error" not in ours:
        ratio = statistics.median(ydata["times"]) / statistics.median(ours["times"])
        print(f"\nydata / ours: {ratio:.1f}x faster (target >= {TARGET:.0f}x): {'PASS' if ratio >= TARGET else 'MISS'}")
    else:
        print(f"\nydata-profiling not measured: {why}")
        print("  it declares pandas<3, numpy<2.4, scipy<1.17; install it in a separate virtualenv and pass --ydata-python")
    if a.json: print(json.dumps({"rows": n, "ours": ours, "ydata": ydata, "ydata_skipped": why}, indent=1))


if __name__ == "__main__":
    main()

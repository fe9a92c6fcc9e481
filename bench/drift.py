"""Benchmark: `mlops_workbench.monitor.drift` against Evidently's data-drift preset on 1,000,000 x 20 frames.

What it measures
----------------
A seeded reference and current frame, 1,000,000 rows each (100,000 with --quick), 20 columns:

- 13 float columns (normal with different means and scales, one log-normal, one with 5% missing),
- `count`, an integer with about 60 distinct values (numeric for both tools),
- `level`, an integer with 6 levels (categorical for both: each counts integers with <= 10 levels as categories),
- 5 text columns of 2, 8, 12, 50 and 250 levels (the last with 5% missing).

The current frame (another seed) has drift injected into known columns: `num_00` +0.5 standard deviation,
`num_04` scaled by 1.5, `num_12` +0.25 sd, `level` 20% of rows moved to one level, `cat_1` 30% and `cat_3`
20% moved to one level; and a negligible shift, `num_08` +0.02 sd, that a p-value on a million rows calls
significant and neither tool should flag. Expected: exactly {num_00, num_04, num_12, level, cat_1, cat_3}.

The parent generates the data once with numpy into an `.npz` file (it reads the same under any numpy); each
contender runs in its own subprocess, builds the two DataFrames (text as pandas' string dtype, object on pandas
2), runs an untimed warm-up on 1,000 rows, then times:

    ours       monitor.drift(reference, current)                         (defaults: method="auto")
    evidently  Report([DataDriftPreset()], include_tests=True).run(current, reference)   (defaults)

At these sizes both use the same distances with the same thresholds by default (normalized Wasserstein for
numbers, Jensen-Shannon for categories, both 0.1), so the flagged columns should be the same; the script
prints both sets, each column's score from both tools, and the largest difference between the scores. One
difference on purpose: Evidently takes the Jensen-Shannon distance with the natural logarithm, ours with base 2
(bounded by 1), so ours is theirs x 1/sqrt(ln 2) = 1.2 and our 0.1 threshold is slightly stricter; the
injected shifts are far from either threshold.
Ours is timed `--repeats` times (median kept), Evidently once (it is slow). Target: Evidently / ours >= 10x
(PASS/MISS is printed; the exit code is 0 either way: a report, not a test; never run in CI).

Evidently (0.7) declares plotly<6 and fails to import under pandas 3, so it cannot live in our environment.
The script looks for it in this interpreter first; otherwise point `--evidently-python` at a separate one:

    python3 -m venv /tmp/evidently && /tmp/evidently/bin/pip install evidently "pandas<3" pyarrow
    .venv/bin/python bench/drift.py --evidently-python /tmp/evidently/bin/python

    .venv/bin/python bench/drift.py --quick      # 100,000 rows, a smoke run
    .venv/bin/python bench/drift.py --json       # also print the results as JSON
"""
from __future__ import annotations

import argparse, json, os, platform, resource, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
TARGET = 10.0
TEXT_LEVELS = (2, 8, 12, 50, 250)
EXPECTED = ["num_00", "num_04", "num_12", "level", "cat_1", "cat_3"]


# ---------------------------------------------------------------- data (parent)

def make_data(n: int, seed: int, shifted: bool) -> dict[str, np.ndarray]:
    "20 columns as numpy arrays (text as codes + labels); the drift of the module docstring when `shifted`."
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for i in range(13):
        scale = 1 + i % 4
        x = rng.lognormal(0, 0.8, n) if i == 3 else rng.normal(i, scale, n)
        if shifted and i in (0, 8, 12): x = x + (0.5, 0.02, 0.25)[(0, 8, 12).index(i)] * (0.8 if i == 3 else scale)
        if shifted and i == 4: x = i + (x - i) * 1.5
        if i == 7: x[rng.random(n) < 0.05] = np.nan
        cols[f"num_{i:02d}"] = x
    cols["count"] = rng.poisson(50, n).astype("int64")
    cols["level"] = _move(rng, rng.integers(0, 6, n), 0.2 if shifted else 0.0).astype("int64")
    for j, k in enumerate(TEXT_LEVELS):
        codes = _move(rng, rng.integers(0, k, n), {1: 0.3, 3: 0.2}.get(j, 0.0) if shifted else 0.0).astype("int32")
        if j == 4: codes[rng.random(n) < 0.05] = -1                      # missing
        cols[f"cat_{j}_codes"] = codes
        cols[f"cat_{j}_labels"] = np.array([f"{'abcde'[j]}{v:04d}" for v in range(k)])
    return cols


def _move(rng, codes: np.ndarray, share: float) -> np.ndarray:
    "Move `share` of the rows to level 0."
    if share: codes = np.where(rng.random(len(codes)) < share, 0, codes)
    return codes


# ---------------------------------------------------------------- child: build, warm up, time

def build_frame(data):
    "The DataFrame: numbers as they are, text columns as strings with None for missing."
    import pandas as pd
    frame = {k: data[k] for k in data.files if not k.startswith("cat_")}
    text = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
    for j in range(len(TEXT_LEVELS)):
        codes, labels = data[f"cat_{j}_codes"], data[f"cat_{j}_labels"].astype(object)
        values = labels[np.maximum(codes, 0)]
        values[codes < 0] = None
        frame[f"cat_{j}"] = pd.Series(values, dtype=text)
    return pd.DataFrame(frame)


def rss_mb() -> float:
    "Peak resident memory of this process so far, in MB (Linux reports kB, macOS bytes)."
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def run_ours(ref, cur, repeats: int) -> dict:
    from mlops_workbench.monitor import drift
    drift(ref.head(1_000), cur.head(1_000))                             # warm-up, untimed
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); report = drift(ref, cur); times.append(time.perf_counter() - t)
    assert len(report.table) == ref.shape[1]
    return {"times": times, "flagged": [str(c) for c in report.drifted_columns], "rule": report.rule,
            "scores": {str(c): float(v) for c, v in report.table["distance"].items()},
            "methods": {str(c): str(v) for c, v in report.table["distance_name"].items()}}


def run_evidently(ref, cur, repeats: int) -> dict:
    warnings.filterwarnings("ignore")
    from evidently import Report
    from evidently.presets import DataDriftPreset
    Report([DataDriftPreset()], include_tests=True).run(cur.head(1_000), ref.head(1_000))   # warm-up, untimed
    t = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    elapsed = time.perf_counter() - t
    d = snapshot.dict()
    scores, methods, flagged = {}, {}, []
    for m in d["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift"): scores[cfg["column"]], methods[cfg["column"]] = float(m["value"]), cfg["method"]
    for test in d["tests"]:
        params = test["metric_config"]["params"]
        if params.get("type", "").endswith("ValueDrift") and str(test["status"]).upper().endswith("FAIL"): flagged.append(params["column"])
    assert len(scores) == ref.shape[1], sorted(scores)
    return {"times": [elapsed], "flagged": [c for c in ref.columns if c in flagged], "scores": scores, "methods": methods}


def child(tool: str, path: str, repeats: int) -> None:
    "Runs in a subprocess: prints one JSON line with times, flagged columns, scores and memory."
    import pandas as pd
    ref, cur = build_frame(np.load(path + ".ref.npz")), build_frame(np.load(path + ".cur.npz"))
    result = (run_ours if tool == "ours" else run_evidently)(ref, cur, repeats)
    print(json.dumps({"tool": tool, **result, "peak_rss_mb": rss_mb(), "pandas": pd.__version__, "shape": list(ref.shape)}))


# ---------------------------------------------------------------- parent: run both, report

def run_child(python: str, tool: str, path: str, repeats: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, "--data", path, "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(_HERE.parent))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"tool": tool, "error": (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def evidently_importable(python: str) -> str | None:
    "None when evidently imports in `python`, else the reason."
    r = subprocess.run([python, "-W", "ignore", "-c", "import evidently.presets"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    ap.add_argument("--rows", type=int, help="number of rows of each frame (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median kept); Evidently runs once")
    ap.add_argument("--evidently-python", default=sys.executable, help="interpreter with evidently installed")
    ap.add_argument("--no-evidently", action="store_true", help="measure ours only")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(a.child, a.data, a.repeats)

    n = a.rows or (100_000 if a.quick else 1_000_000)
    print(f"generating 2 x {n:,} x 20 ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frames")
        np.savez(path + ".ref.npz", **make_data(n, seed=0, shifted=False))
        np.savez(path + ".cur.npz", **make_data(n, seed=1, shifted=True))
        print("timing ours ...", file=sys.stderr)
        ours = run_child(sys.executable, "ours", path, a.repeats)
        ev, why = None, "skipped (--no-evidently)" if a.no_evidently else evidently_importable(a.evidently_python)
        if why is None:
            print(f"timing Evidently's DataDriftPreset with {a.evidently_python} (about a minute or two at 1,000,000 rows) ...", file=sys.stderr)
            ev = run_child(a.evidently_python, "evidently", path, 1)
            if "error" in ev: why, ev = f"failed to run: {ev['error']}", None
    report(n, ours, ev, why, a)


def score_difference(ours: dict, ev: dict) -> float:
    "The largest difference between the two tools' scores. Evidently computes the Jensen-Shannon distance with the\n    natural logarithm (scipy's default base), ours with base 2 (bounded by 1): theirs x 1/sqrt(ln 2) is ours."
    base2 = lambda c, v: v / np.sqrt(np.log(2)) if "Jensen" in str(ev["methods"].get(c)) else v
    return max(abs(v - base2(c, ev["scores"][c])) for c, v in ours["scores"].items() if c in ev["scores"])


def report(n: int, ours: dict, ev: dict | None, why: str | None, a) -> None:
    print(f"\ndrift of two {n:,} x 20 frames (13 float, 2 integer, 5 text columns; drift injected in 6)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print(f"{'tool':<34}{'time s':>10}{'peak RSS MB':>14}   pandas")
    rows = [("mlops_workbench.monitor.drift", ours)] + ([("Evidently DataDriftPreset", ev)] if ev else [])
    for name, r in rows:
        if "error" in r: print(f"{name:<34}FAILED: {r['error']}"); continue
        print(f"{name:<34}{statistics.median(r['times']):>10.2f}{r['peak_rss_mb']:>14.0f}   {r['pandas']}")
    if "error" in ours: return
    print(f"\nexpected drifted: {EXPECTED}")
    print(f"ours flagged:     {ours['flagged']}  ({'as expected' if ours['flagged'] == EXPECTED else 'NOT as expected'})")
    if ev:
        print(f"Evidently:        {ev['flagged']}  ({'same columns' if set(ev['flagged']) == set(ours['flagged']) else 'DIFFERENT columns'})")
        print(f"\n{'column':<10}{'ours':>12}{'Evidently':>12}   method (ours / Evidently)")
        for c, v in ours["scores"].items():
            print(f"{c:<10}{v:>12.5f}{ev['scores'].get(c, float('nan')):>12.5f}   {ours['methods'][c]} / {ev['methods'].get(c)}")
        print(f"largest score difference: {score_difference(ours, ev):.2e} (Evidently's Jensen-Shannon distances, natural log, "
              f"converted to base 2: x 1/sqrt(ln 2))")
        ratio = statistics.median(ev["times"]) / statistics.median(ours["times"])
        print(f"\nEvidently / ours: {ratio:.1f}x faster (target >= {TARGET:.0f}x): {'PASS' if ratio >= TARGET else 'MISS'}")
    else:
        print(f"\nEvidently not measured: {why}")
        print('  it declares plotly<6 and needs pandas<3; install it in a separate virtualenv and pass --evidently-python')
    if a.json: print(json.dumps({"rows": n, "ours": ours, "evidently": ev, "evidently_skipped": why}, indent=1))


if __name__ == "__main__":
    main()

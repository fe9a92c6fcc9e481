"""Benchmark: the prediction server over loopback against in-process prediction, in the same run.

What it measures, for two registered models (each in a fresh temporary workspace):

  cancer   scikit-learn's breast-cancer data, 30 float inputs: StandardScaler + LogisticRegression
  loans    a seeded table of 4 inputs of every kind a signature checks (integer, float, text category,
           boolean): ColumnTransformer (scaler, one-hot) + LogisticRegression

1. single row, HTTP   `mlwb serve NAME@production` in a subprocess (prediction log on, as in production),
                      one client on one keep-alive connection (`http.client`), POST /predict with one record,
                      the answer read and decoded; after a warm-up, N sequential requests: p50, p99 and the
                      sequential throughput (requests per second).
2. throughput, HTTP   C clients (threads, one connection each) for a few seconds: requests per second.
3. single row, in-process   `Predictor.predict(one-row DataFrame)`: the same signature checks and the same
                      model calls, no HTTP and no JSON: p50, p99; and the bare `model.predict` + `predict_proba`.
4. 10,000 rows        HTTP, two ways: one POST of an Arrow IPC stream answered with an Arrow stream (Content-Type
                      and Accept application/vnd.apache.arrow.stream: the batch path), and one POST in the JSON split
                      orient (`{"columns": [...], "data": [[...]]}`) answered in JSON; each body encoded once before
                      timing, each answer (predictions and class probabilities) decoded (pyarrow, orjson);
                      in-process: `Predictor.predict(DataFrame)` on the same rows; median of R repeats each,
                      per row, and the ratios. The bare `model.predict` + `predict_proba` is shown for reference, and
                      the server's steps (decoding the body, rows to a frame, checks and prediction, encoding the answer)
                      and the client's decoding are timed one by one in-process to show where the HTTP time goes;
                      the same Arrow POST to a do-nothing ASGI app under the same uvicorn (answering as many bytes)
                      shows what HTTP alone costs, and a second server started with --no-log what the prediction
                      log costs.

Every answer is checked: status 200, the number of predictions, and (batch) the predictions equal the
in-process ones. Targets (PASS/MISS printed; the exit code is 0 either way, this is a report, never run in
CI): single-row p50 <= 3 ms; batch time per row over HTTP (Arrow) <= 1.5 x in-process; the JSON batch ratio
is printed against the same target for comparison.
Figures depend on the machine and on what else runs on it; compare runs made on the same quiet machine.

    .venv/bin/python bench/serving.py            # full sizes (about 1-2 minutes)
    .venv/bin/python bench/serving.py --quick    # fewer requests, a smoke run (about 20-30 seconds)
    .venv/bin/python bench/serving.py --json     # also print the results as JSON
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see bench/tracking.py

import argparse, contextlib, http.client, json, logging, os, platform, socket, statistics, subprocess, tempfile, threading, time, warnings
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from mlops_workbench import __version__ as mlwb_version
from mlops_workbench.config import init_workspace
from mlops_workbench.predictions import Predictor
from mlops_workbench.registry import promote, register

MLWB = Path(sys.executable).parent/"mlwb"
TARGET_P50_MS, TARGET_BATCH_RATIO = 3.0, 1.5


def progress(msg: str) -> None: print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- models

def cancer_model():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = load_breast_cancer(as_frame=True, return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y), X, y

def loans_model():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    rng = np.random.default_rng(0)
    n = 5_000
    X = pd.DataFrame({"age": rng.integers(18, 80, n), "income": rng.normal(50_000, 15_000, n).round(2),
                      "city": pd.Series(rng.choice(["Lyon", "Nice", "Paris", "Lille", "Brest"], n), dtype="str"), "member": rng.random(n) < 0.4})
    y = ((X["income"] - 50_000) / 15_000 + 0.8 * X["member"] + rng.normal(0, 0.5, n) > 0).astype("int64")
    pre = ColumnTransformer([("num", StandardScaler(), ["age", "income"]), ("city", OneHotEncoder(), ["city"]), ("member", "passthrough", ["member"])])
    return make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(X, y), X, y

MODELS = {"cancer": cancer_model, "loans": loans_model}


def rows_like(X: pd.DataFrame, n: int, seed: int = 1) -> pd.DataFrame:
    "n rows drawn from the training rows (so no value is out of range), plain Python values when turned into records."
    return X.sample(n, replace=True, random_state=seed).reset_index(drop=True)

def records(df: pd.DataFrame) -> list[dict]: return df.to_dict("records")
def split(df: pd.DataFrame) -> dict: return {"columns": list(df.columns), "data": [list(r.values()) for r in records(df)]}


# ---------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

@contextlib.contextmanager
def server(ws_root: Path, ref: str, *options: str):
    "`mlwb serve` in a subprocess; yields its port once /health answers."
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWB_")}
    proc = subprocess.Popen([str(MLWB), "-W", str(ws_root), "serve", ref, "--port", str(port), "--log-level", "warning", *options],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None: raise SystemExit(f"mlwb serve exited with {proc.returncode}: {proc.stderr.read()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1); c.request("GET", "/health")
                if c.getresponse().status == 200: break
            except OSError: pass
            if time.monotonic() > deadline: raise SystemExit("mlwb serve did not start within 60 s")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()

ARROW = "application/vnd.apache.arrow.stream"

SINK_APP = """
import sys, uvicorn
answer = b"x" * int(sys.argv[2])
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (m := await receive())["type"] != "lifespan.shutdown": await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    more = True
    while more: more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

def transport_floor(body: bytes, answer_bytes: int, repeats: int) -> float:
    "Median ms of the same POST to a do-nothing ASGI app under the same uvicorn, answering as many bytes: the cost of HTTP alone."
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK_APP, str(port), str(answer_bytes)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
            time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        def one(i):
            c.request("POST", "/predict", body=body, headers={"Content-Type": ARROW}); r = c.getresponse(); r.read()
        one(0)
        return 1e3 * statistics.median(timed(one, repeats))
    finally:
        proc.terminate(); proc.wait()

class Client:
    "One keep-alive connection; post() returns the decoded answer and checks its status."
    def __init__(self, port: int): self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    def _post(self, body: bytes, headers: dict) -> bytes:
        self.conn.request("POST", "/predict", body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200: raise SystemExit(f"server answered {r.status}: {data[:300]!r}")
        return data
    def post(self, body: bytes) -> dict: return orjson.loads(self._post(body, {"Content-Type": "application/json"}))
    def post_arrow(self, body: bytes):
        "An Arrow stream in, an Arrow table out."
        return pa.ipc.open_stream(self._post(body, {"Content-Type": ARROW, "Accept": ARROW})).read_all()
    def close(self) -> None: self.conn.close()


# ---------------------------------------------------------------- measurements

def timed(fn, n: int) -> np.ndarray:
    "Seconds taken by each of n calls of fn()."
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter(); fn(i); out[i] = time.perf_counter() - t
    return out

def single_row_http(port: int, bodies: list[bytes], n: int, warmup: int) -> np.ndarray:
    c = Client(port)
    for i in range(warmup): c.post(bodies[i % len(bodies)])
    def one(i):
        out = c.post(bodies[i % len(bodies)])
        assert len(out["predictions"]) == 1
    try: return timed(one, n)
    finally: c.close()

def throughput_http(port: int, bodies: list[bytes], clients: int, seconds: float) -> float:
    counts, stop = [0] * clients, threading.Event()
    def worker(k: int):
        c = Client(port)
        i = k
        while not stop.is_set():
            c.post(bodies[i % len(bodies)]); counts[k] += 1; i += clients
        c.close()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    time.sleep(seconds); stop.set()
    for t in threads: t.join()
    return sum(counts) / (time.perf_counter() - t0)

def batch_phases(p: Predictor, body: bytes, repeats: int) -> dict:
    "The server's steps for one JSON batch body, timed one by one in this process (median ms)."
    from mlops_workbench.serving import _dumps, answer, parse_body, to_frame
    med = lambda fn: 1e3 * statistics.median(timed(lambda i: fn(), repeats))
    obj = parse_body(body); df = to_frame(obj, body=body); scored = p.predict(df); out = _dumps(answer(p, "id", scored))
    return {"JSON decode": med(lambda: parse_body(body)), "rows to frame": med(lambda: to_frame(obj, body=body)), "check + predict": med(lambda: p.predict(df)),
            "answer encode": med(lambda: _dumps(answer(p, "id", scored))), "client decode": med(lambda: orjson.loads(out))}

def arrow_phases(p: Predictor, body: bytes, repeats: int) -> dict:
    "The server's steps for one Arrow batch body, timed one by one in this process (median ms)."
    from mlops_workbench.serving import arrow_answer, read_arrow
    med = lambda fn: 1e3 * statistics.median(timed(lambda i: fn(), repeats))
    df = read_arrow(body); scored = p.predict(df); out = arrow_answer(p, "id", scored)
    return {"Arrow read": med(lambda: read_arrow(body)), "check + predict": med(lambda: p.predict(df)),
            "answer encode": med(lambda: arrow_answer(p, "id", scored)), "client decode": med(lambda: pa.ipc.open_stream(out).read_all())}

def arrow_stream(df: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w: w.write_table(table)
    return sink.getvalue().to_pybytes()

@dataclass
class Result:
    model: str
    n_inputs: int
    single_http_ms: dict = field(default_factory=dict)  # p50, p99
    single_inproc_ms: dict = field(default_factory=dict)
    seq_rps: float = 0.0
    conc_rps: float = 0.0
    clients: int = 0
    batch_rows: int = 0
    batch_http_ms: float = 0.0  # Arrow in, Arrow out
    batch_json_ms: float = 0.0  # JSON split orient in, JSON out
    batch_inproc_ms: float = 0.0
    batch_bare_ms: float = 0.0
    batch_floor_ms: float = 0.0  # the Arrow POST to a do-nothing ASGI app under uvicorn: HTTP alone
    batch_nolog_ms: float = 0.0  # the Arrow batch to a server started with --no-log
    single_bare_ms: float = 0.0
    batch_phases_ms: dict = field(default_factory=dict)  # where the JSON batch time goes, each phase timed in-process
    arrow_phases_ms: dict = field(default_factory=dict)  # the same for the Arrow batch

    @property
    def batch_ratio(self) -> float: return self.batch_http_ms / self.batch_inproc_ms
    @property
    def json_ratio(self) -> float: return self.batch_json_ms / self.batch_inproc_ms


def run_model(name: str, a) -> Result:
    progress(f"[{name}] registering the model")
    model, X, y = MODELS[name]()
    tmp = Path(tempfile.mkdtemp(prefix=f"mlwb-bench-{name}-"))
    ws = init_workspace(tmp/"ws")
    register(model, name, X=X, y=y, workspace=ws)
    promote(name, 1, "production", workspace=ws)
    res = Result(name, X.shape[1], clients=a.clients, batch_rows=a.batch_rows)
    singles = rows_like(X, 500)
    bodies = [json.dumps([r]).encode() for r in records(singles)]
    batch = rows_like(X, a.batch_rows, seed=2)
    batch_body = json.dumps(split(batch)).encode()
    batch_arrow = arrow_stream(batch)

    p = Predictor.load(f"{name}@production", ws)
    frames = [singles.iloc[[i]] for i in range(len(singles))]
    for i in range(a.warmup): p.predict(frames[i % len(frames)])
    t = timed(lambda i: p.predict(frames[i % len(frames)]), a.requests)
    res.single_inproc_ms = {"p50": 1e3 * np.percentile(t, 50), "p99": 1e3 * np.percentile(t, 99)}
    res.single_bare_ms = 1e3 * np.percentile(timed(lambda i: (model.predict(frames[i % len(frames)]), model.predict_proba(frames[i % len(frames)])), a.requests // 3), 50)
    want = p.predict(batch).predictions.tolist()
    res.batch_phases_ms = batch_phases(p, batch_body, a.repeats)
    res.arrow_phases_ms = arrow_phases(p, batch_arrow, a.repeats)
    res.batch_inproc_ms = 1e3 * statistics.median(timed(lambda i: p.predict(batch), a.repeats))
    res.batch_bare_ms = 1e3 * statistics.median(timed(lambda i: (model.predict(batch), model.predict_proba(batch)), a.repeats))

    with server(ws.root, f"{name}@production") as port:
        progress(f"[{name}] {a.requests} single-row requests over HTTP")
        t = single_row_http(port, bodies, a.requests, a.warmup)
        res.single_http_ms = {"p50": 1e3 * np.percentile(t, 50), "p99": 1e3 * np.percentile(t, 99)}
        res.seq_rps = len(t) / t.sum()
        progress(f"[{name}] {a.clients} concurrent clients for {a.seconds:g} s")
        res.conc_rps = throughput_http(port, bodies, a.clients, a.seconds)
        progress(f"[{name}] {a.batch_rows:,}-row batch over HTTP, Arrow and JSON, {a.repeats} times each")
        c = Client(port)
        if c.post(batch_body)["predictions"] != want: raise SystemExit("the server's JSON batch predictions differ from the in-process ones")
        if c.post_arrow(batch_arrow)["prediction"].to_pylist() != want: raise SystemExit("the server's Arrow batch predictions differ from the in-process ones")
        res.batch_json_ms = 1e3 * statistics.median(timed(lambda i: c.post(batch_body), a.repeats))
        res.batch_http_ms = 1e3 * statistics.median(timed(lambda i: c.post_arrow(batch_arrow), a.repeats))
        answer_bytes = len(c._post(batch_arrow, {"Content-Type": ARROW, "Accept": ARROW}))
        c.close()
    with server(ws.root, f"{name}@production", "--no-log") as port:
        progress(f"[{name}] the Arrow batch again, without the prediction log")
        c = Client(port)
        c.post_arrow(batch_arrow)
        res.batch_nolog_ms = 1e3 * statistics.median(timed(lambda i: c.post_arrow(batch_arrow), a.repeats))
        c.close()
    res.batch_floor_ms = transport_floor(batch_arrow, answer_bytes, a.repeats)
    return res


# ---------------------------------------------------------------- report

def verdict(ok: bool) -> str: return "PASS" if ok else "MISS"

def report(results: list[Result]) -> str:
    lines = [f"mlops_workbench {mlwb_version}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs", ""]
    head = f"{'model':<8} {'inputs':>6}  {'HTTP p50':>9} {'HTTP p99':>9}  {'in-proc p50':>11} {'p99':>7}  {'bare p50':>8}  {'seq req/s':>9} {'conc req/s':>10}"
    lines += ["single row (ms)", head]
    for r in results:
        lines.append(f"{r.model:<8} {r.n_inputs:>6}  {r.single_http_ms['p50']:>9.2f} {r.single_http_ms['p99']:>9.2f}  "
                     f"{r.single_inproc_ms['p50']:>11.2f} {r.single_inproc_ms['p99']:>7.2f}  {r.single_bare_ms:>8.2f}  {r.seq_rps:>9.0f} {r.conc_rps:>10.0f}")
    lines += ["", f"{results[0].batch_rows:,}-row batch (ms; µs per row in brackets)",
              f"{'model':<8} {'HTTP Arrow':>16} {'HTTP JSON':>16} {'in-process':>16} {'bare model':>16} {'Arrow / in-proc':>16} {'JSON / in-proc':>15}"]
    for r in results:
        per = lambda ms: f"{ms:8.1f} ({1e3 * ms / r.batch_rows:5.1f})"
        lines.append(f"{r.model:<8} {per(r.batch_http_ms):>16} {per(r.batch_json_ms):>16} {per(r.batch_inproc_ms):>16} {per(r.batch_bare_ms):>16} "
                     f"{r.batch_ratio:>15.2f}x {r.json_ratio:>14.2f}x")
    lines += ["", "the Arrow batch without the prediction log (mlwb serve --no-log), and HTTP alone: the same Arrow POST to a do-nothing",
              "ASGI app under the same uvicorn, answering as many bytes (ms; x in-process)"]
    for r in results:
        lines.append(f"  {r.model:<8} without the log {r.batch_nolog_ms:.1f} ({r.batch_nolog_ms / r.batch_inproc_ms:.2f}x); "
                     f"HTTP alone {r.batch_floor_ms:.1f} ({r.batch_floor_ms / r.batch_inproc_ms:.2f}x)")
    lines += ["", "where the HTTP batch time goes (each step timed alone, in-process, ms)"]
    for r in results:
        for label, phases, total in (("Arrow", r.arrow_phases_ms, r.batch_http_ms), ("JSON", r.batch_phases_ms, r.batch_json_ms)):
            lines.append(f"  {r.model:<8} {label:<5} " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
                         + f"; the rest ({total - sum(phases.values()):.1f}) is HTTP, transfer and the prediction log")
    lines += ["", "targets"]
    for r in results:
        lines.append(f"  {r.model}: single-row p50 {r.single_http_ms['p50']:.2f} ms <= {TARGET_P50_MS:g} ms: {verdict(r.single_http_ms['p50'] <= TARGET_P50_MS)}; "
                     f"batch (Arrow) HTTP / in-process {r.batch_ratio:.2f}x <= {TARGET_BATCH_RATIO:g}x: {verdict(r.batch_ratio <= TARGET_BATCH_RATIO)}; "
                     f"JSON {r.json_ratio:.2f}x: {verdict(r.json_ratio <= TARGET_BATCH_RATIO)}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests: a smoke run")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--models", default="cancer,loans", help="comma-separated: cancer, loans")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients for the throughput measurement")
    a = ap.parse_args(argv)
    a.requests, a.warmup, a.seconds, a.repeats, a.batch_rows = (300, 50, 2.0, 3, 10_000) if a.quick else (3_000, 300, 5.0, 7, 10_000)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    results = [run_model(m, a) for m in a.models.split(",")]
    print(report(results))
    if a.json: print(json.dumps([{**r.__dict__, "batch_ratio": r.batch_ratio, "json_ratio": r.json_ratio} for r in results], indent=2))


if __name__ == "__main__":
    main()

"""The prediction log under concurrent writers and failures, batch scoring of CSV and Parquet files in chunks
(bad chunks, nothing half-written, bounded memory), feedback joined to served predictions, and the CLI."""
from __future__ import annotations

import json, threading, tracemalloc, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about httpx on import
    from fastapi.testclient import TestClient

from conftest import mlwb
from mlops_workbench.errors import DataError, NotFound, SignatureError
from mlops_workbench.predictions import PredictionLog, Predictor, Scored, feedback, predict_file, predictions_root, read_predictions
from mlops_workbench.registry import promote, register
from mlops_workbench.serving import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def loans(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    "A seeded loan table: integer, float, text category and boolean inputs (incomes of seed 0 span the others)."
    rng = np.random.default_rng(seed)
    income = rng.normal(50_000, 15_000, n).round(2).clip(*((5_000, 95_000) if seed == 0 else (20_000, 80_000)))
    X = pd.DataFrame({"age": rng.integers(18, 80, n), "income": income,
                      "city": pd.Series(rng.choice(["Lyon", "Nice", "Paris"], n), dtype="str"), "member": rng.random(n) < 0.4})
    y = ((X["income"] - 50_000) / 15_000 + 0.8 * X["member"] + rng.normal(0, 0.5, n) > 0).astype("int64")
    return X, y

@pytest.fixture
def model_ws(sqlite_ws):
    "loans/1 registered in a fresh workspace and promoted to production; yields (workspace, fitted model)."
    X, y = loans(2_000)
    pre = ColumnTransformer([("num", StandardScaler(), ["age", "income"]), ("city", OneHotEncoder(), ["city"]), ("member", "passthrough", ["member"])])
    model = make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(X, y)
    register(model, "loans", X=X, y=y)
    promote("loans", 1, "production")
    return sqlite_ws, model


def scored_batch(n: int) -> Scored:
    X = pd.DataFrame({"x": np.arange(n, dtype="float64")})
    return Scored(X, np.arange(n) % 2, np.full((n, 2), 0.5), [0, 1])


# ---------------------------------------------------------------- the log

def test_concurrent_appends_all_reach_the_log(sqlite_ws):
    plog = PredictionLog(sqlite_ws, flush_rows=500, flush_interval=0.05)
    def worker(k: int):
        for i in range(150): plog.append("m", 1 + k % 2, f"w{k}-{i}", scored_batch(1 + i % 4))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    plog.close()
    per_worker = sum(1 + i % 4 for i in range(150))
    assert plog.stats == {"rows_written": 8 * per_worker, "files_written": plog.stats["files_written"], "rows_dropped": 0, "write_errors": 0}
    log = read_predictions("m", workspace=sqlite_ws)
    assert len(log) == 8 * per_worker and log["request_id"].nunique() == 8 * 150
    assert log.groupby("version").size().to_dict() == {1: 4 * per_worker, 2: 4 * per_worker}
    assert not list(predictions_root(sqlite_ws).rglob(".*"))  # no temporary file left


def test_a_failed_write_is_counted_not_raised(sqlite_ws, caplog):
    root = predictions_root(sqlite_ws)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the folder should be")
    with PredictionLog(sqlite_ws) as plog:
        assert plog.append("m", 1, "r1", scored_batch(3)) is True
    assert plog.stats == {"rows_written": 0, "files_written": 0, "rows_dropped": 3, "write_errors": 1}
    assert "could not write 3 rows of model m to the prediction log" in caplog.text


def test_versions_with_different_inputs_read_back_together(sqlite_ws):
    with PredictionLog(sqlite_ws) as plog:
        plog.append("m", 1, "a", Scored(pd.DataFrame({"x": [1.0]}), np.array([0])))
        plog.append("m", 2, "b", Scored(pd.DataFrame({"x": [2.0], "z": ["new"]}), np.array([1])))
    log = read_predictions("m", workspace=sqlite_ws)
    assert log[["request_id", "version", "x", "z", "prediction"]].astype(object).where(log.notna(), None).values.tolist() == [
        ["a", 1, 1.0, None, 0], ["b", 2, 2.0, "new", 1]]


# ---------------------------------------------------------------- batch scoring

def test_predict_file_csv_to_parquet_and_back_in_chunks(model_ws, tmp_path):
    ws, model = model_ws
    X, _ = loans(1_234, seed=1)
    X.assign(id=[f"c{i:05d}" for i in range(len(X))]).to_csv(tmp_path/"in.csv", index=False)
    res = predict_file("loans@production", tmp_path/"in.csv", tmp_path/"out.parquet", chunk_rows=100, passthrough=["id"], progress=False)
    assert (res["model"], res["version"], res["rows"], res["warnings"]) == ("loans", 1, 1_234, [])
    out = pd.read_parquet(tmp_path/"out.parquet")
    assert list(out.columns) == ["id", "age", "income", "city", "member", "prediction", "proba_0", "proba_1"]
    assert out["id"].tolist() == [f"c{i:05d}" for i in range(len(X))]
    assert out["prediction"].tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(out[["proba_0", "proba_1"]].to_numpy(), model.predict_proba(X), rtol=1e-12)
    X.to_parquet(tmp_path/"in.parquet")
    predict_file("loans/1", tmp_path/"in.parquet", tmp_path/"out.csv", chunk_rows=500, progress=False)
    back = pd.read_csv(tmp_path/"out.csv")
    assert len(back) == 1_234 and back["prediction"].tolist() == out["prediction"].tolist()
    log = read_predictions("loans", workspace=ws)
    assert log.groupby("request_id").size().sort_values().tolist() == [1_234, 1_234] and set(log["source"]) == {"batch"}
    first = log[log["request_id"] == res["job_id"]].sort_values("row")
    assert first["row"].tolist() == list(range(1_234)) and first["prediction"].tolist() == out["prediction"].tolist()


def test_a_bad_chunk_names_rows_of_the_file_and_writes_nothing(model_ws, tmp_path):
    ws, _ = model_ws
    tmp_path = tmp_path/"files"; tmp_path.mkdir()
    X, _ = loans(1_000, seed=2)
    bad = X.astype({"income": object, "city": object})
    bad.loc[[730, 745], "income"] = "unknown"
    bad.loc[760, "city"] = "Berlin"
    bad.to_csv(tmp_path/"in.csv", index=False)
    before = read_predictions(workspace=ws)
    with pytest.raises(SignatureError) as e:
        predict_file("loans@production", tmp_path/"in.csv", tmp_path/"out.csv", chunk_rows=300, progress=False)
    assert "in.csv does not match the model's signature" in str(e.value) and "nothing was written" in str(e.value)
    assert {(p["column"], p["kind"]): p["rows"] for p in e.value.problems} == {("income", "wrong_type"): [730, 745], ("city", "unseen_category"): [760]}
    assert "(rows 730, 745)" in str(e.value) and "(rows 760)" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no output, no temporary file
    assert len(read_predictions(workspace=ws)) == len(before) and not list(predictions_root(ws).rglob(".*"))


def test_predict_file_refuses_mistakes_before_writing(model_ws, tmp_path):
    tmp_path = tmp_path/"files"; tmp_path.mkdir()
    X, _ = loans(10)
    X.to_csv(tmp_path/"in.csv", index=False)
    (tmp_path/"empty.csv").write_text("age,income,city,member\n")
    cases = [(("loans@production", tmp_path/"nope.csv", tmp_path/"o.csv"), {}, DataError, "no input file at"),
             (("loans@production", tmp_path/"in.csv", tmp_path/"o.xlsx"), {}, DataError, "cannot tell the format from '.xlsx'"),
             (("loans@production", tmp_path/"in.csv", tmp_path/"in.csv"), {}, DataError, "is the input file"),
             (("loans@staging", tmp_path/"in.csv", tmp_path/"o.csv"), {}, NotFound, "has no alias 'staging'"),
             (("loans@production", tmp_path/"in.csv", tmp_path/"o.csv"), {"passthrough": ["id"]}, DataError, "passthrough columns ['id'] are not in in.csv"),
             (("loans@production", tmp_path/"empty.csv", tmp_path/"o.csv"), {}, DataError, "empty.csv has no rows to score")]
    for args, kw, exc, msg in cases:
        with pytest.raises(exc, match=None) as e: predict_file(*args, progress=False, **kw)
        assert msg in str(e.value), (msg, str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "in.csv"]


def _peak_bytes(fn) -> int:
    "Peak memory traced (Python and numpy allocations) while `fn` runs."
    tracemalloc.start()
    try: fn(); return tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()

@pytest.mark.slow
def test_predict_file_memory_is_bounded_by_the_chunk_not_the_file(model_ws, tmp_path):
    X, _ = loans(600_000, seed=3)
    X.to_csv(tmp_path/"big.csv", index=False)
    X.head(60_000).to_csv(tmp_path/"small.csv", index=False)
    score = lambda name: lambda: predict_file("loans@production", tmp_path/f"{name}.csv", tmp_path/f"{name}.parquet", chunk_rows=5_000,
                                              progress=False, log_predictions=False)
    small, big, whole = _peak_bytes(score("small")), _peak_bytes(score("big")), _peak_bytes(lambda: pd.read_csv(tmp_path/"big.csv"))
    assert pd.read_parquet(tmp_path/"big.parquet", columns=["prediction"]).shape == (600_000, 1)
    assert big < 1.5 * small, (small, big)  # ten times the rows, about the same peak
    assert big < whole / 3, (big, whole)  # well under what reading the whole file takes


# ---------------------------------------------------------------- feedback

def test_feedback_joins_served_predictions_by_request_and_row(model_ws, tmp_path):
    ws, model = model_ws
    X, y = loans(6, seed=4)
    rows = X.to_dict("records")
    with TestClient(create_app("loans@production", ws, token_env="MLWB_TEST_NO_SUCH_TOKEN")) as c:
        ids = [c.post("/predict", json=rows[:3]).json()["request_id"], c.post("/predict", json=rows[3:]).json()["request_id"]]
    fb = pd.DataFrame({"request_id": [ids[0], f"{ids[1]}:2", "unknown-id"], "label": [1, 0, 1]})
    fb.to_csv(tmp_path/"labels.csv", index=False)
    rep = feedback(tmp_path/"labels.csv")
    assert (rep.received, rep.matched, rep.n_unmatched, rep.unmatched) == (3, 2, 1, ["unknown-id"])
    log = read_predictions("loans", workspace=ws).sort_values(["time", "request_id", "row"])
    assert log["label"].astype(object).where(log["label"].notna(), None).tolist() == [1, 1, 1, None, None, 0]
    assert log["prediction"].tolist() == model.predict(X).tolist()
    feedback(pd.DataFrame({"request_id": [f"{ids[0]}:1"], "label": [0]}))  # a later correction of one row wins
    assert read_predictions("loans", workspace=ws).sort_values(["time", "request_id", "row"])["label"].tolist()[:3] == [1, 0, 1]


# ---------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_predict_and_feedback(model_ws, tmp_path):
    ws, model = model_ws
    X, _ = loans(250, seed=5)
    X.assign(id=range(250)).to_csv(tmp_path/"in.csv", index=False)
    res = mlwb("predict", "loans@production", str(tmp_path/"in.csv"), "--out", str(tmp_path/"out.parquet"), "--chunk-rows", "64",
               "--passthrough", "id", "--json", cwd=ws.root)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["rows"], info["version"]) == (250, 1)
    assert pd.read_parquet(tmp_path/"out.parquet")["prediction"].tolist() == model.predict(X).tolist()
    X.assign(age="old").to_csv(tmp_path/"bad.csv", index=False)
    res = mlwb("predict", "loans@production", str(tmp_path/"bad.csv"), "--out", str(tmp_path/"bad_out.csv"), cwd=ws.root)
    assert res.returncode == 1 and res.stderr.startswith("error: bad.csv does not match the model's signature") and "Traceback" not in res.stderr
    assert not (tmp_path/"bad_out.csv").exists()
    pd.DataFrame({"request_id": [f"{info['job_id']}:{i}" for i in range(10)], "label": [1] * 10}).to_csv(tmp_path/"fb.csv", index=False)
    res = mlwb("feedback", str(tmp_path/"fb.csv"), cwd=ws.root)
    assert res.returncode == 0 and res.stdout.strip() == "10 labels stored, 10 matched logged predictions"
    pd.DataFrame({"id": [1], "y": [0]}).to_csv(tmp_path/"wrong.csv", index=False)
    res = mlwb("feedback", str(tmp_path/"wrong.csv"), cwd=ws.root)
    assert res.returncode == 1 and "needs columns request_id and label; missing ['request_id', 'label'], found ['id', 'y']" in res.stderr

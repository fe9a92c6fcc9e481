"""The prediction server: valid requests in both shapes, a table of hostile payloads, random payloads (hypothesis),
authentication, hot reload under traffic, the prediction log after a clean shutdown, metrics, docs, a PostgreSQL smoke test."""
from __future__ import annotations

import contextlib, json, logging, os, signal, socket, subprocess, threading, time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about httpx on import
    from fastapi.testclient import TestClient

from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from conftest import MLWB, clean_env, mlwb
from mlops_workbench.config import init_workspace
from mlops_workbench.predictions import read_predictions
from mlops_workbench.registry import promote, register
from mlops_workbench.serving import create_app, serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
NO_TOKEN = "MLWB_TEST_NO_SUCH_TOKEN"  # an environment variable nobody sets: create_app(token=None) then means no auth


# ---------------------------------------------------------------- models

def loans_data(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    "A seeded loan table with every input kind a signature checks: integer, float, text category, boolean."
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.integers(18, 80, n), "income": rng.normal(50_000, 15_000, n).round(2),
                      "city": pd.Series(rng.choice(["Lyon", "Nice", "Paris"], n), dtype="str"), "member": rng.random(n) < 0.4})
    score = (X["income"] - 50_000) / 15_000 + 0.8 * X["member"] - 0.02 * (X["age"] - 50) + (X["city"] == "Paris") * 0.5
    return X, pd.Series((score + rng.normal(0, 0.5, n) > 0).astype("int64"), name="repaid")

def loans_model(C: float = 1.0):
    X, y = loans_data()
    pre = ColumnTransformer([("num", StandardScaler(), ["age", "income"]), ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                             ("member", "passthrough", ["member"])])
    return make_pipeline(pre, LogisticRegression(C=C, max_iter=1000)).fit(X, y), X, y

def register_loans(ws, C: float = 1.0, alias: str | None = "production") -> int:
    model, X, y = loans_model(C)
    mv = register(model, "loans", X=X, y=y, workspace=ws)
    if alias: promote("loans", mv.version, alias, workspace=ws)
    return mv.version

def records_of(df: pd.DataFrame) -> list[dict]: return df.to_dict("records")  # plain Python values, full precision
def split_of(df: pd.DataFrame) -> dict: return {"columns": list(df.columns), "data": [list(r.values()) for r in records_of(df)]}

ROW = {"age": 40, "income": 52_000.5, "city": "Paris", "member": True}


@pytest.fixture(scope="module")
def loans_ws(tmp_path_factory):
    "A workspace with loans/1 registered and promoted to production (shared by the read-only tests of this module)."
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("MLWB_")]: mp.delenv(k)
        ws = init_workspace(tmp_path_factory.mktemp("loans")/"ws")
        register_loans(ws)
        yield ws


@pytest.fixture(scope="module")
def client(loans_ws):
    "A TestClient on loans@production with small limits, so the limits are cheap to hit."
    app = create_app("loans@production", loans_ws, token_env=NO_TOKEN, max_body_bytes=100_000, max_rows=50, max_depth=8)
    with TestClient(app) as c: yield c


# ---------------------------------------------------------------- valid requests

def test_valid_requests_in_every_shape(client):
    model, X, _ = loans_model()
    rows = X.iloc[:5]
    want, proba = model.predict(rows).tolist(), model.predict_proba(rows)
    records, split = records_of(rows), split_of(rows)
    for body in (records, {"records": records}, split):
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["model"], out["version"], out["predictions"], out["warnings"]) == ("loans", 1, want, [])
        np.testing.assert_allclose([[p["0"], p["1"]] for p in out["probabilities"]], proba, rtol=1e-12)
        assert r.headers["x-request-id"] == out["request_id"] and len(out["request_id"]) == 32
    one = client.post("/predict", json=records[0], headers={"X-Request-ID": "order-17"}).json()  # a single record object
    assert (one["predictions"], one["request_id"]) == (want[:1], "order-17")


def test_out_of_range_is_a_warning_not_an_error(client):
    r = client.post("/predict", json=[ROW, {**ROW, "income": 10_000_000.0}])
    assert r.status_code == 200
    warns = r.json()["warnings"]
    assert [(w["column"], w["kind"], w["severity"], w["rows"]) for w in warns] == [("income", "out_of_range", "warning", [1])]


def test_regression_model_answers_without_probabilities(sqlite_ws):
    d = load_diabetes(as_frame=True)
    model = make_pipeline(StandardScaler(), Ridge()).fit(d.data, d.target)
    register(model, "diabetes", X=d.data, y=d.target)
    with TestClient(create_app("diabetes", sqlite_ws, token_env=NO_TOKEN)) as c:
        out = c.post("/predict", json=split_of(d.data.iloc[:3])).json()
    assert set(out) == {"model", "version", "request_id", "predictions", "warnings"}
    np.testing.assert_allclose(out["predictions"], model.predict(d.data.iloc[:3]), rtol=1e-12)


# ---------------------------------------------------------------- hostile payloads

def _json(obj) -> bytes: return json.dumps(obj).encode()

BAD = [  # name, body, headers, status, problem kinds (as a sorted list), a piece of the error message
    ("truncated JSON", b'[{"age": 40', {}, 400, ["invalid_json"], "invalid JSON at line 1 column 12"),
    ("NaN literal", b'[{"age": NaN}]', {}, 400, ["invalid_json"], "NaN is not valid JSON; send null"),
    ("Infinity literal", b'[{"income": Infinity}]', {}, 400, ["invalid_json"], "Infinity is not valid JSON"),
    ("empty body", b"", {}, 400, ["invalid_json"], "the body is empty"),
    ("not UTF-8", b'[{"city": "\xff\xfe"}]', {}, 400, ["invalid_json"], "not UTF-8"),
    ("5000-digit number", b'[{"age": ' + b"9" * 5000 + b"}]", {}, 400, ["invalid_json"], "Exceeds the limit (4300 digits)"),
    ("nested 9 deep", b"[" * 9 + b"]" * 9, {}, 400, ["too_deep"], "nests 9 levels deep, more than the limit of 8"),
    ("nested 5000 deep", b"[" * 5000 + b"]" * 5000, {}, 400, ["too_deep"], "nests 5000 levels deep"),
    ("body over the limit", _json([ROW] * 2000), {}, 413, ["too_large"], "more than the limit of 100,000"),
    ("too many rows", _json([ROW] * 51), {}, 413, ["too_large"], "51 rows is more than the limit of 50"),
    ("CSV content type", b"age,income\n40,1", {"content-type": "text/csv"}, 415, ["unsupported_media_type"], "'text/csv' is not JSON"),
    ("form content type", b"age=40", {"content-type": "application/x-www-form-urlencoded"}, 415, ["unsupported_media_type"], "not JSON"),
    ("a JSON string", _json("rows"), {}, 422, ["bad_shape"], "the body is a JSON str"),
    ("a JSON number", _json(3), {}, 422, ["bad_shape"], "the body is a JSON int"),
    ("unknown top-level key", _json({"rows": [ROW]}), {}, 422, ["bad_shape"], "an object with keys ['rows'] is neither records nor the split orient"),
    ("records and extra key", _json({"records": [ROW], "model": "x"}), {}, 422, ["bad_shape"], "keys ['model', 'records']"),
    ("records not a list", _json({"records": "x"}), {}, 422, ["bad_shape"], '"records" must be a list of objects'),
    ("records that are not objects", _json([ROW, 3, [1]]), {}, 422, ["bad_shape"], "2 records are not objects of column: value pairs (rows [1, 2])"),
    ("no rows", _json([]), {}, 422, ["bad_shape"], "no rows"),
    ("split: ragged rows", _json({"columns": list(ROW), "data": [list(ROW.values()), [40, 1.0]]}), {}, 422, ["bad_shape"],
     '1 rows of "data" are not lists of 4 values, one per column (rows [1])'),
    ("split: column names not text", _json({"columns": ["age", 1, "city", "member"], "data": [[40, 1.0, "Paris", True]]}), {}, 422,
     ["bad_shape"], "column names must be text; got [1]"),
    ("split: duplicate columns", _json({"columns": ["age", "age", "city", "member"], "data": [[40, 41, "Paris", True]]}), {}, 422,
     ["bad_shape"], "columns ['age'] appear more than once"),
    ("split: data not a list", _json({"columns": list(ROW), "data": {"a": 1}}), {}, 422, ["bad_shape"], '"data" must be a list of rows'),
    ("missing column", _json([{k: v for k, v in ROW.items() if k != "income"}]), {}, 422, ["missing_column"], "column 'income' is missing"),
    ("extra column", _json([{**ROW, "zip": "69001"}]), {}, 422, ["unexpected_column"], "column 'zip' is not an input of the model"),
    ("text in a number column", _json([{**ROW, "income": "a lot"}]), {}, 422, ["wrong_type"], "column 'income': 1 value(s) are not numbers, e.g. 'a lot'"),
    ("boolean in a number column", _json([{**ROW, "age": True}]), {}, 422, ["wrong_type"], "column 'age'"),
    ("fraction in an integer column", _json([{**ROW, "age": 40.5}]), {}, 422, ["wrong_type"], "not whole numbers"),
    ("number for a boolean", _json([{**ROW, "member": 7}]), {}, 422, ["wrong_type"], "column 'member'"),
    ("null where none was seen", _json([ROW, {**ROW, "city": None}]), {}, 422, ["null_not_allowed"], "column 'city': 1 missing value(s) (rows 1)"),
    ("unseen category", _json([{**ROW, "city": "Berlin"}]), {}, 422, ["unseen_category"], "never seen in training, e.g. 'Berlin'"),
    ("array in a cell", _json([{**ROW, "city": ["Paris"]}]), {}, 422, ["wrong_type"], "column 'city': 1 value(s) are an array or object"),
    ("object in a cell", _json([{**ROW, "income": {"value": 1}}]), {}, 422, ["wrong_type"], "an array or object, not a single value"),
    ("integer beyond 64 bits", _json([{**ROW, "age": 2**70}]), {}, 422, ["wrong_type"], "an integer beyond 64 bits"),
    ("number beyond the float range", b'[{"age": 40, "income": 1e400, "city": "Paris", "member": true}]', {}, 422, ["wrong_type"],
     "a number beyond the float range"),
    ("text '1e400' in an integer column", _json([{**ROW, "age": "1e400"}]), {}, 422, ["wrong_type"],
     "column 'age': 1 value(s) are infinite or beyond the float range, e.g. '1e400' (rows 0)"),
    ("text '-inf' in a number column", _json([ROW, {**ROW, "income": "-inf"}]), {}, 422, ["wrong_type"], "column 'income': 1 value(s) are infinite"),
    ("every problem at once", _json([{"age": "old", "city": "Berlin", "member": None, "zip": 1}]), {}, 422,
     ["missing_column", "null_not_allowed", "unexpected_column", "unseen_category", "wrong_type"], "error(s)"),
]


def test_the_table_has_at_least_20_kinds():
    assert len(BAD) >= 20 and len({name for name, *_ in BAD}) == len(BAD)


@pytest.mark.parametrize("name,body,headers,status,kinds,message", BAD, ids=[b[0] for b in BAD])
def test_bad_payload_is_a_4xx_naming_the_problem(client, name, body, headers, status, kinds, message):
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    out = r.json()
    assert sorted(p["kind"] for p in out["problems"]) == kinds
    assert message in out["error"] or any(message in p["message"] for p in out["problems"]), out
    assert out["request_id"] == r.headers["x-request-id"]
    assert all(p["severity"] == "error" for p in out["problems"] if p["kind"] != "out_of_range")


def test_every_problem_is_named_with_its_column_and_rows(client):
    rows = [ROW, {**ROW, "age": "x", "city": "Rome"}, {**ROW, "city": "Oslo", "income": None}]
    out = client.post("/predict", json=rows).json()
    got = {(p["column"], p["kind"]): p["rows"] for p in out["problems"]}
    assert got == {("age", "wrong_type"): [1], ("city", "unseen_category"): [1, 2], ("income", "null_not_allowed"): [2]}


def test_a_body_streamed_without_length_is_cut_at_the_limit(client):
    chunks = (b'[' + b'{"age": 40},' * 1000 for _ in range(20))  # no Content-Length: chunked transfer
    r = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "more than 100,000 bytes" in r.json()["error"]


def test_other_routes_answer_json_errors(client):
    r = client.get("/predictions")
    assert r.status_code == 404 and r.json()["problems"][0]["kind"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and "GET /predict: Method Not Allowed" in r.json()["error"]


# ---------------------------------------------------------------- random payloads

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["Paris", "Lyon", "40", "1e400", "true", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
column_names = st.sampled_from(list(ROW) + ["zip", "", "Age"])
records = st.lists(st.dictionaries(column_names, scalars | json_values, max_size=6), max_size=6)
split = st.builds(lambda cols, data: {"columns": cols, "data": data},
                  st.lists(column_names | st.integers(0, 3), max_size=6), st.lists(st.lists(scalars, max_size=6), max_size=6))
def mostly(good): return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: good if ok else scalars)  # the right kind 5 times in 6
plausible = {"age": mostly(st.integers(18, 79)), "income": mostly(st.floats(10_000, 90_000)),
             "city": mostly(st.sampled_from(["Lyon", "Nice", "Paris"])), "member": mostly(st.booleans())}
good_row = st.fixed_dictionaries(plausible)
odd_row = st.fixed_dictionaries({k: v for k, v in plausible.items() if k != "age"}, optional={"age": plausible["age"], "zip": scalars})
near_valid = st.lists(st.one_of(good_row, good_row, good_row, good_row, odd_row), min_size=1, max_size=4)
payloads = st.one_of(json_values, records, records.map(lambda r: {"records": r}), split, near_valid, near_valid,
                     near_valid.map(lambda rows: split_of(pd.DataFrame(rows)) if rows else rows))
as_json = payloads.map(lambda p: json.dumps(p).encode())  # allow_nan: NaN and Infinity literals do appear
bodies = st.one_of(as_json, as_json, as_json, as_json, st.binary(max_size=64), payloads.map(lambda p: json.dumps(p).encode()[:-1]))
content_types = st.sampled_from([None] * 6 + ["application/json", "text/plain", "application/merge-patch+json", "application/json; charset=latin-1"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, ctype=content_types)
def test_random_payloads_never_get_a_5xx(client, body, ctype):
    r = client.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
    event(f"status {r.status_code}")
    assert r.status_code in (200, 400, 413, 415, 422), (r.status_code, body[:200], r.text[:500])
    out = r.json()
    assert out["request_id"] == r.headers["x-request-id"]
    if r.status_code != 200: assert out["problems"] and out["error"]


# ---------------------------------------------------------------- Arrow IPC streams

ARROW = "application/vnd.apache.arrow.stream"


def arrow_of(table: pa.Table, chunk: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w: w.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


def loans_table(n: int = 5, **changes) -> pa.Table:
    X, _ = loans_data()
    t = pa.Table.from_pandas(X.iloc[:n], preserve_index=False)
    for name, col in changes.items():
        t = t.set_column(t.column_names.index(name), name, col) if name in t.column_names else t.append_column(name, col)
    return t


def test_arrow_in_json_or_arrow_out(client):
    model, X, _ = loans_model()
    rows = X.iloc[:7]
    want, proba = model.predict(rows).tolist(), model.predict_proba(rows)
    body = arrow_of(pa.Table.from_pandas(rows, preserve_index=False), chunk=3)  # three record batches
    out = client.post("/predict", content=body, headers={"Content-Type": ARROW}).json()
    assert (out["predictions"], out["warnings"]) == (want, [])
    np.testing.assert_allclose([[p["0"], p["1"]] for p in out["probabilities"]], proba, rtol=1e-12)
    r = client.post("/predict", content=body, headers={"Content-Type": ARROW, "Accept": ARROW, "X-Request-ID": "arrow-1"})
    assert (r.status_code, r.headers["content-type"], r.headers["x-request-id"]) == (200, ARROW, "arrow-1")
    t = pa.ipc.open_stream(r.content).read_all()
    assert t.column_names == ["prediction", "proba_0", "proba_1"] and t["prediction"].to_pylist() == want
    np.testing.assert_allclose(np.column_stack([t["proba_0"].to_numpy(), t["proba_1"].to_numpy()]), proba, rtol=1e-12)
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta == {"mlwb.model": "loans", "mlwb.version": "1", "mlwb.request_id": "arrow-1", "mlwb.warnings": "[]"}
    # the columns in another order, the city dictionary-encoded, the income as a decimal, the age as float: all read as the signature wants
    odd = pa.table({"member": rows["member"], "city": pa.array(rows["city"]).dictionary_encode(),
                    "income": pa.array([str(round(v, 2)) for v in rows["income"]]).cast(pa.decimal128(12, 2)), "age": rows["age"].astype(float)})
    assert client.post("/predict", content=arrow_of(odd), headers={"Content-Type": ARROW}).json()["predictions"] == want
    # a JSON client asking for Arrow gets Arrow too
    r = client.post("/predict", json=records_of(rows), headers={"Accept": ARROW})
    assert r.headers["content-type"] == ARROW and pa.ipc.open_stream(r.content).read_all()["prediction"].to_pylist() == want


def test_arrow_out_of_range_warning_is_in_the_metadata(client):
    t = loans_table(2, income=pa.array([52_000.5, 10_000_000.0]))
    r = client.post("/predict", content=arrow_of(t), headers={"Content-Type": ARROW, "Accept": ARROW})
    warns = json.loads(pa.ipc.open_stream(r.content).read_all().schema.metadata[b"mlwb.warnings"])
    assert [(w["column"], w["kind"], w["rows"]) for w in warns] == [("income", "out_of_range", [1])]


BAD_ARROW = [  # name, body, status, problem kinds (sorted), a piece of the error message
    ("not Arrow", b'[{"age": 40}]', 400, ["invalid_arrow"], "the body is not an Arrow IPC stream"),
    ("empty body", b"", 400, ["invalid_arrow"], "the body is empty"),
    ("cut short", arrow_of(loans_table(5))[:-40], 400, ["invalid_arrow"], "not an Arrow IPC stream"),
    ("Arrow file, not stream", None, 400, ["invalid_arrow"], "an Arrow file, pyarrow.ipc.new_file, is not a stream"),
    ("no rows", arrow_of(loans_table(0)), 422, ["bad_shape"], "no rows"),
    ("too many rows", arrow_of(loans_table(60), chunk=20), 413, ["too_large"], "more than 50 rows"),
    ("duplicate columns", arrow_of(pa.Table.from_arrays([pa.array([40]), pa.array([41])], names=["age", "age"])), 422, ["bad_shape"],
     "columns ['age'] appear more than once"),
    ("list column", arrow_of(loans_table(1, city=pa.array([["Paris"]]))), 422, ["wrong_type"], "column 'city' has Arrow type list<item: string>"),
    ("struct column", arrow_of(loans_table(1, income=pa.array([{"v": 1.0}]))), 422, ["wrong_type"], "its cells are not single values"),
    ("missing column", arrow_of(loans_table(2).drop_columns(["income"])), 422, ["missing_column"], "column 'income' is missing"),
    ("extra column", arrow_of(loans_table(2, zip=pa.array(["1", "2"]))), 422, ["unexpected_column"], "column 'zip' is not an input of the model"),
    ("text in a number column", arrow_of(loans_table(2, income=pa.array(["a lot", "1"]))), 422, ["wrong_type"], "e.g. 'a lot' (rows 0)"),
    ("text '1e400' in an integer column", arrow_of(loans_table(2, age=pa.array(["40", "1e400"]))), 422, ["wrong_type"],
     "column 'age': 1 value(s) are infinite or beyond the float range"),
    ("infinity in a float column", arrow_of(loans_table(3, income=pa.array([1.0, float("inf"), float("-inf")]))), 422, ["wrong_type"],
     "column 'income': 2 value(s) are infinite or beyond the float range, e.g. inf (rows 1, 2)"),
    ("beyond 64 bits in an integer column", arrow_of(loans_table(1, age=pa.array([2**64 - 1], pa.uint64()))), 422, ["wrong_type"],
     "are an integer beyond 64 bits"),
    ("fraction in an integer column", arrow_of(loans_table(2, age=pa.array([40.0, 40.5]))), 422, ["wrong_type"], "not whole numbers"),
    ("boolean as numbers", arrow_of(loans_table(2, member=pa.array([2, 0]))), 422, ["wrong_type"], "column 'member'"),
    ("null where none was seen", arrow_of(loans_table(2, city=pa.array(["Paris", None]))), 422, ["null_not_allowed"], "(rows 1)"),
    ("null integer", arrow_of(loans_table(2, age=pa.array([None, 40], pa.int64()))), 422, ["null_not_allowed"], "column 'age'"),
    ("unseen category", arrow_of(loans_table(2, city=pa.array(["Paris", "Berlin"]).dictionary_encode())), 422, ["unseen_category"], "'Berlin'"),
    ("binary text", arrow_of(loans_table(1, city=pa.array([b"Paris"]))), 422, ["wrong_type"], "column 'city'"),
    ("every problem at once", arrow_of(pa.table({"age": ["old"], "city": ["Berlin"], "member": pa.array([None], pa.bool_()), "zip": [1]})), 422,
     ["missing_column", "null_not_allowed", "unexpected_column", "unseen_category", "wrong_type"], "error(s)"),
]


def _arrow_file() -> bytes:
    sink = pa.BufferOutputStream()
    t = loans_table(2)
    with pa.ipc.new_file(sink, t.schema) as w: w.write_table(t)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("name,body,status,kinds,message", BAD_ARROW, ids=[b[0] for b in BAD_ARROW])
def test_bad_arrow_is_a_4xx_naming_the_problem(client, name, body, status, kinds, message):
    r = client.post("/predict", content=_arrow_file() if body is None else body, headers={"Content-Type": ARROW, "Accept": ARROW})
    assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), r.text
    out = r.json()
    assert sorted(p["kind"] for p in out["problems"]) == kinds
    assert message in out["error"] or any(message in p["message"] for p in out["problems"]), out
    assert out["request_id"] == r.headers["x-request-id"]


def test_arrow_and_json_bodies_under_the_wrong_content_type(client):
    r = client.post("/predict", content=arrow_of(loans_table(1)), headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["problems"][0]["kind"] == "invalid_json"
    r = client.post("/predict", content=arrow_of(loans_table(1)), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 415 and "or an Arrow IPC stream as application/vnd.apache.arrow.stream" in r.json()["error"]


arrow_columns = st.sampled_from(list(ROW) + ["zip", "Age"])
arrow_arrays = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=3, max_size=3).map(lambda v: pa.array(v, pa.int64())),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=3, max_size=3).map(lambda v: pa.array(v, pa.float64())),
    st.lists(st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["Paris", "Lyon", "40", "inf"])), min_size=3, max_size=3).map(pa.array),
    st.lists(st.one_of(st.none(), st.booleans()), min_size=3, max_size=3).map(lambda v: pa.array(v, pa.bool_())),
    st.lists(st.sampled_from(["Paris", "Nice", "Rome"]), min_size=3, max_size=3).map(lambda v: pa.array(v).dictionary_encode()),
    st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=3, max_size=3).map(pa.array),
    st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3).map(lambda v: pa.array(v, pa.uint64())),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(columns=st.one_of(st.dictionaries(arrow_columns, arrow_arrays, min_size=1, max_size=6),
                         st.dictionaries(arrow_columns, arrow_arrays, max_size=2).map(lambda c: {**dict(zip(list(ROW), loans_table(3).columns)), **c})),
       cut=st.sampled_from([None] * 5 + [10, 100]))
def test_random_arrow_tables_never_get_a_5xx(client, columns, cut):
    body = arrow_of(pa.table(columns))
    if cut: body = body[:-cut]
    r = client.post("/predict", content=body, headers={"Content-Type": ARROW, "Accept": ARROW})
    event(f"status {r.status_code}")
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:500])
    if r.status_code == 200: assert pa.ipc.open_stream(r.content).read_all().num_rows == 3
    else: assert r.json()["problems"] and r.json()["error"]


def test_server_is_up_after_random_payloads(client):
    assert client.get("/health").json()["status"] == "ok"
    assert 'status="500"' not in client.get("/metrics").text


# ---------------------------------------------------------------- errors of ours, metrics, docs

def test_a_bug_is_a_logged_500_with_the_request_id(loans_ws, caplog):
    app = create_app("loans@production", loans_ws, token_env=NO_TOKEN, log_predictions=False)
    class Broken:
        def predict(self, X): raise RuntimeError("boom")
        predict_proba = predict
    app.state.live.predictor.model = Broken()
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="mlops_workbench.serving"):
        r = c.post("/predict", json=[ROW], headers={"X-Request-ID": "bug-1"})
        metrics = c.get("/metrics").text
    assert r.status_code == 500 and r.json()["request_id"] == "bug-1" and "this is a bug" in r.json()["error"]
    assert "internal error answering request bug-1" in caplog.text and "RuntimeError: boom" in caplog.text
    assert 'mlwb_rejected_requests_total{kind="internal"} 1' in metrics


def test_metrics_count_requests_latency_and_rejections(loans_ws):
    with TestClient(create_app("loans@production", loans_ws, token_env=NO_TOKEN, log_predictions=False)) as c:
        for _ in range(3): c.post("/predict", json=[ROW, ROW])
        c.post("/predict", json=[{**ROW, "city": "Rome"}])
        c.post("/predict", content=b"{")
        text = c.get("/metrics").text
    lines = dict(l.rsplit(" ", 1) for l in text.splitlines() if not l.startswith("#"))
    assert lines['mlwb_requests_total{endpoint="/predict",method="POST",status="200"}'] == "3"
    assert lines['mlwb_requests_total{endpoint="/predict",method="POST",status="422"}'] == "1"
    assert lines['mlwb_request_duration_seconds_count{endpoint="/predict"}'] == "5"
    assert lines['mlwb_request_duration_seconds_bucket{endpoint="/predict",le="+Inf"}'] == "5"
    assert float(lines['mlwb_request_duration_seconds_sum{endpoint="/predict"}']) > 0
    assert lines['mlwb_rejected_requests_total{kind="unseen_category"}'] == "1" and lines['mlwb_rejected_requests_total{kind="invalid_json"}'] == "1"
    assert lines["mlwb_predicted_rows_total"] == "6" and lines['mlwb_model_version{model="loans"}'] == "1"
    assert "# TYPE mlwb_request_duration_seconds histogram" in text


def test_metadata_and_openapi_docs(client):
    meta = client.get("/metadata").json()
    assert (meta["model"], meta["version"], meta["ref"]) == ("loans", 1, "loans@production")
    assert meta["signature"]["columns"] == list(ROW) and meta["signature"]["output"]["classes"] == [0, 1]
    assert meta["input_schema"]["properties"]["city"]["enum"] == ["Lyon", "Nice", "Paris"]
    assert meta["lineage"]["datasets"][0]["n_rows"] == 400
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"records", "split"} and set(body["examples"]["records"]["value"][0]) == set(ROW)
    assert {"200", "400", "413", "415", "422"} <= set(doc["paths"]["/predict"]["post"]["responses"])
    example = body["examples"]["records"]["value"]
    assert client.post("/predict", json=example).status_code == 200  # the documented example works
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()


# ---------------------------------------------------------------- authentication

def test_token_guards_every_endpoint_but_health(loans_ws):
    app = create_app("loans@production", loans_ws, token="s3cret-token", log_predictions=False)
    with TestClient(app) as c:
        def status(method, path, auth=None, **kw):
            return c.request(method, path, headers={"Authorization": auth} if auth else {}, **kw).status_code
        assert status("POST", "/predict", json=[ROW]) == 401
        assert status("POST", "/predict", "Bearer wrong", json=[ROW]) == 401
        assert status("POST", "/predict", "Basic s3cret-token", json=[ROW]) == 401
        assert status("POST", "/predict", "Bearer s3cret-token", json=[ROW]) == 200
        assert status("POST", "/predict", "bearer s3cret-token", json=[ROW]) == 200
        for path in ("/metadata", "/metrics", "/openapi.json", "/docs"):
            assert (status("GET", path), status("GET", path, "Bearer s3cret-token")) == (401, 200), path
        assert status("GET", "/health") == 200
        r = c.post("/predict", json=[ROW])
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["problems"][0]["kind"] == "unauthorized"


def test_token_from_environment_and_no_token(loans_ws, monkeypatch):
    monkeypatch.setenv("MLWB_SERVE_TOKEN", "from-env")
    with TestClient(create_app("loans@production", loans_ws, log_predictions=False)) as c:
        assert c.post("/predict", json=[ROW]).status_code == 401
        assert c.post("/predict", json=[ROW], headers={"Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("MLWB_SERVE_TOKEN")
    with TestClient(create_app("loans@production", loans_ws, log_predictions=False)) as c:
        assert c.post("/predict", json=[ROW]).status_code == 200


def test_binding_beyond_loopback_without_token_warns(loans_ws, monkeypatch, caplog):
    import uvicorn
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("MLWB_SERVE_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="mlops_workbench.serving"):
        serve("loans@production", host="0.0.0.0", port=9999, workspace=loans_ws, log_predictions=False)
        serve("loans@production", host="0.0.0.0", port=9999, workspace=loans_ws, token="t0ken", log_predictions=False)
        serve("loans@production", workspace=loans_ws, log_predictions=False)
    assert caplog.text.count("serving on 0.0.0.0 without a token") == 1
    assert [(c["host"], c["port"]) for c in calls] == [("0.0.0.0", 9999), ("0.0.0.0", 9999), ("127.0.0.1", 8000)]


# ---------------------------------------------------------------- real servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlwb_serve(ws, ref: str, env: dict | None = None, *args: str):
    "`mlwb serve` in a subprocess on a free port; yields (base URL, process) once /health answers."
    port = free_port()
    proc = subprocess.Popen([str(MLWB), "-W", str(ws.root), "serve", ref, "--port", str(port), "--log-level", "warning", *args],
                            env=clean_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"mlwb serve exited with {proc.returncode}: {proc.stderr.read()}"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill(); proc.wait()


@contextlib.contextmanager
def uvicorn_thread(app):
    "The app on a real uvicorn server in a thread of this process; stopped (lifespan shutdown included) at the end."
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try: yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_real_server_with_token_logs_every_request_by_a_clean_shutdown(sqlite_ws):
    register_loans(sqlite_ws)
    sent = {}
    with mlwb_serve(sqlite_ws, "loans@production", {"MLWB_SERVE_TOKEN": "tok-123"}) as (url, proc):
        with httpx.Client(base_url=url) as http:
            assert http.post("/predict", json=[ROW]).status_code == 401
            assert http.get("/health").status_code == 200
            for i in range(40):
                rows = [ROW] * (1 + i % 3)
                r = http.post("/predict", json=rows, headers={"Authorization": "Bearer tok-123", "X-Request-ID": f"req-{i}"})
                assert r.status_code == 200, r.text
                sent[r.json()["request_id"]] = len(rows)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM, proc.stderr.read()  # uvicorn shuts down, then dies of the signal it caught
        assert "Traceback" not in proc.stderr.read()
    log = read_predictions("loans", workspace=sqlite_ws)
    assert log.groupby("request_id").size().to_dict() == sent  # every request, every row, nothing else
    assert set(log["version"]) == {1} and set(log["source"]) == {"serve"}
    assert log[list(ROW)].drop_duplicates().to_dict("records") == [ROW]


@pytest.mark.slow
def test_real_server_without_token_and_unknown_model(sqlite_ws):
    register_loans(sqlite_ws)
    with mlwb_serve(sqlite_ws, "loans@production", {"MLWB_SERVE_TOKEN": "tok"}, "--token-env", "MLWB_OTHER_TOKEN") as (url, _):
        assert httpx.post(url + "/predict", json=[ROW]).status_code == 200  # --token-env names an unset variable: no auth
    res = mlwb("-W", str(sqlite_ws.root), "serve", "nope@production", cwd=sqlite_ws.root)
    assert res.returncode == 1 and res.stderr.startswith("error: no model named 'nope'") and "Traceback" not in res.stderr


@pytest.mark.slow
def test_hot_reload_under_continuous_traffic_drops_nothing(sqlite_ws):
    register_loans(sqlite_ws)
    app = create_app("loans@production", sqlite_ws, token_env=NO_TOKEN, reload_interval=0.1)
    stop, seen = threading.Event(), {0: [], 1: []}

    def traffic(k: int, url: str):
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/predict", json=[ROW, {**ROW, "age": 30 + k}])
                    seen[k].append((r.status_code, r.json().get("version")))
                except Exception as e: seen[k].append((repr(e), None))

    with uvicorn_thread(app) as url:
        threads = [threading.Thread(target=traffic, args=(k, url)) for k in seen]
        for t in threads: t.start()
        time.sleep(0.5)
        v2 = register_loans(sqlite_ws, C=0.05, alias=None)
        promote("loans", v2, "production", workspace=sqlite_ws)
        deadline = time.monotonic() + 30
        while sum(v == 2 for k in seen for _, v in seen[k]) < 40 and time.monotonic() < deadline: time.sleep(0.05)
        stop.set()
        for t in threads: t.join(30)
    answers = seen[0] + seen[1]
    assert len(answers) > 50 and {s for s, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
    for k in seen:  # each client sees version 1, then version 2, never back
        versions = [v for _, v in seen[k]]
        assert versions == sorted(versions) and set(versions) == {1, 2}, versions
    log = read_predictions("loans", workspace=sqlite_ws)
    assert len(log) == 2 * len(answers) and log.groupby("version").size().to_dict() == {
        v: 2 * sum(1 for _, w in answers if w == v) for v in (1, 2)}


# ---------------------------------------------------------------- PostgreSQL

def test_postgres_smoke(pg_ws):
    register_loans(pg_ws)
    with TestClient(create_app("loans@production", pg_ws, token_env=NO_TOKEN)) as c:
        r = c.post("/predict", json=[ROW, ROW])
        assert r.status_code == 200 and r.json()["version"] == 1
        assert c.post("/predict", json=[{**ROW, "city": "Rome"}]).status_code == 422
    assert len(read_predictions("loans", workspace=pg_ws)) == 2

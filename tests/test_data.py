"""Data module on hostile and real data: loading, schemas through JSON, validation counts, cleaning, splits."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import pytest

from mlops_workbench.data import (coerce_types, drop_duplicates, fill_missing, fingerprint, infer_schema, load, load_schema,
                                  save_schema, split, validate)
from mlops_workbench.errors import DataError


@pytest.fixture
def reference() -> pd.DataFrame:
    "A frame with every kind of column a schema must describe."
    n = 200
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "income": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50_000, 10_000, n)),
        "city": pd.Series(rng.choice(["Oslo", "Lima", "Kyiv"], n), dtype="str"),
        "plan": pd.Categorical(rng.choice(["basic", "pro"], n), categories=["basic", "pro", "team"]),
        "signup": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
        "active": rng.random(n) < 0.5,
        "note": pd.Series([f"free text {i}" for i in range(n)], dtype="str"),
    })


def test_schema_round_trips_through_json(reference, tmp_path):
    schema = infer_schema(reference)
    back = load_schema(save_schema(schema, tmp_path/"s.json"))
    assert back.to_json() == schema.to_json()
    assert validate(reference, back).ok
    assert back.columns["income"].nullable and not back.columns["age"].nullable
    assert back.columns["plan"].checks[0].statistics["allowed_values"] == ["basic", "pro", "team"]
    assert back.columns["city"].checks[0].statistics["allowed_values"] == ["Kyiv", "Lima", "Oslo"]
    assert back.columns["note"].checks == []  # 200 distinct values: free text, no allowed-values check
    rng = back.columns["age"].checks[0].statistics
    assert (rng["min_value"], rng["max_value"]) == (reference.age.min(), reference.age.max())


def test_every_kind_of_violation_with_its_count(reference):
    schema = infer_schema(reference)
    batch = reference.copy()
    batch.loc[:4, "age"] = 150                          # 5 out of range
    batch.loc[:2, "city"] = "Rome"                      # 3 unknown categories
    batch["plan"] = batch["plan"].cat.add_categories(["vip"])
    batch.loc[:6, "plan"] = "vip"                        # 7 unknown plan levels
    batch.loc[:1, "age"] = np.nan                        # 2 missing where none allowed (age becomes float)
    batch = batch.drop(columns=["note"]).assign(extra=1)  # one missing column, one unknown column
    report = validate(batch, schema)
    got = report.violations.set_index(["column", "check"])["failing"].to_dict()
    assert got[("age", "missing values not allowed")] == 2
    assert got[("age", f"in_range({reference.age.min()}, {reference.age.max()})")] == 3  # rows 2-4: 150
    assert got[("city", "isin(['Kyiv', 'Lima', 'Oslo'])")] == 3
    assert sum(v for (c, k), v in got.items() if c == "plan" and k.startswith("isin")) == 7
    assert got[("note", "column missing")] == 1 and got[("extra", "column not in schema")] == 1
    assert any(c == "age" and k.startswith("dtype") for c, k in got)  # float64 where int64 was inferred
    assert not report.ok and "violation" in str(report)
    json.dumps(report.to_dict(), allow_nan=False)


def test_unparseable_csv_names_file_and_line(tmp_path):
    f = tmp_path/"bad.csv"
    f.write_text("a,b\n1,2\n3,4\n5,6,7\n")
    with pytest.raises(DataError) as e: load(f)
    assert str(f) in str(e.value) and "line 4" in str(e.value)
    (tmp_path/"latin.csv").write_bytes("name\nZürich\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"): load(tmp_path/"latin.csv")
    (tmp_path/"empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"): load(tmp_path/"empty.csv")


def test_csv_round_trip_keeps_categories_and_datetimes_through_the_schema(reference, tmp_path):
    reference.to_csv(tmp_path/"ref.csv", index=False)
    back = load(tmp_path/"ref.csv", schema=infer_schema(reference))
    assert back["plan"].dtype == reference["plan"].dtype
    assert back["signup"].dtype == reference["signup"].dtype
    assert fingerprint(back[["age", "plan", "signup"]]) == fingerprint(reference[["age", "plan", "signup"]])


def test_parquet_keeps_every_dtype(reference, tmp_path):
    reference.to_parquet(tmp_path/"ref.parquet")
    pd.testing.assert_frame_equal(load(tmp_path/"ref.parquet"), reference)


def test_cleaning_reports_what_changed():
    df = pd.DataFrame({"x": ["1", "2", "oops", None, "1"], "y": [1.0, np.nan, 3.0, np.nan, 1.0],
                       "c": pd.Series(["a", None, "b", "b", "a"], dtype="str")})
    coerced = coerce_types(df, {"x": "float64"})
    assert coerced.df["x"].iloc[[0, 1, 4]].tolist() == [1.0, 2.0, 1.0] and coerced.df["x"].iloc[2:4].isna().all()
    assert coerced.changes.loc[0, "detail"].startswith("1 value(s) could not convert")
    filled = fill_missing(coerced.df, strategy="mean")
    assert filled.df["y"].tolist() == [1.0, 5 / 3, 3.0, 5 / 3, 1.0]
    assert filled.df["c"].tolist()[1] in ("a", "b")
    counts = filled.changes.set_index("column")["count"].to_dict()
    assert counts == {"x": 2, "y": 2, "c": 1}
    deduped = drop_duplicates(pd.concat([df, df]))
    assert len(deduped.df) == len(df.drop_duplicates()) and deduped.changes.loc[0, "count"] == len(df) + 1
    assert df["y"].isna().sum() == 2  # input untouched


def test_splits_are_reproducible_and_respect_time_and_groups():
    tips = px.data.tips()
    a = split(tips, "smoker", seed=3)
    b = split(tips, "smoker", seed=3)
    pd.testing.assert_frame_equal(a[0], b[0])
    assert not a[0].index.intersection(a[1].index).size
    assert not split(tips, "smoker", seed=4)[1].index.equals(a[1].index)
    stocks = px.data.stocks().assign(date=lambda d: pd.to_datetime(d.date))
    past, future = split(stocks, "AAPL", by="time", test_size=0.25)
    assert past.date.max() < future.date.min() and len(future) == round(len(stocks) * 0.25)
    tr, te = split(tips, "tip", by="group", group_column="day", seed=0)
    assert set(tr.day).isdisjoint(te.day)
    for bad, msg in [(dict(by="weekly"), "is not one of"), (dict(test_size=1.5), "between 0 and 1"),
                     (dict(by="group"), "needs group_column")]:
        with pytest.raises(DataError, match=msg): split(tips, "tip", **bad)

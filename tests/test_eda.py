"""`mlops_workbench.eda`: profile numbers against pandas/numpy/scipy computed directly, flags, figures, the report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
import plotly.express as px
import plotly.graph_objects as go
import pytest
from scipy.stats import chi2_contingency
from sklearn.datasets import load_diabetes, load_wine

from mlops_workbench import eda
from mlops_workbench.errors import DataError


# ---------------------------------------------------------------- data

@pytest.fixture(scope="module")
def messy() -> pd.DataFrame:
    "Every kind of trouble in one frame, seeded."
    rng = np.random.default_rng(42)
    n = 5_000
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.2] = np.nan
    inf = rng.lognormal(size=n)
    inf[[3, 50, 700]] = [np.inf, -np.inf, np.inf]
    return pd.DataFrame({
        "x": x,
        "inf": inf,
        "nullable": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(-5, 5, n)), dtype="Int64"),
        "all_null": np.full(n, np.nan),
        "all_null_obj": pd.Series([None] * n, dtype=object),
        "mixed": pd.Series([1, "a", 2.5, None, (1, 2), [3]] * (n // 6) + [None] * (n % 6), dtype=object),
        "utc": pd.Series(pd.date_range("2023-03-25", periods=n, freq="37min", tz="Europe/Paris")),
        "naive": pd.Series(pd.date_range("2020-01-01", periods=n, freq="D")).where(lambda s: s.index % 7 != 0),
        "s": pd.Series(rng.choice(["red", "green", "blue", None], n), dtype="str"),
        "cat": pd.Categorical(rng.integers(0, 10_000, n)),
        "flag": rng.random(n) < 0.3,
    })


@pytest.fixture(scope="module")
def prof(messy):
    return eda.profile(messy)


def finite(s: pd.Series) -> pd.Series:
    s = s.astype("float64")
    return s[np.isfinite(s)]


# ---------------------------------------------------------------- kinds and exact statistics

def test_kinds(prof):
    assert prof.table["kind"].to_dict() == {
        "x": "numeric", "inf": "numeric", "nullable": "numeric", "all_null": "numeric", "all_null_obj": "categorical",
        "mixed": "other", "utc": "datetime", "naive": "datetime", "s": "categorical", "cat": "categorical",
        "flag": "boolean"}


def test_counts_missing_unique_equal_pandas(messy, prof):
    t = prof.table
    assert t["count"].tolist() == messy.count().tolist()
    assert t["missing"].tolist() == messy.isna().sum().tolist()
    hashable = messy.drop(columns="mixed")
    assert t.loc[hashable.columns, "unique"].tolist() == hashable.nunique().tolist()
    assert t.loc["mixed", "unique"] == messy["mixed"].dropna().map(repr).nunique() == 5
    assert np.allclose(t["missing_pct"].astype(float), messy.isna().mean())


@pytest.mark.parametrize("col", ["x", "inf", "nullable"])
def test_numeric_moments_equal_pandas_on_finite_values(messy, prof, col):
    row, f = prof.table.loc[col], finite(messy[col].dropna())
    assert row["mean"] == pytest.approx(f.mean(), rel=1e-12)
    assert row["std"] == pytest.approx(f.std(), rel=1e-12)
    assert row["skew"] == pytest.approx(f.skew(), rel=1e-9)
    assert row["min"] == f.min() and row["max"] == f.max()
    for q in eda.QUANTILES:
        assert row[f"{q:.0%}"] == pytest.approx(np.quantile(f, q), rel=1e-12)
    assert row["zeros"] == (f == 0).sum()


def test_inf_counted_separately(messy, prof):
    assert prof.table.loc["inf", "n_inf"] == np.isinf(messy["inf"]).sum() == 3
    assert prof.table.loc["x", "n_inf"] == 0
    assert np.isfinite(prof.table.loc["inf", "mean"])


def test_integer_min_max_are_exact_integers(prof, messy):
    assert prof.table.loc["nullable", "min"] == messy["nullable"].min()
    assert isinstance(prof.table.loc["nullable", "min"], int)


def test_histograms_cover_all_finite_rows(messy, prof):
    edges, counts = prof.histograms["x"]
    f = finite(messy["x"])
    assert counts == np.histogram(f, bins=25)[0].tolist()
    assert np.allclose(edges, np.histogram_bin_edges(f, bins=25))
    assert sum(prof.histograms["inf"][1]) == len(finite(messy["inf"]))


def test_all_null_columns(prof):
    for col in ["all_null", "all_null_obj"]:
        row = prof.table.loc[col]
        assert (row["count"], row["unique"]) == (0, 0)
        assert row["flags"] == ["mostly_missing"]
    assert prof.histograms["all_null"] == ([], [])


def test_datetimes_min_max_iso_with_time_zone(messy, prof):
    for col in ["utc", "naive"]:
        assert prof.table.loc[col, "min"] == messy[col].min().isoformat()
        assert prof.table.loc[col, "max"] == messy[col].max().isoformat()
    assert prof.table.loc["utc", "min"].endswith("+01:00") and prof.table.loc["utc", "max"].endswith("+02:00")
    edges, counts = prof.histograms["utc"]
    assert sum(counts) == messy["utc"].count()
    assert pd.Timestamp(edges[0]) == messy["utc"].min() and pd.Timestamp(edges[-1]) == messy["utc"].max()


def test_string_and_categorical_columns(messy, prof):
    vc = messy["s"].value_counts()
    assert prof.table.loc["s", ["top", "top_freq"]].tolist() == [vc.index[0], vc.iloc[0]]
    assert prof.top_values["s"] == [[k, v] for k, v in vc.items()]
    assert prof.table.loc["cat", "unique"] == messy["cat"].nunique()
    assert len(prof.top_values["cat"]) == 10
    assert prof.top_values["cat"][0][1] == messy["cat"].value_counts().iloc[0]
    assert prof.table.loc["flag", "top_freq"] == messy["flag"].value_counts().iloc[0]


def test_ten_thousand_levels_of_a_category():
    cat = pd.Series(pd.Categorical([f"L{i}" for i in range(10_000)] * 3))
    p = eda.profile(pd.DataFrame({"c": cat}))
    assert p.table.loc["c", "unique"] == 10_000
    assert p.table.loc["c", "flags"] == ["high_cardinality"]
    assert p.n_duplicates == 20_000


def test_empty_frame(messy):
    p = eda.profile(messy.iloc[:0])
    assert p.table.index.tolist() == messy.columns.tolist()
    assert p.table["count"].tolist() == [0] * messy.shape[1]
    assert (p.n_rows, p.n_duplicates, p.warnings) == (0, 0, [])
    json.dumps(p.to_dict(), allow_nan=False)
    p = eda.profile(pd.DataFrame())
    assert len(p.table) == 0 and p.to_dict()["n_cols"] == 0


def test_single_row(messy):
    one = messy.iloc[[1]]
    p = eda.profile(one)
    assert p.table["count"].tolist() == one.count().tolist()
    assert p.table.loc["inf", "mean"] == one["inf"].iloc[0]
    assert np.isnan(p.table.loc["inf", "std"]) and np.isnan(p.table.loc["inf", "skew"])
    assert all(f == [] or f == ["mostly_missing"] for f in p.table["flags"])
    json.dumps(p.to_dict(), allow_nan=False)


def test_not_a_frame_or_duplicate_names():
    with pytest.raises(DataError, match="DataFrame"):
        eda.profile([1, 2, 3])
    with pytest.raises(DataError, match=r"duplicate column names \['a'\]"):
        eda.profile(pd.DataFrame([[1, 2]], columns=["a", "a"]))


# ---------------------------------------------------------------- flags

def flag_frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "constant": pd.Series(["same"] * n, dtype="str"),
        "id": np.arange(1000, 1000 + n),
        "many": pd.Series([f"level{i % 80}" for i in range(n)], dtype="str"),
        "holes": np.where(np.arange(n) < n * 0.7, np.nan, rng.normal(size=n)),
        "skewed": rng.lognormal(0, 1.5, n),
        "normal": rng.normal(size=n),
        "group": pd.Series(rng.choice(list("abc"), n), dtype="str"),
        "small_int": rng.integers(0, 5, n),
    })


def test_each_flag_fires_where_built_and_nowhere_else():
    p = eda.profile(flag_frame())
    assert p.table["flags"].to_dict() == {
        "constant": ["constant"], "id": ["id_like"], "many": ["high_cardinality"], "holes": ["mostly_missing"],
        "skewed": ["skewed"], "normal": [], "group": [], "small_int": []}
    heads = sorted(w.split(":")[0] for w in p.warnings)
    assert heads == sorted(["'constant'", "'id'", "'many'", "'holes'", "'skewed'"])
    assert any("id like" in w for w in p.warnings) and any("mostly missing" in w for w in p.warnings)


def test_flag_thresholds_are_arguments():
    p = eda.profile(flag_frame(), mostly_missing=0.8, high_cardinality=100, skewed=1e9, id_like=1.1)
    assert p.table["flags"].to_dict() == {
        "constant": ["constant"], "id": [], "many": [], "holes": [], "skewed": [], "normal": [], "group": [],
        "small_int": []}


def test_no_flags_on_a_clean_dataset():
    wine = load_wine(as_frame=True).frame
    p = eda.profile(wine[["alcohol", "ash", "hue", "target"]])
    assert p.warnings == []


# ---------------------------------------------------------------- correlations and duplicates

def test_correlations_equal_pandas():
    d = load_diabetes(as_frame=True).frame
    p = eda.profile(d)
    np.testing.assert_allclose(p.correlations["pearson"], d.corr(), rtol=1e-10)
    np.testing.assert_allclose(p.correlations["spearman"], d.corr(method="spearman"), rtol=1e-10)
    holes = d.mask(np.random.default_rng(0).random(d.shape) < 0.15)     # pairwise complete rows, as in pandas
    p = eda.profile(holes)
    np.testing.assert_allclose(p.correlations["pearson"], holes.corr(), rtol=1e-10)
    np.testing.assert_allclose(p.correlations["spearman"], holes.corr(method="spearman"), rtol=1e-10)


def test_correlations_use_a_seeded_sample_on_large_frames():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(5_000, 3)), columns=list("abc"))
    p = eda.profile(df, sample=1_000, seed=3)
    assert p.sample_rows == 1_000
    idx = np.sort(np.random.default_rng(3).choice(5_000, size=1_000, replace=False))
    np.testing.assert_allclose(p.correlations["pearson"], df.iloc[idx].corr(), rtol=1e-10)
    assert p.table.loc["a", "count"] == 5_000                            # statistics still use every row


def cramers_v_scipy(x: pd.Series, y: pd.Series) -> float:
    "Textbook, bias-uncorrected Cramér's V from scipy's chi-square without Yates' correction."
    table = pd.crosstab(x, y).to_numpy()
    chi2 = chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


def test_cramers_v_equals_scipy():
    tips = px.data.tips()
    v = eda.profile(tips).correlations["cramers_v"]
    assert v.columns.tolist() == ["sex", "smoker", "day", "time"]
    for a in v.columns:
        for b in v.columns:
            assert v.loc[a, b] == pytest.approx(cramers_v_scipy(tips[a], tips[b]), rel=1e-10)
    small = pd.DataFrame({"a": pd.Series(list("xxyyzzx") + [None], dtype="str"),
                          "b": pd.Series(list("ppqqpqq") + ["p"], dtype="str")})
    expected = cramers_v_scipy(small["a"].iloc[:7], small["b"].iloc[:7])        # rows with a missing value left out
    assert eda.correlation(small, "cramers_v").loc["a", "b"] == pytest.approx(expected, rel=1e-12)


def test_duplicates_equal_pandas(messy):
    rng = np.random.default_rng(1)
    base = messy.drop(columns="mixed")
    dup = pd.concat([base, base.iloc[rng.integers(0, len(base), 321)]], ignore_index=True)
    assert eda.count_duplicates(dup) == dup.duplicated().sum() == 321
    assert eda.profile(messy).n_duplicates == messy.map(repr).duplicated().sum()
    tips = px.data.tips()
    assert eda.count_duplicates(tips) == tips.duplicated().sum() == 1


# ---------------------------------------------------------------- to_dict, repr

def test_to_dict_is_json_safe_and_compact(prof, messy):
    d = prof.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert len(text) < 40_000
    assert d["n_rows"] == len(messy) and d["n_duplicates"] == prof.n_duplicates
    assert d["columns"]["inf"]["n_inf"] == 3
    assert len(d["columns"]["x"]["histogram"]["counts"]) == 25
    assert len(d["columns"]["x"]["histogram"]["edges"]) == 26
    assert d["columns"]["utc"]["min"] == messy["utc"].min().isoformat()
    assert len(d["columns"]["cat"]["top_values"]) == 10
    assert set(d["correlations"]) == {"pearson", "spearman", "cramers_v"}
    assert None in sum(d["correlations"]["cramers_v"]["values"], [])     # the 10,000-level column: NaN -> None


def test_repr_html(prof):
    page = prof._repr_html_()
    assert "5,000 rows" in page and "<table" in page
    assert all(col in page for col in prof.table.index)


# ---------------------------------------------------------------- figures

def test_distribution():
    tips = px.data.tips()
    f = eda.distribution(tips, "total_bill")
    assert isinstance(f, go.Figure) and [t.type for t in f.data] == ["histogram"]
    assert list(f.data[0].x) == tips["total_bill"].tolist()
    f = eda.distribution(tips, "tip", kind="violin", by="time")
    assert {t.type for t in f.data} == {"violin"}
    assert {t.name: len(t.y) for t in f.data} == tips["time"].value_counts().to_dict()
    with pytest.raises(DataError, match=r"no column 'tipp'.*available columns: \['total_bill', 'tip'"):
        eda.distribution(tips, "tipp")
    with pytest.raises(DataError, match="'weekday'"):
        eda.distribution(tips, "tip", by="weekday")


def test_missing_matrix(messy):
    f = eda.missing_matrix(messy, sample=None)
    assert f.data[0].type == "heatmap"
    np.testing.assert_array_equal(np.asarray(f.data[0].z), messy.isna().to_numpy().astype(int))
    assert np.asarray(eda.missing_matrix(messy, sample=200).data[0].z).shape == (200, messy.shape[1])


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_heatmap(method):
    wine = load_wine(as_frame=True).frame
    f = eda.correlation_heatmap(wine, method)
    assert f.data[0].type == "heatmap"
    np.testing.assert_allclose(np.asarray(f.data[0].z, dtype=float), wine.corr(method=method), rtol=1e-10)
    assert list(f.data[0].x) == wine.columns.tolist()


def test_correlation_heatmap_cramers_v_and_bad_method():
    tips = px.data.tips()
    f = eda.correlation_heatmap(tips, "cramers_v")
    assert f.data[0].z[1][2] == pytest.approx(cramers_v_scipy(tips["smoker"], tips["day"]))
    with pytest.raises(DataError, match="use one of"):
        eda.correlation_heatmap(tips, "kendall")


def test_target_relationship_picks_the_figure():
    tips = px.data.tips()
    kinds = {(c, t): sorted({tr.type for tr in eda.target_relationship(tips, c, t).data})
             for c, t in [("total_bill", "sex"), ("total_bill", "tip"), ("day", "sex"), ("day", "tip")]}
    assert kinds == {("total_bill", "sex"): ["box"], ("total_bill", "tip"): ["scatter", "scattergl"],
                     ("day", "sex"): ["bar"], ("day", "tip"): ["box"]}
    f = eda.target_relationship(tips, "total_bill", "tip")
    slope = np.polyfit(tips["total_bill"], tips["tip"], 1)[0]
    y = np.asarray(f.data[1].y)
    x = np.asarray(f.data[1].x)
    assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(slope)
    with pytest.raises(DataError, match="'size_'"):
        eda.target_relationship(tips, "size_", "tip")


def test_scatter_matrix():
    wine = load_wine(as_frame=True).frame
    f = eda.scatter_matrix(wine, ["alcohol", "hue"], color="target")
    assert [t.type for t in f.data] == ["splom"] * 3
    assert sorted(len(t.dimensions[0].values) for t in f.data) == sorted(wine["target"].value_counts().tolist())
    big = pd.DataFrame(np.random.default_rng(0).normal(size=(10_000, 3)), columns=list("abc"))
    f = eda.scatter_matrix(big, sample=2_000, seed=0)
    assert len(f.data[0].dimensions[0].values) == 2_000
    with pytest.raises(DataError, match="'d'"):
        eda.scatter_matrix(big, ["a", "d"])


def test_over_time(messy):
    stocks = px.data.stocks().assign(date=lambda d: pd.to_datetime(d["date"]))
    f = eda.over_time(stocks, "MSFT", freq="MS")
    np.testing.assert_allclose(f.data[0].y, stocks.set_index("date")["MSFT"].resample("MS").mean())
    f = eda.over_time(messy, "flag", time_column="naive", freq="MS")
    assert sum(sum(t.y) for t in f.data) == messy["naive"].notna().sum()
    with pytest.raises(DataError, match="no datetime column"):
        eda.over_time(px.data.tips(), "tip")
    with pytest.raises(DataError, match="'when'"):
        eda.over_time(stocks, "MSFT", time_column="when")


# ---------------------------------------------------------------- report

def plotly_marker() -> str:
    js = (Path(plotly.__file__).parent/"package_data"/"plotly.min.js").read_text()
    marker = re.search(r"plotly\.js v[\d.]+", js).group()
    assert js.count(marker) == 1
    return marker


def test_report(tmp_path, messy):
    path = eda.report(messy, tmp_path/"messy.html", target="x", title="Messy <data>")
    assert path == tmp_path/"messy.html" and path.exists()
    page = path.read_text()
    assert page.count(plotly_marker()) == 1
    assert re.findall(r"<script[^>]*\bsrc=", page) == []
    n_figs = page.count('class="plotly-graph-div"')
    assert n_figs >= 1 + 2 + messy.shape[1] - 1                         # missing values, correlations, distributions...
    assert all(f'id="fig-{i}"' in page for i in range(n_figs))
    assert "Messy &lt;data&gt;" in page
    assert all(w.replace("'", "&#x27;") in page for w in eda.profile(messy).warnings[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["messy.html"]


def test_report_errors(tmp_path):
    tips = px.data.tips()
    with pytest.raises(DataError, match="'price'"):
        eda.report(tips, tmp_path/"r.html", target="price")
    with pytest.raises(DataError, match="does not exist"):
        eda.report(tips, tmp_path/"no"/"r.html")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- module manners

def test_import_is_light():
    code = ("import sys, time; t = time.perf_counter(); import mlops_workbench.eda; "
            "print(time.perf_counter() - t, sorted(m for m in ('ipywidgets', 'IPython', 'anywidget', 'jupyter_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[1].strip() == "[]"
    assert float(out[0]) < 3


@pytest.mark.slow
def test_a_million_rows_in_seconds():
    rng = np.random.default_rng(0)
    n = 1_000_000
    df = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(15)})
    df.loc[rng.random(n) < 0.05, "x0"] = np.nan
    for i, k in enumerate([2, 10, 100, 1_000, 50_000]):
        df[f"c{i}"] = pd.Series(rng.integers(0, k, n).astype(str), dtype="str")
    t = time.perf_counter()
    p = eda.profile(df)
    assert time.perf_counter() - t < 15
    assert p.table.loc["x0", "missing"] == df["x0"].isna().sum()
    assert p.table.loc["c4", "unique"] == df["c4"].nunique()

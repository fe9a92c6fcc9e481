"""Monitor on hostile and large data: drift verdicts at every sample size, statistics against scipy, errors, quality checks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from mlops_workbench.data import infer_schema, save_schema
from mlops_workbench.errors import MonitorError
from mlops_workbench.monitor import DriftReport, DriftThresholds, QualityReport, drift, make_drift_data, psi, quality
from mlops_workbench.monitor import _categorical_stats, _counts, _ks, _smirnov_sf

FEATURES = ["age", "income", "score", "balance", "tenure", "plan", "region", "mobile"]


# ---------------------------------------------------------------- verdicts on generated data

@pytest.mark.slow
def test_unshifted_million_rows_flags_nothing():
    "At 1,000,000 rows every p-value-free verdict is calm: the auto rule uses distances and flags no column."
    ref, cur = make_drift_data(1_000_000, seed=0), make_drift_data(1_000_000, seed=1)
    report = drift(ref, cur, target="churn")
    assert report.drifted_columns == []
    assert (report.rule, report.drifted, report.drift_share, report.target_drifted) == ("distance", False, 0.0, False)
    assert report.table["distance"].max() < 0.01 and report.table["psi"].max() < 0.001


@pytest.mark.slow
def test_shifted_million_rows_flags_exactly_the_shifted_columns():
    shift = {"income": 0.3, "tenure": -0.4, "region": 0.25, "churn": 0.2}
    report = drift(make_drift_data(1_000_000, seed=0), make_drift_data(1_000_000, shift=shift, seed=1), target="churn")
    assert report.drifted_columns == ["income", "tenure", "region", "churn"]
    assert report.target_drifted is True and report.n_drifted == 3


@pytest.mark.parametrize("n, shift", [
    (300, {"age": 1.0, "plan": 0.4}),                       # test rule
    (1_000, {"score": 0.8, "mobile": 0.5}),                 # test rule, at the switch
    (1_200, {"balance": 0.5, "region": 0.3}),               # distance rule (balance: 5% missing, still > 1,000 values)
    (50_000, {"income": 0.5, "tenure": 0.5, "plan": 0.3, "region": 0.3, "mobile": 0.4}),
])
def test_exactly_the_shifted_columns_are_flagged(n, shift):
    report = drift(make_drift_data(n, seed=0), make_drift_data(n, shift=shift, seed=1), columns=FEATURES)
    assert report.drifted_columns == [c for c in FEATURES if c in shift]
    assert report.rule == ("test" if n <= 1_000 else "distance")


def test_the_auto_rule_counts_the_values_of_each_column():
    "Just past the switch, balance (5% missing) has fewer than 1,000 values: the test judges it, distances the rest."
    report = drift(make_drift_data(1_001, seed=0), make_drift_data(1_001, seed=1))
    assert report.rule == "mixed"
    assert report.table["rule"][lambda r: r == "test"].index.tolist() == ["balance"]
    assert report.table.loc["balance", "threshold"] == 0.05                      # Bonferroni over the one column tested


@pytest.mark.parametrize("method", ["test", "distance", "psi"])
def test_every_method_flags_a_large_shift_and_only_it(method):
    report = drift(make_drift_data(20_000, seed=0), make_drift_data(20_000, shift={"score": 1.0, "plan": 0.5}, seed=1),
                   columns=FEATURES, method=method)
    assert report.drifted_columns == ["score", "plan"] and report.rule == method


def test_thresholds_object_and_keywords_agree():
    ref, cur = make_drift_data(5_000, seed=0), make_drift_data(5_000, shift={"age": 0.15}, seed=1)
    assert drift(ref, cur).drifted_columns == ["age"]
    assert drift(ref, cur, wasserstein=0.2).drifted_columns == []
    assert drift(ref, cur, thresholds=DriftThresholds(wasserstein=0.2)).drifted_columns == []
    assert drift(ref, cur, small_sample=10_000).rule == "test"


# ---------------------------------------------------------------- statistics against scipy

@pytest.mark.parametrize("n1, n2", [(10_000, 10_000), (10_001, 50), (9_999, 10_001), (1, 20_000), (123_457, 98_765)])
def test_ks_and_wasserstein_equal_scipy_around_the_exact_boundary(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    x, y = rng.standard_t(3, n1), rng.standard_t(3, n2) * 1.1 + 0.05
    d, p, w = _ks(np.sort(x), np.sort(y))
    ref = stats.ks_2samp(x, y)
    assert d == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-12)


@pytest.mark.slow
def test_ks_pvalue_equals_scipy_at_a_million_rows_in_the_smirnov_band():
    "n*D^2 between 2.2 and 370: scipy sums the Smirnov series in C (seconds); ours vectorized must agree."
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=1_000_000), rng.normal(0.006, 1, size=1_000_000)
    d, p, w = _ks(np.sort(x), np.sort(y))
    ref = stats.ks_2samp(x, y)
    assert 2.2 <= 500_000 * d * d < 370
    assert (d, w) == (pytest.approx(ref.statistic, rel=1e-12), pytest.approx(stats.wasserstein_distance(x, y), rel=1e-12))
    assert p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-12)
    assert _smirnov_sf(1_000_000, 0.002) == pytest.approx(special.smirnov(1_000_000, 0.002), rel=2e-9)


@pytest.mark.parametrize("values", [
    np.r_[np.zeros(500), np.ones(300)],                      # heavy ties
    np.full(1_000, 7.0),                                     # a constant
    np.array([1e12, 1e12 + 1, 1e12 + 2] * 400),              # large magnitudes
    np.array([-np.inf, 1.0, 2.0, np.inf, np.nan] * 10),      # infinities and NaN set aside
])
def test_numeric_statistics_survive_ties_constants_and_infinities(values):
    cur = values[::-1].copy() + (0 if np.all(values == values[0]) else 1)
    row = drift(pd.DataFrame({"x": values}), pd.DataFrame({"x": cur})).table.loc["x"]
    fx, fy = values[np.isfinite(values)], cur[np.isfinite(cur)]
    assert row["statistic"] == pytest.approx(stats.ks_2samp(fx, fy).statistic)
    assert row["n_reference"] == len(fx) and row["n_current"] == len(fy)


@pytest.mark.parametrize("ref, cur", [
    ({"a": 30, "b": 20}, {"a": 18, "b": 32}),                                 # 2 x 2: Yates, as scipy
    ({"a": 300, "b": 200, "c": 5}, {"a": 180, "b": 320, "d": 9}),             # levels on one side only
    ({1: 10, 2: 10, 3: 10}, {1.0: 12, 2.0: 9, 3.0: 9}),                        # int and float levels are the same levels
])
def test_categorical_statistics_equal_scipy(ref, cur):
    s = _categorical_stats(ref, cur)
    levels = list(dict.fromkeys([*ref, *cur]))
    table = np.array([[ref.get(k, 0) for k in levels], [cur.get(k, 0) for k in levels]])
    assert s["statistic"] == pytest.approx(stats.chi2_contingency(table).statistic, rel=1e-12)
    assert s["p_value"] == pytest.approx(stats.chi2_contingency(table).pvalue, rel=1e-12)
    assert s["distance"] == pytest.approx(jensenshannon(table[0], table[1], base=2), rel=1e-12)
    assert table.shape[1] == len(set(ref) | set(cur))


def test_psi_with_empty_bins_on_both_sides():
    "Bins empty in current and levels absent from reference both use eps = 1e-4."
    value = psi(np.arange(100), np.r_[np.zeros(50), np.full(50, 99)], bins=4)
    p, q = np.full(4, 0.25), np.array([0.5, 1e-4, 1e-4, 0.5])
    assert value == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-12)
    assert psi(pd.Series(["a"] * 10), pd.Series(["b"] * 10)) == pytest.approx(2 * (1 - 1e-4) * np.log(1 / 1e-4), rel=1e-12)


# ---------------------------------------------------------------- hostile inputs

@pytest.fixture(scope="module")
def frames():
    return make_drift_data(500, seed=0), make_drift_data(500, seed=1)


@pytest.mark.parametrize("change, kwargs, message", [
    (lambda c: c.assign(age=c["age"].astype(str)), {}, "column 'age' is int64 (numeric) in reference but str (text) in current"),
    (lambda c: c.assign(plan=c["plan"].map({"basic": 1, "plus": 2, "pro": 3, "enterprise": 4}).astype(float)), {},
     "column 'plan' is str (text) in reference but float64 (numeric) in current; convert it before comparing, e.g. current['plan'] = current['plan'].astype('str')"),
    (lambda c: c.assign(mobile=c["mobile"].astype(str)), {}, "column 'mobile' is bool (boolean) in reference but str (text)"),
    (lambda c: c.drop(columns="score"), {"columns": ["score"]}, "column(s) ['score'] not in current"),
    (lambda c: c.iloc[:0], {}, "current has no rows"),
    (lambda c: c.rename(columns={"age": "plan", "plan": "age"}), {}, "column 'age' is int64 (numeric) in reference but str"),
    (lambda c: pd.concat([c, c["age"]], axis=1), {}, "current has the column(s) ['age'] more than once"),
    (lambda c: c, {"target": "label"}, "column(s) ['label'] not in reference"),
    (lambda c: c, {"method": "wasserstein"}, "method='wasserstein' is not one of"),
    (lambda c: c, {"psi_threshold": 0.1}, "unknown option(s) ['psi_threshold']"),
    (lambda c: c, {"share": 1.5}, "threshold share=1.5 must be between 0 and 1"),
    (lambda c: c, {"kinds": {"salary": "numeric"}}, "kinds= names ['salary']"),
    (lambda c: c, {"kinds": {"age": "ordinal"}}, "kinds['age']='ordinal'"),
    (lambda c: c.to_dict("list"), {}, "current must be a pandas DataFrame, got dict"),
])
def test_drift_refuses_mismatches_with_a_clear_message(frames, change, kwargs, message):
    ref, cur = frames
    with pytest.raises(MonitorError, match=None) as e: drift(ref, change(cur.copy()), **kwargs)
    assert message in str(e.value)


def test_awkward_dtypes_are_compared_or_reported(frames):
    ref, cur = frames
    ref = ref.assign(when=pd.date_range("2026-01-01", periods=len(ref), freq="min", tz="UTC"), gone=np.nan,
                     code=pd.array(np.arange(len(ref)) % 4, dtype="Int64"), text=pd.Series(["x", None] * 250, dtype="string"))
    cur = cur.assign(when=ref["when"] + pd.Timedelta(days=30), gone="x", code=pd.array(np.arange(len(cur)) % 5, dtype="Int64"),
                     text=pd.Series(["x", "y"] * 250, dtype="str"))
    t = drift(ref, cur).table
    assert t.loc["when", ["kind", "rule", "drifted"]].tolist() == ["skipped", "skipped", False]
    assert t.loc["gone", "note"] == "no values in reference: nothing to compare (see the missing rate)"
    assert t.loc["code", ["kind", "test", "drifted"]].tolist() == ["categorical", "chi2", True]      # a new level 4
    assert t.loc["text", ["kind", "missing_reference", "missing_current", "drifted"]].tolist() == ["categorical", 0.5, 0.0, True]


def test_report_round_trips_through_json_and_writes_a_standalone_page(tmp_path):
    report = drift(make_drift_data(3_000, seed=0), make_drift_data(3_000, shift={"age": 1, "region": 0.5}, seed=1), target="churn")
    again = DriftReport.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))
    assert (again.drifted_columns, again.summary(), again.rule) == (report.drifted_columns, report.summary(), report.rule)
    page = report.to_html(tmp_path / "drift.html").read_text()
    assert "<script src=" not in page.replace("'", "\"") and page.count("Plotly.newPlot") == 3 and page.count("plotly.js v") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["drift.html"]                        # no temporary file left


def test_a_constant_reference_gives_an_infinite_distance_that_survives_json():
    report = drift(pd.DataFrame({"x": [1.0] * 2_000}), pd.DataFrame({"x": [1.0] * 1_000 + [2.0] * 1_000}))
    assert report.table.loc["x", "distance"] == np.inf and report.drifted_columns == ["x"]
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["columns"][0]["distance"] is None and d["columns"][0]["drifted"] is True


# ---------------------------------------------------------------- quality

@pytest.fixture(scope="module")
def qref():
    return make_drift_data(20_000, seed=0)


def _issues(report: QualityReport) -> list[tuple]:
    return [tuple(r) for r in report.table[["column", "check", "severity"]].values.tolist()]


@pytest.mark.parametrize("change, expected", [
    (lambda b: b.drop(columns="plan"), ("plan", "missing column", "error")),
    (lambda b: b.assign(extra=1), ("extra", "new column", "warning")),
    (lambda b: b.assign(score=b["score"].astype(str)), ("score", "dtype changed", "error")),
    (lambda b: b.assign(mobile=b["mobile"].astype(int)), ("mobile", "dtype changed", "error")),
    (lambda b: b.assign(score=b["score"].mask(b.index < 300)), ("score", "missing rate", "error")),
    (lambda b: b.assign(plan=b["plan"].mask(b.index < 300)), ("plan", "missing rate", "error")),
    (lambda b: b.assign(income=b["income"].mask(b.index < 30, -5.0)), ("income", "out of range", "error")),
    (lambda b: b.assign(income=b["income"].mask(b.index < 3, 1e12)), ("income", "out of range", "warning")),
    (lambda b: b.assign(income=b["income"].mask(b.index < 30, np.inf)), ("income", "out of range", "error")),
    (lambda b: b.assign(plan=b["plan"].mask(b.index < 30, "gold")), ("plan", "new categories", "error")),
    (lambda b: b.assign(churn=b["churn"].mask(b.index < 2, 7)), ("churn", "new categories", "warning")),
    (lambda b: b.assign(plan=[f"id-{i}" for i in range(len(b))]), ("plan", "cardinality", "error")),
    (lambda b: b.assign(region=pd.Categorical(["north"] * len(b))), ("region", "cardinality", "error")),
])
def test_quality_catches_each_kind_of_violation(qref, change, expected):
    batch = change(make_drift_data(1_000, seed=5))
    report = quality(batch, qref)
    assert expected in _issues(report)
    assert report.passed == (expected[2] != "error")


def test_a_clean_batch_passes_and_small_batches_are_not_blamed_for_fewer_levels(qref):
    assert quality(make_drift_data(1_000, seed=5), qref).passed
    ref = pd.DataFrame({"id": [f"l{i}" for i in range(300)] * 10})
    assert quality(ref.sample(50, random_state=0), ref).table.empty       # 50 rows cannot show 300 levels


def test_quality_against_a_saved_schema_and_a_signature(qref, tmp_path):
    path = save_schema(infer_schema(qref), tmp_path / "schema.json")
    batch = make_drift_data(1_000, seed=5).assign(plan=lambda b: b["plan"].mask(b.index < 4, "gold"))
    report = quality(batch, schema=str(path))
    assert _issues(report) == [("plan", "schema: isin", "error")] and report.table["rows"].tolist() == [4]

    class Sig:
        def check(self, df): return [{"column": None, "kind": "bad_shape", "severity": "error", "message": "no rows", "rows": []}]
    assert _issues(quality(batch, signature=Sig())) == [(None, "signature: bad_shape", "error")]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "nothing to check the batch against"),
    ({"reference": "ref.csv"}, "reference must be a pandas DataFrame, got str"),
    ({"signature": object()}, "signature= takes an object with .check(df)"),
    ({"reference": pd.DataFrame({"a": [1]}), "cardinality_ratio": 0.5}, "cardinality_ratio=0.5 must be at least 1"),
])
def test_quality_refuses_what_it_cannot_check(kwargs, message):
    with pytest.raises(MonitorError) as e: quality(pd.DataFrame({"a": [1]}), **kwargs)
    assert message in str(e.value)


def test_quality_counts_and_examples(qref):
    batch = make_drift_data(1_000, seed=5)
    batch.loc[[3, 9, 11], "plan"] = "gold"
    batch.loc[[4], "plan"] = "silver"
    row = quality(batch, qref).table.set_index(["column", "check"]).loc[("plan", "new categories")]
    assert (row["rows"], row["examples"], row["reference"], row["severity"]) == (4, ["gold", "silver"], 4, "warning")
    assert _counts(batch["plan"])["gold"] == 3

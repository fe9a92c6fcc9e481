"""Feature specs on hostile and real data: suggestions, pipelines in scikit-learn's tools, exact transform values."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import plotly.express as px
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler

from mlops_workbench.errors import DataError
from mlops_workbench.features import (ColumnSpec, DatetimeParts, FeatureSpec, Interactions, build_pipeline, feature_names,
                                      importance_preview, suggest_spec)


@pytest.fixture(scope="module")
def hostile() -> pd.DataFrame:
    "Every kind of column suggest_spec must recognise, with a known right answer for each."
    n = 20_000
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": rng.permutation(n) + 1000,                                                  # unique ints: dropped
        "email": pd.Series([f"u{i}@x.io" for i in range(n)], dtype="str"),               # unique text: dropped
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.normal(40, 10, n)),             # numeric with NaN
        "spend": rng.exponential(100, n),                                                 # skewed, >= 0: log1p
        "delta": rng.normal(0, 1, n) ** 3,                                                # skewed but negative: no log1p
        "city": pd.Series(rng.choice(["Oslo", "Lima", None], n), dtype="str"),           # str with NaN
        "plan": pd.Categorical(rng.choice(["basic", "pro"], n), categories=["basic", "pro", "team"]),
        "active": rng.random(n) < 0.5,                                                    # bool
        "verified": pd.array(np.where(rng.random(n) < 0.1, None, rng.random(n) < 0.5), dtype="boolean"),  # nullable bool
        "seen": pd.Series(pd.date_range("2026-01-01", periods=n, freq="17min", tz="Asia/Tokyo")),  # tz-aware
        "zip": pd.Series(rng.integers(0, 10_000, n).astype(str), dtype="str"),           # 10,000 levels
        "blob": [{"k": i} for i in range(n)],                                             # other: dropped
        "const": 1.5,                                                                     # constant: dropped
        "y": rng.random(n) < 0.3,
    })


def test_suggest_spec_puts_every_kind_in_the_right_group(hostile):
    spec = suggest_spec(hostile, "y")
    by_col = {c: g for g in spec.groups for c in g.columns}
    assert sorted(spec.drop) == ["blob", "const", "email", "id"]
    assert set(by_col) == {"age", "spend", "delta", "city", "plan", "active", "verified", "seen", "zip"}
    assert "y" not in spec.columns
    assert (by_col["age"].impute, by_col["age"].scale, by_col["age"].transform) == ("median", "standard", None)
    assert by_col["spend"].transform == "log1p" and by_col["delta"].transform is None
    for c in ["city", "plan", "active", "verified"]:
        assert (by_col[c].impute, by_col[c].encode) == ("most_frequent", "onehot"), c
    assert by_col["zip"].encode == "target"
    assert by_col["seen"].transform == "datetime"
    assert by_col["seen"].datetime_parts == ("month", "day", "dayofweek", "hour")  # 236 days from 1 Jan: one year
    target_encoded = {c for g in suggest_spec(hostile, "y", max_onehot=1).groups if g.encode == "target" for c in g.columns}
    assert target_encoded == {"city", "plan", "zip"}  # booleans stay one-hot whatever the limit


def test_suggested_pipeline_fits_hostile_frame_and_survives_unseen_values(hostile):
    spec = suggest_spec(hostile, "y")
    train, test = hostile.iloc[:3000], hostile.iloc[3000:3200].copy()
    pipe = build_pipeline(spec, LogisticRegression(max_iter=1000)).fit(train, train["y"])
    names = feature_names(pipe)
    assert {"city_Lima", "city_Oslo", "plan_basic", "plan_pro", "active_False", "active_True", "verified_False",
            "verified_True", "seen_hour", "zip", "spend"} <= set(names)
    test["city"] = pd.Series(["Paris"] * 200, dtype="str", index=test.index)   # never seen
    test["zip"] = pd.Series(["not-a-zip"] * 200, dtype="str", index=test.index)
    test["seen"] = pd.NaT
    Xt = pipe[:-1].transform(test)
    assert list(Xt.columns) == names and Xt.notna().all().all()
    assert (Xt[["city_Lima", "city_Oslo"]] == 0).all().all()
    assert np.allclose(Xt["zip"], train["y"].mean())  # unseen level: the training target mean
    assert pipe.predict_proba(test).shape == (200, 2)


def test_breast_cancer_auc_and_sklearn_tools():
    cancer = load_breast_cancer(as_frame=True).frame
    X, y = cancer.drop(columns="target"), cancer["target"]
    pipe = build_pipeline(suggest_spec(cancer, "target"), LogisticRegression(max_iter=2000))
    auc = cross_val_score(clone(pipe), X, y, cv=5, scoring="roc_auc")
    assert auc.mean() > 0.97
    grid = GridSearchCV(pipe, {"model__C": [0.1, 1.0], "features__group0__scale": ["passthrough", RobustScaler()]}, cv=3, scoring="roc_auc")
    grid.fit(X, y)
    assert grid.best_score_ > 0.97 and set(grid.best_params_) == {"model__C", "features__group0__scale"}
    assert isinstance(grid.best_estimator_[0].named_transformers_["group0"], Pipeline)
    assert feature_names(grid.best_estimator_)[:3] == ["mean radius", "mean texture", "mean perimeter"]
    back = pickle.loads(pickle.dumps(grid.best_estimator_))
    assert np.array_equal(back.predict_proba(X), grid.best_estimator_.predict_proba(X))


def test_tips_regression_and_classification():
    tips = px.data.tips()
    spec = suggest_spec(tips, "tip")
    pipe = build_pipeline(spec, Ridge()).fit(tips, tips["tip"])
    assert feature_names(pipe) == ["total_bill", "size", "sex_Female", "sex_Male", "smoker_No", "smoker_Yes",
                                   "day_Fri", "day_Sat", "day_Sun", "day_Thur", "time_Dinner", "time_Lunch"]
    assert cross_val_score(clone(pipe), tips, tips["tip"], cv=5, scoring="r2").mean() > 0.35
    smoker = build_pipeline(suggest_spec(tips, "smoker"), LogisticRegression(max_iter=500))
    acc = cross_val_score(smoker, tips, tips["smoker"], cv=5).mean()
    assert acc >= tips["smoker"].value_counts(normalize=True).max() - 0.02  # smoking is barely predictable in tips: no worse than the majority
    assert "smoker" not in feature_names(smoker.fit(tips, tips["smoker"]))


def test_onehot_equals_get_dummies_and_median_equals_pandas():
    tips = px.data.tips()
    holes = tips.assign(total_bill=tips["total_bill"].mask(tips.index % 7 == 0))
    spec = FeatureSpec("tip", [ColumnSpec(["total_bill"], impute="median"), ColumnSpec(["day", "time"], encode="onehot"),
                               ColumnSpec(["size"], impute="mean")])
    Xt = build_pipeline(spec, Ridge()).fit(holes, holes["tip"])[:-1].transform(holes)
    assert Xt["total_bill"].tolist() == holes["total_bill"].fillna(holes["total_bill"].median()).tolist()
    dummies = pd.get_dummies(holes[["day", "time"]]).astype("float64")
    pd.testing.assert_frame_equal(Xt[dummies.columns.tolist()], dummies)
    assert Xt.columns.tolist() == ["total_bill"] + dummies.columns.tolist() + ["size"]


def test_every_transform_gives_known_values():
    d = pd.DataFrame({"x": [0.0, 1.0, 3.0, np.nan, 7.0, 15.0], "c": pd.Series(["a", "b", None, "a", "c", "b"], dtype="str"),
                      "t": pd.to_datetime(["2026-03-01 14:30", "2026-12-31 23:00", None, "2026-01-05 00:00", "2026-07-04 00:00", "2026-02-28 00:00"]).tz_localize("UTC"),
                      "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    def out(**kw): return build_pipeline(FeatureSpec("y", [ColumnSpec(**kw)]), Ridge())[:-1].fit(d, d["y"]).transform(d)
    assert np.allclose(out(columns=["x"], impute="constant", fill_value=0.0, transform="log1p")["x"], np.log1p([0, 1, 3, 0, 7, 15]))
    mm = out(columns=["x"], impute="median", scale="minmax")["x"]
    assert mm.min() == 0 and mm.max() == 1 and mm[3] == pytest.approx(3 / 15)
    assert out(columns=["x"], impute="median", scale="robust")["x"][3] == 0.0  # the median maps to 0
    assert out(columns=["x"], impute="median", transform="bins", bins=3)["x"].nunique() == 3
    assert out(columns=["x"], impute="median", transform="bins", bins=2, encode="onehot").columns.tolist() == ["x_0.0", "x_1.0"]
    assert out(columns=["c"], encode="ordinal")["c"].tolist() == [0.0, 1.0, -1.0, 0.0, 2.0, 1.0]
    assert out(columns=["c"], impute="constant", fill_value="?", encode="onehot").columns.tolist() == ["c_?", "c_a", "c_b", "c_c"]
    parts = out(columns=["t"], transform="datetime", datetime_parts=("month", "hour", "dayofweek"))
    assert parts.columns.tolist() == ["t_month", "t_hour", "t_dayofweek"]
    assert parts.iloc[0].tolist() == [3.0, 14.0, 6.0] and parts.iloc[2].isna().all()
    assert out(columns=["t"], transform="datetime", impute="median", datetime_parts=("year",))["t_year"].tolist() == [2026.0] * 6
    assert out(columns=["x"], transform="power", impute="median")["x"].notna().all()


def test_interactions_use_imputed_values():
    d = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [2.0, 5.0, np.nan], "y": [0.0, 1.0, 2.0]})
    spec = FeatureSpec("y", [ColumnSpec(["a", "b"], impute="median")], interactions=[("a", "b")])
    Xt = build_pipeline(spec, Ridge()).fit(d, d["y"])[:-1].transform(d)
    assert Xt.columns.tolist() == ["a", "b", "a_x_b"]
    assert Xt["a_x_b"].tolist() == [2.0, 2.0 * 5.0, 3.0 * 3.5]


def test_spec_round_trips_through_json_and_toml_files(tmp_path):
    spec = FeatureSpec("y", [ColumnSpec(["a", "b"], impute="constant", fill_value=-1, scale="robust"),
                             ColumnSpec(["c"], impute="constant", fill_value="none", encode="onehot"),
                             ColumnSpec(["x"], transform="bins", bins=7, encode="onehot"),
                             ColumnSpec(["t"], transform="datetime", datetime_parts=("year", "hour"))],
                       interactions=[("a", "b")], drop=["id"])
    (tmp_path/"s.json").write_text(spec.to_json())
    (tmp_path/"s.toml").write_text(spec.to_toml())
    assert FeatureSpec.from_json(tmp_path/"s.json") == spec
    assert FeatureSpec.from_json(str(tmp_path/"s.json")) == spec
    assert FeatureSpec.from_toml(tmp_path/"s.toml") == spec
    assert FeatureSpec.from_toml(spec.to_toml()) == spec
    assert spec.columns == ["a", "b", "c", "x", "t"]
    suggested = suggest_spec(load_wine(as_frame=True).frame, "target")
    assert FeatureSpec.from_toml(suggested.to_toml()) == suggested == FeatureSpec.from_json(suggested.to_json())


@pytest.mark.parametrize("bad, message", [
    ({"columns": ["a"], "scale": "zscore"}, "scale='zscore' is not one of ['standard', 'robust', 'minmax']"),
    ({"columns": ["a"], "impute": "avg"}, "impute='avg'"),
    ({"columns": ["a"], "encode": "hash"}, "encode='hash'"),
    ({"columns": ["a"], "transform": "sqrt"}, "['log1p', 'power', 'bins', 'datetime']"),
    ({"columns": ["a"], "transform": "bins", "bins": 0}, "bins=0"),
    ({"columns": ["a"], "datetime_parts": ["week"]}, "['week']"),
    ({"columns": ["a"], "scaling": "standard"}, "valid keys are"),
    ({"columns": "y"}, "target 'y' is also a feature"),
])
def test_invalid_specs_fail_before_fitting(bad, message):
    with pytest.raises(DataError, match=None) as e: FeatureSpec.from_dict({"target": "y", "groups": [bad]})
    assert message in str(e.value)


def test_user_errors_name_problem_and_fix():
    d = pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]})
    pipe = build_pipeline(FeatureSpec("y", [ColumnSpec(["a", "b"])]), Ridge())
    with pytest.raises(DataError, match=r"\['b'\] not in the data; it has \['a', 'y'\]"): pipe.fit(d, d["y"])
    with pytest.raises(DataError, match="DataFrame"): pipe.fit(d.to_numpy(), d["y"])
    with pytest.raises(DataError, match="not fitted"): feature_names(pipe)
    with pytest.raises(DataError, match=r"no target column 'z'; the frame has \['a', 'y'\]"): suggest_spec(d, "z")
    with pytest.raises(DataError, match="FeatureSpec"): build_pipeline({"target": "y"}, Ridge())
    with pytest.raises(DataError, match="not valid TOML"): FeatureSpec.from_toml("target = = 1")
    with pytest.raises(DataError, match="not valid JSON"): FeatureSpec.from_json("{nope")


def test_custom_transformers_follow_the_estimator_contract():
    for est in [DatetimeParts(("month",)), Interactions([("a", "b")])]:
        assert clone(est).get_params() == est.get_params()
        assert not [k for k in vars(est) if k.endswith("_")]  # __init__ only stores
    d = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    fitted = Interactions([("a", "b")]).fit(d)
    assert fitted.n_features_in_ == 2 and list(fitted.feature_names_in_) == ["a", "b"]
    pipe = build_pipeline(FeatureSpec("y", [ColumnSpec(["a"])], interactions=[("a", "b")]), Ridge())
    assert pipe.get_params()["features__interactions__product__pairs"] == [("a", "b")]
    assert "model__alpha" in pipe.get_params()


def test_importance_preview_finds_the_signal():
    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n),
                      "group": pd.Series(rng.choice(["a", "b", "c"], n), dtype="str")})
    y = 3 * X["signal"] + (X["group"] == "b") * 2 + rng.normal(0, 0.1, n)
    spec = FeatureSpec("y", [ColumnSpec(["signal", "noise"], scale="standard"), ColumnSpec(["group"], encode="onehot")])
    pipe = build_pipeline(spec, Ridge()).fit(X, y)
    imp = importance_preview(pipe, X, y, n_repeats=5, seed=0)
    assert imp["feature"].tolist() == ["signal", "group", "noise"]
    assert imp.loc[0, "importance_mean"] > 1 and abs(imp.loc[2, "importance_mean"]) < 0.01
    assert (imp["importance_std"] >= 0).all()
    assert len(importance_preview(pipe, X, y, top=1)) == 1


def test_diabetes_suggestion_is_all_numeric_and_deterministic():
    diabetes = load_diabetes(as_frame=True).frame
    spec = suggest_spec(diabetes, "target")
    assert spec.drop == [] and not any(g.encode for g in spec.groups)
    assert sorted(spec.columns) == sorted(diabetes.columns.drop("target"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning from our defaults
        r2 = cross_val_score(build_pipeline(spec, Ridge()), diabetes, diabetes["target"], cv=5, scoring="r2").mean()
    assert r2 > 0.4

"""Evaluation against scikit-learn and fairlearn on many generated cases, hostile inputs, and `mlwb evaluate`
(in-process through `mlops_workbench.cli.main`, and once as a user runs it)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn import metrics as M
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler, label_binarize
from sklearn.svm import LinearSVC

from conftest import mlwb
from mlops_workbench.cli import main
from mlops_workbench.errors import EvaluationError
from mlops_workbench.evaluate import (_resample_counts, evaluate, evaluate_predictions, fairness, load_model, plot_calibration,
                                      plot_roc, slices, synthetic_groups)
from mlops_workbench.features import build_pipeline, suggest_spec
from mlops_workbench.tracking import get_run, start_run


# ---------------------------------------------------------------- metrics equal scikit-learn's

def _sklearn(y, pred, P, labels):
    "scikit-learn's metrics of the same predictions."
    out = {"accuracy": M.accuracy_score(y, pred), "balanced_accuracy": M.balanced_accuracy_score(y, pred),
           "log_loss": M.log_loss(y, P, labels=labels)}
    for avg in ("macro", "weighted"):
        out |= {f"precision_{avg}": M.precision_score(y, pred, average=avg, zero_division=0),
                f"recall_{avg}": M.recall_score(y, pred, average=avg, zero_division=0),
                f"f1_{avg}": M.f1_score(y, pred, average=avg, zero_division=0)}
    if len(labels) == 2:
        out |= {"precision": M.precision_score(y, pred, pos_label=labels[1], zero_division=0),
                "recall": M.recall_score(y, pred, pos_label=labels[1], zero_division=0),
                "f1": M.f1_score(y, pred, pos_label=labels[1], zero_division=0),
                "roc_auc": M.roc_auc_score(y == labels[1], P[:, 1]), "pr_auc": M.average_precision_score(y == labels[1], P[:, 1]),
                "brier": M.brier_score_loss(y, P[:, 1], pos_label=labels[1])}
    else:
        out |= {"roc_auc": M.roc_auc_score(y, P, multi_class="ovr", labels=labels),
                "pr_auc": M.average_precision_score(label_binarize(y, classes=labels), P, average="macro"),
                "brier": M.brier_score_loss(y, P, labels=labels)}
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_equal_sklearn_with_ties(k, seed):
    "Random labels and probabilities rounded to one decimal (many tied scores), string labels for odd seeds."
    rng = np.random.default_rng(seed)
    n = 300
    labels = [f"c{i}" for i in range(k)] if seed % 2 else list(range(k))
    P = rng.multinomial(10, rng.dirichlet(np.ones(k) * 0.7, n)) / 10  # tenths: rows sum to 1, many tied scores
    codes = np.array([rng.choice(k, p=p / p.sum()) if rng.random() < 0.7 else rng.integers(k) for p in P])
    y = np.asarray(labels)[codes]
    pred = np.asarray(labels)[P.argmax(1)]
    ev = evaluate_predictions(y, pred, P, classes=labels, n_boot=0)
    expected = _sklearn(y, pred, P, labels)
    assert set(ev.metrics) == set(expected) | {"ece"}
    for key, value in expected.items():
        assert ev.metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_wine_forest_metrics_equal_sklearn():
    X, y = load_wine(return_X_y=True, as_frame=True)
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(X[::2], y[::2])
    ev = evaluate(forest, X[1::2], y[1::2], n_boot=0)
    P, pred = forest.predict_proba(X[1::2]), forest.predict(X[1::2])
    for key, value in _sklearn(y[1::2].to_numpy(), pred, P, [0, 1, 2]).items():
        assert ev.metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_regression_metrics_equal_sklearn_including_a_constant_target():
    rng = np.random.default_rng(0)
    y, p = rng.gamma(2, 10, 500), rng.gamma(2, 10, 500)
    ev = evaluate_predictions(y, p, n_boot=0)
    assert ev.metrics == pytest.approx({"mae": M.mean_absolute_error(y, p), "rmse": M.root_mean_squared_error(y, p), "r2": M.r2_score(y, p),
                                        "mape": M.mean_absolute_percentage_error(y, p), "median_ae": M.median_absolute_error(y, p)}, rel=1e-10)
    const = evaluate_predictions(np.full(10, 3.0), np.full(10, 3.0), task="regression", n_boot=0)
    assert const.metrics["r2"] == M.r2_score(np.full(10, 3.0), np.full(10, 3.0)) == 1.0


def test_bootstrap_intervals_equal_a_plain_loop_over_the_same_resamples():
    "The vectorised bootstrap gives exactly the percentiles of scikit-learn's metric on each resample."
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    P = np.column_stack([1 - p1, p1])
    ev = evaluate_predictions(y, (p1 >= 0.5).astype(int), P, n_boot=50, seed=7)
    counts = _resample_counts(400, 50, np.random.default_rng(7))
    idx = [np.repeat(np.arange(400), c.astype(int)) for c in counts]
    for key, fn in {"roc_auc": lambda i: M.roc_auc_score(y[i], p1[i]), "log_loss": lambda i: M.log_loss(y[i], P[i], labels=[0, 1]),
                    "f1": lambda i: M.f1_score(y[i], (p1[i] >= 0.5).astype(int))}.items():
        values = [fn(i) for i in idx]
        assert ev.ci[key] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), rel=1e-10), key


# ---------------------------------------------------------------- fairness equals fairlearn's

@pytest.mark.parametrize("gap", [0.0, 0.2, 0.35])
def test_fairness_equals_fairlearn_and_sees_the_known_gap(gap):
    import fairlearn.metrics as F
    df = synthetic_groups(8000, gap=gap, seed=5)
    sf = df["group"]
    # a "model" that predicts the label itself: its demographic parity difference is the generator's gap
    ev = evaluate_predictions(df["y"], df["y"], n_boot=0)
    f = fairness(ev, sf)
    assert f.summary["demographic_parity_difference"] == pytest.approx(F.demographic_parity_difference(df["y"], df["y"], sensitive_features=sf), abs=1e-12)
    assert abs(f.summary["demographic_parity_difference"] - gap) < 4 * np.sqrt(0.25 / 4000 * 2)  # 4 standard errors
    # a real model, two features: intersectional groups, fairlearn's numbers
    train = synthetic_groups(3000, gap=gap, seed=1)
    model = build_pipeline(suggest_spec(train, "y"), LogisticRegression()).fit(train.drop(columns="y"), train["y"])
    X = df.drop(columns="y")
    ev = evaluate(model, X, df["y"], sensitive_features=["group", "region"], n_boot=0)
    pred, both = model.predict(X), X[["group", "region"]].fillna("(missing)")
    for key, fn in {"demographic_parity_difference": F.demographic_parity_difference, "demographic_parity_ratio": F.demographic_parity_ratio,
                    "equalized_odds_difference": F.equalized_odds_difference, "equalized_odds_ratio": F.equalized_odds_ratio}.items():
        assert ev.metrics[key] == pytest.approx(fn(df["y"], pred, sensitive_features=both), abs=1e-12), key
    frame = F.MetricFrame(metrics={"sr": F.selection_rate, "tpr": F.true_positive_rate, "fpr": F.false_positive_rate},
                          y_true=df["y"], y_pred=pred, sensitive_features=both).by_group
    assert np.allclose(ev.fairness.by_group[["selection_rate", "tpr", "fpr"]].to_numpy(), frame.to_numpy(), equal_nan=True)
    assert len(ev.fairness.by_group) == 10 and ev.fairness.by_group["count"].sum() == 8000


def test_multiclass_fairness_is_one_vs_rest_with_the_worst_class():
    import fairlearn.metrics as F
    X, y = load_wine(return_X_y=True, as_frame=True)
    site = pd.Series(np.where(X["alcohol"] > 13, "high", "low"), dtype="str", name="site")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X, y)
    ev = evaluate(model, X, y, sensitive_features=site, n_boot=0)
    pred = model.predict(X)
    per = {c: F.equalized_odds_difference(y == c, pred == c, sensitive_features=site) for c in (0, 1, 2)}
    assert ev.fairness.per_class["equalized_odds_difference"].to_dict() == pytest.approx({str(c): v for c, v in per.items()}, abs=1e-12)
    assert ev.metrics["equalized_odds_difference"] == pytest.approx(max(per.values()), abs=1e-12)


# ---------------------------------------------------------------- hostile inputs

class LabelsOnly(ClassifierMixin, BaseEstimator):
    "A classifier with predict only: no probabilities, no decision function."
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self
    def predict(self, X): return np.where(np.asarray(X)[:, 0] > 0, self.classes_[1], self.classes_[0])


@pytest.fixture(scope="module")
def data():
    train, test = synthetic_groups(1500, seed=1), synthetic_groups(800, seed=2)
    model = build_pipeline(suggest_spec(train, "y"), LogisticRegression()).fit(train.drop(columns="y"), train["y"])
    return model, test.drop(columns="y"), test["y"]


def test_models_without_probabilities(data):
    _, X, y = data
    num = X[["age", "noise"]]
    svc = make_pipeline(StandardScaler(), LinearSVC()).fit(num, y)
    ev = evaluate(svc, num, y, n_boot=0)
    assert ev.metrics["roc_auc"] == pytest.approx(M.roc_auc_score(y, svc.decision_function(num)), abs=1e-12)
    assert {"log_loss", "brier", "ece"}.isdisjoint(ev.metrics)
    assert len(plot_roc(ev).data) == 2
    with pytest.raises(EvaluationError, match="needs probabilities; the model has only decision_function"): plot_calibration(ev)
    bare = evaluate(LabelsOnly().fit(num, y), num, y, n_boot=0)
    assert bare.metrics["accuracy"] == pytest.approx(M.accuracy_score(y, LabelsOnly().fit(num, y).predict(num)))
    assert "roc_auc" not in bare.metrics and "CalibratedClassifierCV" in bare.notes[0]
    with pytest.raises(EvaluationError, match="neither predict_proba nor decision_function; wrap it in sklearn.calibration.CalibratedClassifierCV"):
        plot_roc(bare)
    with pytest.raises(EvaluationError, match="no scores to threshold"): bare.metrics_at(0.5)


HOSTILE = [
    ("string labels, numeric model", lambda X, y: (X, y.map({0: "no", 1: "yes"}).astype("str")), {},
     "y holds label(s) ['no', 'yes'] (str) that are not classes of the model [0, 1] (int)"),
    ("a class the model never saw", lambda X, y: (X, y.where(y.index != y.index[0], 2)), {}, "y holds label(s) [2] (int)"),
    ("y shorter than X", lambda X, y: (X, y[:-3]), {}, "X has 800 rows but y has 797"),
    ("y with NaN", lambda X, y: (X, y.astype(float).where(y.index % 100 != 7)), {}, "y has 8 missing value(s) (rows [7, 107, 207, 307, 407])"),
    ("y with pd.NA", lambda X, y: (X, y.astype("Int64").where(y.index != 5)), {}, "y has 1 missing value(s) (rows [5])"),
    ("string y with a missing label", lambda X, y: (X, y.astype("str").where(y.index != 9)), {}, "y has 1 missing value(s) (rows [9])"),
    ("y as two columns", lambda X, y: (X, pd.concat([y, y], axis=1)), {}, "y must be one column, got shape (800, 2)"),
    ("sensitive column that does not exist", lambda X, y: (X, y), {"sensitive_features": ["group", "gender"]},
     "sensitive feature column(s) ['gender'] not in the data; columns: ['group', 'region', 'age', 'noise']"),
    ("sensitive labels of another length", lambda X, y: (X, y), {"sensitive_features": pd.Series(["a"] * 10)}, "sensitive features have 10 rows; the evaluation has 800"),
    ("a task that does not exist", lambda X, y: (X, y), {"task": "ranking"}, "task = 'ranking' is not one of 'auto', 'classification', 'regression'"),
    ("regression with a classifier", lambda X, y: (X, y), {"task": "regression"}, "is a classifier; use task='classification' or 'auto'"),
    ("an interval of 100 %", lambda X, y: (X, y), {"confidence": 1.0}, "confidence = 1.0 must be between 0 and 1"),
    ("a missing feature column", lambda X, y: (X.drop(columns="region"), y), {}, "column(s) ['region'] not in the data"),
]


@pytest.mark.parametrize("case,make,kw,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_inputs_raise_one_clear_error(data, case, make, kw, message):
    model, X, y = data
    Xb, yb = make(X, y)
    with pytest.raises(Exception) as e: evaluate(model, Xb, yb, n_boot=0, **kw)
    assert message in str(e.value), str(e.value)
    from mlops_workbench.errors import WorkbenchError
    assert isinstance(e.value, WorkbenchError), type(e.value)
    if case != "a missing feature column": assert isinstance(e.value, EvaluationError)


def test_pandas_string_labels_and_missing_categories_work():
    df = synthetic_groups(1200, seed=4).assign(y=lambda d: d["y"].map({0: "stay", 1: "leave"}).astype("str"))
    train, test = df[:800], df[800:]
    model = build_pipeline(suggest_spec(train, "y"), LogisticRegression()).fit(train.drop(columns="y"), train["y"])
    ev = evaluate(model, test.drop(columns="y"), test["y"], sensitive_features="region", n_boot=20)
    assert ev.classes == ["leave", "stay"] and ev.positive_class == "stay"
    assert ev.metrics["roc_auc"] == pytest.approx(M.roc_auc_score(test["y"] == "stay", model.predict_proba(test.drop(columns="y"))[:, 1]))
    assert "(missing)" in ev.fairness.by_group.index
    assert slices(ev, "region")["slice"].tolist()[-1] == "(missing)"
    json.dumps(ev.to_dict())  # JSON-safe with text labels


# ---------------------------------------------------------------- mlwb evaluate

@pytest.fixture
def cli(capsys, monkeypatch):
    "`mlwb ARGS` in this process, in folder `cwd`: a CompletedProcess."
    def run(*args: str, cwd) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e: main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, out.out, out.err)
    return run


@pytest.fixture
def files(tmp_path, data):
    "A model file and a labelled test file."
    model, X, y = data
    sio.dump(model, tmp_path/"model.skops")
    X.assign(y=y).to_csv(tmp_path/"test.csv", index=False)
    return tmp_path


@pytest.mark.slow
def test_cli_evaluates_a_skops_file_as_a_user_runs_it(files, data):
    model, X, y = data
    res = mlwb("evaluate", "model.skops", "--data", "test.csv", "--target", "y", "--sensitive", "group", "--sensitive", "region",
               "--out", "out/report.html", "--json", "--n-boot", "50", cwd=files, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    from mlops_workbench.data import load
    df = load(files/"test.csv")
    expected = evaluate(model, df.drop(columns="y"), df["y"], sensitive_features=["group", "region"], n_boot=50, explain=True)
    assert got["metrics"] == pytest.approx(expected.metrics, rel=1e-12)
    assert got["ci"]["roc_auc"] == pytest.approx(expected.ci["roc_auc"], rel=1e-12)
    assert (got["task"], got["n"], got["report"], got["run_id"]) == ("classification", 800, "out/report.html", None)
    assert got["fairness"]["features"] == ["group", "region"] and got["importance"][0]["feature"] == "region"
    page = (files/"out"/"report.html").read_text()
    assert page.count("<section id='tab-") == 7 and "<script src=" not in page


def test_cli_text_output_run_reference_and_experiment(files, cli, sqlite_ws, data):
    model, _, _ = data
    with start_run("tuning", name="study", workspace=sqlite_ws) as study:
        study.log_artifact(sio.dumps(model), "best_model.skops")
    ws = str(sqlite_ws.root)
    res = cli("-W", ws, "evaluate", study.id[:10], "--data", "test.csv", "--target", "y", "--no-explain", "--n-boot", "30",
              "--experiment", "checks", cwd=files)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{study.id[:10]} on test.csv: binary, 800 rows, positive class 1"
    assert [line.split()[0] for line in lines[1:8]] == ["roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier", "ece"]
    assert lines[-2] == "report written to evaluation.html" and lines[-1].startswith("run ")
    run = get_run(lines[-1].split()[1], workspace=sqlite_ws)
    saved = json.loads(run.load_artifact("evaluation.json"))
    assert run.metrics["roc_auc"] == saved["metrics"]["roc_auc"] and "importance" not in saved
    assert run.info["kind"] == "evaluation" and list(run.inputs["role"]) == ["test"]


def test_cli_user_errors_are_one_line(files, cli, sqlite_ws):
    def shady(X): return X
    sio.dump(make_pipeline(FunctionTransformer(shady), LogisticRegression()).fit([[0.0], [1.0]], [0, 1]), files/"shady.skops")
    ws = str(sqlite_ws.root)
    cases = [(["model.skops", "--target", "target"], "target column 'target' is not in test.csv; columns: ['group', 'region', 'age', 'noise', 'y']"),
             (["model.skops", "--target", "y", "-s", "gender"], "sensitive feature column(s) ['gender'] not in the data"),
             (["shady.skops", "--target", "y"], "holds types outside the trusted modules (sklearn, numpy, scipy, mlops_workbench): ['test_evaluate.shady']"),
             (["nothere.skops", "--target", "y"], "no model file at 'nothere.skops'"),
             (["abcdef12", "--target", "y"], "no run with id 'abcdef12'"),
             (["model.skops", "--target", "y", "--task", "regression"], "is a classifier; use task='classification'")]
    for args, message in cases:
        res = cli("-W", ws, "evaluate", args[0], "--data", "test.csv", *args[1:], "--no-explain", cwd=files)
        assert res.returncode == 1 and res.stdout == "", (args, res)
        assert res.stderr.startswith("error: ") and message in res.stderr and len(res.stderr.splitlines()) == 1, (args, res.stderr)
    assert not (files/"evaluation.html").exists()  # nothing written on error


def test_load_model_from_the_registry(files, sqlite_ws, data):
    from mlops_workbench import registry
    model, X, y = data
    registry.register(model, "churn", X=X, y=y, workspace=sqlite_ws)
    registry.promote("churn", 1, "production", workspace=sqlite_ws)
    for ref in ("churn/1", "churn@production"):
        assert load_model(ref, workspace=sqlite_ws).predict(X).tolist() == model.predict(X).tolist()


def test_numpy_features_evaluate_but_do_not_explain():
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    ev = evaluate(model, X, y, n_boot=0, sensitive_features=pd.Series(np.where(X[:, 0] > 13, "high", "low")))
    assert ev.X is None and ev.metrics["accuracy"] == M.accuracy_score(y, model.predict(X))
    assert slices(ev, pd.Series(np.where(X[:, 0] > 13, "high", "low"), name="alcohol"))["n"].sum() == len(y)
    with pytest.raises(EvaluationError, match="explanations need the model and its features as a DataFrame"): ev.explain()
    with pytest.raises(EvaluationError, match="sensitive feature column.s. \\['alcohol'\\] not in the data; columns: \\[\\]"):
        evaluate(model, X, y, sensitive_features="alcohol")

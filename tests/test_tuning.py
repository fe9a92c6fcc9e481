"""Tuning: a tuned model beats the default, interrupted studies resume without duplicates, worker processes share a
study on SQLite and PostgreSQL, trial runs link to their study run, and mistakes stop before any trial runs."""
from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from conftest import PYTHON, clean_env
from mlops_workbench.cli import main
from mlops_workbench.errors import DataError, WorkbenchError
from mlops_workbench.query import runs
from mlops_workbench.tracking import get_run
from mlops_workbench.tuning import builtin_space, study_storage, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def bc():
    return load_breast_cancer(return_X_y=True, as_frame=True)


def lr_pipe() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])


def lr_space(trial) -> dict:
    return {"model__C": trial.suggest_float("C", 1e-3, 10, log=True)}


def trial_runs() -> pd.DataFrame:
    return runs(experiment="tuning", where="kind = 'trial'", limit=1000)


def test_tuned_hgb_beats_the_default(sqlite_ws, bc):
    "With 20 % of the training labels flipped, the default HGB overfits the noise; tuning finds regularization."
    X, y = bc
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    flip = np.random.default_rng(0).random(len(ytr)) < 0.2
    ytr = ytr.where(~flip, 1 - ytr)
    pipe = Pipeline([("model", HistGradientBoostingClassifier(random_state=0))])
    default = roc_auc_score(yte, pipe.fit(Xtr, ytr).predict_proba(Xte)[:, 1])
    _, spec = builtin_space("hgb", "classification")
    res = tune(pipe, Xtr, ytr, spec, n_trials=12, cv=3, seed=0, progress=False)
    tuned = roc_auc_score(yte, res.best_pipeline.predict_proba(Xte)[:, 1])
    assert res.metric == "roc_auc" and set(res.best_params) == set(spec)
    assert tuned >= default + 0.01, (default, tuned)


def test_trials_link_to_the_study_run_and_the_best_model_is_its_artifact(sqlite_ws, bc):
    import skops.io as sio
    X, y = bc
    res = tune(lr_pipe(), X, y, lr_space, n_trials=4, cv=3, study="links", progress=False)
    study_run = get_run(res.study_run_id)
    assert (study_run.info["kind"], study_run.info["status"]) == ("study", "finished")
    assert study_run.tags["optuna_study"] == "links" and res.study.user_attrs["mlwb_study_run_id"] == study_run.id
    tr = trial_runs()
    assert len(tr) == 4 and set(tr["parent_id"]) == {study_run.id} and set(tr["status"]) == {"finished"}
    one = get_run(runs(where="tags.optuna_study = 'links' and tags.optuna_trial = '0'").index[0])
    assert one.tags["state"] == "COMPLETE" and one.tags["optuna_trial"] == "0" and set(one.params) == {"model__C"}
    folds = one.metric_history("roc_auc")
    assert folds["step"].tolist() == [0, 1, 2]
    assert one.metrics["mean_roc_auc"] == pytest.approx(folds["value"].mean()) == pytest.approx(res.study.trials[0].value)
    assert one.metrics["duration_s"] > 0
    assert set(study_run.artifacts["name"]) == {"best_model.skops", "trials"}
    data = study_run.load_artifact("best_model.skops")
    model = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert (model.predict(X) == res.best_pipeline.predict(X)).all()
    assert model.get_params()["model__C"] == pytest.approx(res.best_params["model__C"])


def test_interrupt_then_resume(ws, bc):
    "KeyboardInterrupt after 3 trials, then mid-trial; each resume continues the numbering and duplicates nothing."
    X, y = bc
    def stop_after(k):
        def callback(study, trial):
            if trial.number == k - 1: raise KeyboardInterrupt
        return callback
    with pytest.raises(KeyboardInterrupt):
        tune(lr_pipe(), X, y, lr_space, n_trials=10, cv=3, study="resumable", prune=False, callbacks=[stop_after(3)], progress=False)
    first = runs(experiment="tuning", where="kind = 'study'")
    assert first["status"].tolist() == ["killed"]
    assert len(trial_runs()) == 3

    calls = {"n": 0}
    def interrupting_scorer(estimator, X_, y_):  # the 2nd fold of the 2nd trial of this call is interrupted
        calls["n"] += 1
        if calls["n"] == 5: raise KeyboardInterrupt
        return roc_auc_score(y_, estimator.predict_proba(X_)[:, 1])
    with pytest.raises(KeyboardInterrupt):
        tune(lr_pipe(), X, y, lr_space, n_trials=10, cv=3, metric=interrupting_scorer, study="resumable", prune=False, progress=False)

    res = tune(lr_pipe(), X, y, lr_space, n_trials=2, cv=3, study="resumable", prune=False, progress=False)
    states = [(t.number, t.state.name) for t in res.study.trials]
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE"), (3, "COMPLETE"), (4, "FAIL"), (5, "COMPLETE"), (6, "COMPLETE")]
    tr = trial_runs()
    assert sorted(tr["tags.optuna_trial"].astype(int)) == list(range(7))
    assert tr.set_index(tr["tags.optuna_trial"].astype(int)).loc[4, ["status", "tags.state"]].tolist() == ["killed", "FAIL"]
    studies = runs(experiment="tuning", where="kind = 'study'").sort_values("start_time")
    assert studies["status"].tolist() == ["killed", "killed", "finished"]
    first_id = studies.index[0]
    assert [get_run(i).tags.get("resumes") for i in studies.index] == [None, first_id, first_id]
    assert res.study.user_attrs["mlwb_study_run_id"] == first_id
    assert tr.groupby("parent_id").size().reindex(studies.index).tolist() == [3, 2, 2]


WORKER = textwrap.dedent("""
    import sys, optuna
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from mlops_workbench.tuning import tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    pipe = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    space = {"model__C": {"type": "float", "low": 1e-3, "high": 10, "log": True}}
    tune(pipe, X, y, space, n_trials=int(sys.argv[1]), cv=3, study="shared", seed=int(sys.argv[2]), progress=False)
""")


@pytest.mark.slow
def test_two_worker_processes_share_one_study(ws):
    env = clean_env(MLWB_HOME=str(ws.root))
    procs = [subprocess.Popen([str(PYTHON), "-c", WORKER, str(n), str(seed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n, seed in ((5, 0), (4, 1))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="shared", storage=study_storage(ws))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(9)) and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    studies = runs(experiment="tuning", where="kind = 'study'")
    assert len(studies) == 2 and set(studies["status"]) == {"finished"}
    tr = trial_runs()
    assert sorted(tr["tags.optuna_trial"].astype(int)) == list(range(9))
    assert sorted(tr.groupby("parent_id").size().tolist()) == [4, 5] and set(tr["parent_id"]) == set(studies.index)
    assert sorted(int(t) for t in tr["tags.optuna_trial"]) == sorted(t.number for t in study.trials)  # each trial has its run


# ---------------------------------------------------------------- mistakes, before any trial runs

def run_cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main(list(args))
    return e.value.code or 0, capsys.readouterr().err


@pytest.fixture
def bc_csv(sqlite_ws, bc, tmp_path):
    X, y = bc
    X.assign(target=y).to_csv(tmp_path/"bc.csv", index=False)
    return tmp_path/"bc.csv"


def no_trial_ran(ws) -> bool:
    return study_storage(ws).get_all_studies() == [] and runs(limit=10).empty


@pytest.mark.parametrize("extra, message", [
    (["--target", "target", "--model", "xgboost"], "error: unknown model 'xgboost'; valid models: logreg, rf, hgb, ridge, lasso, svm\n"),
    (["--target", "diagnosis", "--model", "hgb"], "error: target column 'diagnosis' is not in the data; columns: "),
    (["--target", "target", "--model", "svm", "--space", '{"model__C": {"type": "float", "low": 10, "high": 1}}'],
     "error: invalid search space: parameter 'model__C': low = 10 must be less than high = 1\n"),
    (["--target", "target", "--model", "svm", "--space", '{"C": {"type": "float", "low": 0.1, "high": 1}}'],
     "error: invalid search space: parameter 'C': the pipeline has no such parameter; did you mean ['model__C']"),
    (["--target", "target", "--model", "logreg", "--metric", "accuracy_score"], "error: unknown metric 'accuracy_score'"),
    (["--target", "target", "--model", "lasso"], "error: model 'lasso' does not do classification; for classification use one of logreg, rf, hgb, ridge, svm\n"),
])
def test_cli_mistakes_are_one_line_before_any_trial(sqlite_ws, bc_csv, capsys, extra, message):
    code, err = run_cli(capsys, "tune", "--data", str(bc_csv), "--trials", "2", *extra)
    assert code == 1 and err.startswith(message) and err.count("\n") == 1, err
    assert no_trial_ran(sqlite_ws)


def test_python_mistakes_before_any_trial(sqlite_ws, bc):
    X, y = bc
    with pytest.raises(WorkbenchError, match=r"parameter 'model__kernel': choices = \[\] must be a non-empty list"):
        tune(lr_pipe(), X, y, {"model__kernel": {"type": "categorical", "choices": []}}, n_trials=2, progress=False)
    with pytest.raises(DataError, match="the target y has missing values"):
        tune(lr_pipe(), X, y.astype(float).where(y > 0), lr_space, n_trials=2, progress=False)
    assert no_trial_ran(sqlite_ws)


def test_cli_tunes_and_resumes(sqlite_ws, bc_csv, capsys):
    args = ["tune", "--data", str(bc_csv), "--target", "target", "--model", "ridge", "--trials", "2", "--cv", "3", "--study", "cli", "--json"]
    assert run_cli(capsys, *args)[0] == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: main(args)
    out = json.loads(capsys.readouterr().out)
    assert e.value.code in (0, None) and out["study"] == "cli" and out["trials"] == {"COMPLETE": 4}
    assert out["metric"] == "roc_auc" and list(out["best_params"]) == ["model__alpha"]


@pytest.mark.parametrize("model", ["forest", "sgd"])
def test_growing_models_are_pruned_inside_the_first_fit(sqlite_ws, bc, monkeypatch, model):
    "A forest (warm_start) and SGD (partial_fit) report each stage of their first fit; a prune there stops the trial mid-fit."
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import SGDClassifier
    from mlops_workbench.tuning import STAGES
    X, y = bc
    est = RandomForestClassifier(n_estimators=25, random_state=0) if model == "forest" else SGDClassifier(loss="log_loss", max_iter=10, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()), ("model", est)])
    space = (lambda t: {"model__max_depth": t.suggest_int("d", 2, 6)}) if model == "forest" else (lambda t: {"model__alpha": t.suggest_float("a", 1e-5, 1e-2, log=True)})
    # the pruner stops the first trial at its second report, the second trial never
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 0 and max(self.storage.get_trial(self._trial_id).intermediate_values) >= 1)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tune(pipe, X, y, space, n_trials=2, cv=3, progress=False)
    # the folds after the staged one are fitted from scratch, not grown from the first fold's model
    assert not [w for w in caught if "Warm-start fitting without increasing" in str(w.message)]
    assert res.best_pipeline.get_params().get("model__warm_start") is False
    first, second = res.study.trials
    assert first.state.name == "PRUNED" and sorted(first.intermediate_values) == [0, 1]  # stopped at stage 2 of the first fit
    assert second.state.name == "COMPLETE" and sorted(second.intermediate_values) == list(range(STAGES - 1 + 3))
    r = get_run(runs(where="kind = 'trial' and tags.optuna_trial = '0'", experiment="tuning").index[0])
    assert r.tags["state"] == "PRUNED" and r.info["status"] == "finished"
    assert r.metric_history("roc_auc_stage")["step"].tolist() == [0, 1] and "roc_auc" not in r.metrics  # no fold finished

"""The model registry on SQLite and PostgreSQL: safe model files, gates, alias moves under concurrency, the CLI."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import sqlalchemy as sa
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import make_column_transformer
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from conftest import PYTHON, clean_env, mlwb
from mlops_workbench import registry as R
from mlops_workbench import store as S
from mlops_workbench.config import load_workspace, use_workspace
from mlops_workbench.errors import GateFailed, NotFound, RegistryError, SignatureError
from mlops_workbench.tracking import start_run


# ---------------------------------------------------------------- data and models

@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X.iloc[:400], y.iloc[:400], X.iloc[400:], y.iloc[400:]


@pytest.fixture(scope="module")
def logreg(cancer):
    X, y, _, _ = cancer
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)


def mixed_frame(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    "Numbers, text, a category and a flag; the label depends on the text and one number."
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.integers(18, 90, n), "income": rng.normal(50_000, 12_000, n),
                      "city": pd.Series(rng.choice(["Lima", "Oslo", "Pune", "Kyiv"], n), dtype="str"),
                      "plan": pd.Categorical(rng.choice(["basic", "pro"], n)), "member": rng.random(n) > 0.3})
    y = pd.Series(np.where((X["city"] == "Oslo") | (X["age"] > 60), "churn", "stay"), name="label")
    return X, y


def mixed_model(X, y):
    ct = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]), remainder="passthrough")
    return make_pipeline(ct, RandomForestClassifier(n_estimators=20, random_state=0)).fit(X, y)


class Doubler(TransformerMixin, BaseEstimator):
    "A transformer from outside the trusted modules."
    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X): return X * 2


def audit(ws, action: str | None = None) -> list[dict]:
    entries = [e for e in S.audit_entries(ws.open_store()) if e["target_kind"] == "model"]
    return [e for e in entries if action is None or e["action"] == action]


# ---------------------------------------------------------------- register -> load

def test_register_load_identical_predictions(ws):
    X, y = mixed_frame(600)
    X_new, _ = mixed_frame(200, seed=1)
    model = mixed_model(X, y)
    mv = R.register(model, "churn", X=X, y=y, metrics={"f1": 0.9})
    assert (mv.ref, mv.status, mv.signature.output_kind, mv.signature.classes) == ("churn/1", "active", "classification", ["churn", "stay"])
    assert [mv.signature.inputs[c]["kind"] for c in X.columns] == ["integer", "numeric", "categorical", "categorical", "boolean"]
    for ref in ("churn/1", "churn", "churn@latest"):
        loaded = R.load(ref)
        assert type(loaded.steps[-1][1]) is RandomForestClassifier
        np.testing.assert_array_equal(loaded.predict_proba(X_new), model.predict_proba(X_new))
        np.testing.assert_array_equal(loaded.predict(X_new), model.predict(X_new))
    # through the signature, from JSON records, as a server would
    records = X_new.assign(plan=X_new.plan.astype(str)).to_dict("records")
    np.testing.assert_array_equal(R.load("churn/1").predict_proba(mv.signature.frame(records)), model.predict_proba(X_new))
    # the stored file is byte for byte what skops writes, addressed by its sha256
    assert mv.artifact_sha256 == mv.files["model"]["sha256"] and mv.size == mv.files["model"]["size"]
    out = mv.reference_outputs()
    assert list(out.columns) == ["prediction", "proba_churn", "proba_stay", "label"]
    assert out["label"].tolist() == y.tolist()
    np.testing.assert_array_equal(out["proba_churn"].to_numpy(), model.predict_proba(X)[:, 0])
    assert mv.reference().equals(X)


def test_versions_are_numbered_per_name_and_never_reused(sqlite_ws, logreg, cancer):
    X, y, _, _ = cancer
    assert [R.register(logreg, n, X=X, y=y).version for n in ("a", "a", "b", "a")] == [1, 2, 1, 3]
    R.delete_version("a", 3, reason="mistake")
    assert R.register(logreg, "a", X=X, y=y).version == 4
    assert R.versions("a").index.tolist() == [4, 2, 1]
    assert R.models()["latest"].to_dict() == {"a": 4, "b": 1}
    # the same bytes are stored once: a skops file registered twice, the same reference data
    data = sio.dumps(logreg)
    first = R.register(data, "c", X=X, y=y)
    count = len([p for p in (sqlite_ws.artifact_root/"blobs").rglob("*") if p.is_file()])
    second = R.register(data, "c", X=X, y=y)
    assert (second.version, second.artifact_sha256, second.files["reference"]) == (2, first.artifact_sha256, first.files["reference"])
    assert len([p for p in (sqlite_ws.artifact_root/"blobs").rglob("*") if p.is_file()]) == count


def test_reference_is_a_seeded_sample_of_at_most_10000_rows(sqlite_ws):
    X, y = mixed_frame(25_000)
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["city", "plan"]), remainder="passthrough"),
                          StandardScaler(), LogisticRegression(max_iter=500)).fit(X.head(2000), y.head(2000))
    t = time.perf_counter()
    mv = R.register(model, "big", X=X, y=y)
    took = time.perf_counter() - t
    ref, out = mv.reference(), mv.reference_outputs()
    assert len(ref) == 10_000 and ref.index.is_monotonic_increasing and ref.index.is_unique
    assert ref.equals(X.loc[ref.index]) and out.index.equals(ref.index)
    assert out["label"].tolist() == y.loc[ref.index].tolist()
    assert mv.reference_profile()["n_rows"] == 10_000
    assert R.register(model, "big", X=X, y=y).reference().index.equals(ref.index)  # the same seed, the same rows
    assert R.register(model, "big", X=X, y=y, seed=1).reference().index.equals(ref.index) is False
    assert mv.lineage["datasets"][0]["n_rows"] == 25_000
    assert took < 15, took


def test_regression_model(sqlite_ws):
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    model = Ridge().fit(X, y)
    mv = R.register(model, "diabetes", X=X, y=y, metrics={"r2": model.score(X, y)})
    assert (mv.signature.output_kind, mv.signature.classes, mv.signature.proba) == ("regression", None, False)
    assert list(mv.reference_outputs().columns) == ["prediction", "label"]
    np.testing.assert_array_equal(R.load("diabetes").predict(X), model.predict(X))
    assert "| task | regression |" in R.model_card("diabetes").markdown


def test_register_in_a_run_links_both_ways(ws, logreg, cancer):
    X, y, X_test, y_test = cancer
    with start_run("cancer") as run:
        run.log_metric("roc_auc", 0.97)
        run.log_input(pd.concat([X, y], axis=1), "train", name="cancer-train")
        mv = R.register(logreg, "cancer", X=X, y=y, metrics={"accuracy": 0.95})
    assert mv.metrics == {"roc_auc": 0.97, "accuracy": 0.95}
    assert (mv.run_id, mv.lineage["run_id"], mv.lineage["experiment"]) == (run.id, run.id, "cancer")
    assert [d["role"] for d in mv.lineage["datasets"]] == ["train_inputs", "train_target", "train"]
    assert mv.lineage["datasets"][2]["name"] == "cancer-train"
    assert sorted(run.artifacts["name"]) == ["registry/cancer/1/model.skops", "registry/cancer/1/reference.parquet"]
    assert run.artifacts.set_index("name").loc["registry/cancer/1/model.skops", "sha256"] == mv.artifact_sha256
    assert sorted(run.inputs["role"]) == ["train", "train_inputs"]
    # a run given by id, after it ended
    mv2 = R.register(logreg, "cancer", X=X, y=y, run=run.id[:8])
    assert mv2.run_id == run.id and "registry/cancer/2/model.skops" in set(run.artifacts["name"])


def test_register_outside_a_run(sqlite_ws, logreg, cancer):
    X, y, _, _ = cancer
    mv = R.register(logreg, "cancer", X=X, y=y)
    assert mv.run_id is None and mv.lineage["run_id"] is None
    assert mv.lineage["datasets"][0]["role"] == "train_inputs" and mv.lineage["environment"]["packages"]["skops"]
    assert audit(sqlite_ws, "model.register")[0]["details"]["run_id"] is None


def test_evaluation_on_the_run_reaches_the_version_and_the_card(sqlite_ws):
    from mlops_workbench.evaluate import evaluate
    X, y = mixed_frame(800)
    model = mixed_model(X.iloc[:600], y.iloc[:600])
    with start_run("churn") as run:
        evaluate(model, X.iloc[600:], y.iloc[600:], sensitive_features="city", explain=True, n_boot=50)
        mv = R.register(model, "churn", X=X.iloc[:600], y=y.iloc[:600], description="Who may leave next month.")
    ev = mv.evaluation()
    assert ev is not None and ev["n"] == 200 and "fairness" in ev and "importance" in ev
    assert mv.metrics["accuracy"] == pytest.approx(ev["metrics"]["accuracy"])
    md = R.model_card("churn").markdown
    assert "Who may leave next month." in md
    low, high = ev["ci"]["accuracy"]
    assert f"| accuracy | {ev['metrics']['accuracy']:.4g} | {low:.4g} .. {high:.4g} |" in md
    assert "Groups by city." in md and "### By group" in md and "| demographic_parity_difference |" in md
    top = max(ev["importance"], key=lambda r: abs(r["importance_mean"]))["feature"]
    assert f"| {top} | " in md.split("## Explanations")[1].split("## Limitations")[0]
    assert "Not evaluated" not in md


# ---------------------------------------------------------------- pickles and untrusted types

@pytest.mark.parametrize("kind", ["pickle", "joblib", "random", "zip", "empty"])
def test_non_skops_files_are_refused(sqlite_ws, logreg, cancer, tmp_path, kind):
    X, y, _, _ = cancer
    path = tmp_path/f"model.{kind}"
    if kind == "pickle": path.write_bytes(pickle.dumps(logreg))
    elif kind == "joblib":
        import joblib
        joblib.dump(logreg, path)
    elif kind == "random": path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "zip":
        import zipfile
        with zipfile.ZipFile(path, "w") as z: z.writestr("model.pkl", pickle.dumps(logreg))
    else: path.write_bytes(b"")
    why = {"pickle": "it is a Python pickle", "joblib": "it is a Python pickle", "random": "it is not a zip archive",
           "zip": "it is a zip archive without skops' schema.json", "empty": "it is not a zip archive"}[kind]
    for call in (lambda: R.register(path, "m", X=X, y=y), lambda: R.register(path.read_bytes(), "m", X=X, y=y),
                 lambda: R.load_skops(path)):
        with pytest.raises(RegistryError) as e: call()
        msg = str(e.value)
        assert f"is not a skops model file ({why})" in msg and "pickles are refused by design" in msg
        assert "skops.io.dump(model, 'model.skops')" in msg
    assert R.models().empty and audit(sqlite_ws) == []


def test_a_skops_file_registers(sqlite_ws, logreg, cancer, tmp_path):
    X, y, X_test, _ = cancer
    sio.dump(logreg, tmp_path/"m.skops")
    mv = R.register(tmp_path/"m.skops", "m", X=X, y=y)
    np.testing.assert_array_equal(mv.load().predict_proba(X_test), logreg.predict_proba(X_test))


def test_a_tampered_model_file_is_refused(sqlite_ws, logreg, cancer):
    X, y, _, _ = cancer
    mv = R.register(logreg, "m", X=X, y=y)
    blob = sqlite_ws.artifact_root/"blobs"/mv.artifact_sha256[:2]/mv.artifact_sha256[2:]
    os.chmod(blob, 0o644)
    blob.write_bytes(pickle.dumps(logreg))
    with pytest.raises(RegistryError, match="was modified after registration"): R.load("m/1")
    # someone with write access to the database points the version at a pickle: the format check still refuses it
    from mlops_workbench.artifacts import BlobStore
    evil = BlobStore(sqlite_ws.artifact_root).put_bytes(pickle.dumps(logreg)).sha256
    files = {**mv.files, "model": {**mv.files["model"], "sha256": evil}}
    with sqlite_ws.open_store().write() as conn:
        conn.execute(S.model_versions.update().values(artifact_sha256=evil, files=json.dumps(files)))
    with pytest.raises(RegistryError, match=r"model m/1 is not a skops model file \(it is a Python pickle\)"): R.load("m/1")
    blob.unlink()
    with sqlite_ws.open_store().write() as conn:
        conn.execute(S.model_versions.update().values(artifact_sha256=mv.artifact_sha256, files=json.dumps(mv.files)))
    with pytest.raises(RegistryError, match="is missing from"): R.load("m/1")


def test_types_outside_the_trusted_modules_need_trusted(sqlite_ws, cancer):
    X, y, X_test, _ = cancer
    model = make_pipeline(Doubler(), StandardScaler(), LogisticRegression(max_iter=3000)).fit(X, y)
    name = f"{Doubler.__module__}.Doubler"
    with pytest.raises(RegistryError) as e: R.register(model, "doubled", X=X, y=y)
    assert f"['{name}']" in str(e.value) and f"trusted=['{name}']" in str(e.value)
    assert "sklearn, numpy, scipy, mlops_workbench" in str(e.value)
    with pytest.raises(RegistryError, match="Doubler"): R.load_skops(sio.dumps(model))
    mv = R.register(model, "doubled", X=X, y=y, trusted=[name])
    assert mv.files["trusted_types"] == [name]
    np.testing.assert_array_equal(R.load("doubled").predict(X_test), model.predict(X_test))  # trusted at registration
    assert sio.get_untrusted_types(data=mv._file("model")) == [name]


def test_a_model_defined_in_a_notebook_is_refused_with_a_hint(sqlite_ws, cancer):
    from sklearn.preprocessing import FunctionTransformer
    X, y, _, _ = cancer
    ns: dict = {}
    exec("from sklearn.preprocessing import FunctionTransformer\nf = FunctionTransformer(lambda a: a * 2)", {"__name__": "__main__"}, ns)
    model = make_pipeline(ns["f"], StandardScaler(), LogisticRegression(max_iter=3000)).fit(X, y)
    with pytest.raises(RegistryError, match=r"defined in a notebook or script \(__main__\), which another process cannot import"):
        R.register(model, "m", X=X, y=y)


@pytest.mark.parametrize("bad, message", [
    (LogisticRegression(), "this LogisticRegression is not fitted"),
    ("no/such/file.skops", "no model file at 'no/such/file.skops'"),
    (42, "'int' is not a scikit-learn estimator"),
])
def test_what_is_not_a_fitted_model(sqlite_ws, cancer, bad, message):
    X, y, _, _ = cancer
    with pytest.raises(RegistryError, match=message): R.register(bad, "m", X=X, y=y)


def test_register_checks_its_inputs_before_writing(sqlite_ws, logreg, cancer):
    X, y, _, _ = cancer
    cases = [(dict(X=None), "register needs X"), (dict(X=X.to_numpy()), "X must be a pandas DataFrame"),
             (dict(X=X.iloc[:0]), "X has no rows"), (dict(X=X, y=y[:5]), "y has 5 values but X has 400 rows"),
             (dict(X=X.iloc[:, :10]), "the model fails to predict on X"), (dict(X=X, metrics={"auc": "good"}), "metric 'auc' = 'good' is not a number"),
             (dict(X=X, gate={"verdict": "ok"}), "a gate result needs a true/false 'passed'"),
             (dict(X=X, evaluation=[1]), "evaluation must be a dict"), (dict(X=X, run=3.5), "run must be a Run or a run id")]
    for kwargs, message in cases:
        with pytest.raises(RegistryError, match=message): R.register(logreg, "m", **kwargs)
    with pytest.raises(NotFound, match="no run with id"): R.register(logreg, "m", X=X, run="abcdef12")
    assert R.models().empty and audit(sqlite_ws) == []
    assert not (sqlite_ws.artifact_root/"blobs").exists() or not any(p.is_file() for p in (sqlite_ws.artifact_root/"blobs").rglob("*"))


# ---------------------------------------------------------------- names and references

@pytest.mark.parametrize("name", ["", " ", "a b", "a@b", "a/b", "../x", ".hidden", "-x", "x" * 201, "émile", "a\0b", None, 3])
def test_invalid_model_names(sqlite_ws, logreg, cancer, name):
    X, y, _, _ = cancer
    with pytest.raises(RegistryError, match="is not valid"): R.register(logreg, name, X=X, y=y)


@pytest.mark.parametrize("alias, message", [("3", "is not valid"), ("latest", "is reserved"), ("", "is not valid"), ("a b", "is not valid"),
                                            ("-x", "is not valid"), ("x" * 101, "is not valid"), ("prod/1", "is not valid")])
def test_invalid_aliases(sqlite_ws, logreg, cancer, alias, message):
    X, y, _, _ = cancer
    R.register(logreg, "m", X=X, y=y)
    with pytest.raises(RegistryError, match=message): R.promote("m", 1, alias)


@pytest.mark.parametrize("ref", ["m/0", "m/-1", "m/1.5", "m/", "m/१", "@prod", "m@", "m@1", "/1", "m/1/2"])
def test_references_that_do_not_parse(ref):
    with pytest.raises(RegistryError, match="does not parse"): R.parse_ref(ref)


def test_not_found_lists_what_exists(ws, logreg, cancer):
    X, y, _, _ = cancer
    with pytest.raises(NotFound, match=r"no model named 'm'; no model is registered yet"): R.load("m")
    for _ in range(3): R.register(logreg, "m", X=X, y=y)
    R.promote("m", 2, "production")
    R.archive("m", 3)
    cases = {"x@production": "no model named 'x'; registered models: m", "m/9": "model 'm' has no version 9; its versions: 1, 2, 3 (archived)",
             "m@staging": "model 'm' has no alias 'staging'; its aliases: production -> 2"}
    for ref, message in cases.items():
        with pytest.raises(NotFound) as e: R.get_version(ref)
        assert str(e.value) == message
    assert R.resolve("m") == ("m", 2) and R.resolve("m/3") == ("m", 3)
    with pytest.raises(NotFound, match="no model named 'x'"): R.versions("x")


def test_resolve_is_one_query(ws, logreg, cancer):
    X, y, _, _ = cancer
    R.register(logreg, "m", X=X, y=y)
    R.promote("m", 1, "production")
    store = ws.open_store()
    seen = []
    listener = lambda *a: seen.append(a[2])
    sa.event.listen(store.engine, "before_cursor_execute", listener)
    try:
        for ref in ("m@production", "m/1", "m"):
            seen.clear()
            assert R.resolve(ref, ws) == ("m", 1)
            assert len([s for s in seen if s.lstrip().upper().startswith("SELECT")]) == 1, seen
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", listener)


# ---------------------------------------------------------------- gates

@pytest.fixture
def two_versions(logreg, cancer):
    "Versions 1 (roc_auc 0.95) and 2 (roc_auc 0.96) of `m`, version 1 in production."
    X, y, _, _ = cancer
    R.register(logreg, "m", X=X, y=y, metrics={"roc_auc": 0.95, "dpd": 0.02})
    R.register(logreg, "m", X=X, y=y, metrics={"roc_auc": 0.96, "dpd": 0.2})
    R.promote("m", 1, "production")


def test_promote_respects_the_gate(ws, two_versions):
    policy = ["roc_auc >= 0.9", "roc_auc >= champion + 0.02", "dpd <= 0.1"]
    with pytest.raises(GateFailed) as e: R.promote("m", 2, "production", policy=policy)
    res = e.value.result
    assert res.passed is False and res.had_champion is True
    assert [(c["rule"], c["value"], c["threshold"], c["passed"]) for c in res.checks] == [
        ("roc_auc >= 0.9", 0.96, 0.9, True), ("roc_auc >= champion + 0.02", 0.96, pytest.approx(0.97), False), ("dpd <= 0.1", 0.2, 0.1, False)]
    assert str(e.value).startswith("promotion of m/2 to 'production' refused, gate failed: roc_auc = 0.96, needs >= 0.97; dpd = 0.2, needs <= 0.1")
    assert R.aliases("m") == {"production": 1} and len(R.alias_history("m")) == 1
    refused = audit(ws, "model.promote_refused")
    assert len(refused) == 1 and refused[0]["target_id"] == "m@production" and refused[0]["details"]["gate"]["passed"] is False
    with pytest.raises(RegistryError, match="needs a reason"): R.promote("m", 2, "production", policy=policy, force=True)
    with pytest.raises(RegistryError, match="needs a reason"): R.promote("m", 2, "production", policy=policy, force=True, reason="   ")
    c = R.promote("m", 2, "production", policy=policy, force=True, reason="fairness fix ships tomorrow")
    assert (c.from_version, c.to_version, c.forced, c.gate["passed"]) == (1, 2, True, False)
    h = R.alias_history("m").iloc[-1]
    assert (h["action"], h["gate"], bool(h["forced"]), h["reason"]) == ("promote", "failed", True, "fairness fix ships tomorrow")
    entry = audit(ws, "model.promote")[-1]
    assert entry["details"]["reason"] == "fairness fix ships tomorrow" and entry["details"]["gate"]["checks"][1]["passed"] is False
    # a passing policy
    assert R.promote("m", 1, "staging", policy="roc_auc >= 0.9; roc_auc >= champion").gate["passed"] is True


def test_a_stored_failed_gate_blocks_promotion_without_a_policy(ws, logreg, cancer):
    from mlops_workbench.gates import Policy
    X, y, _, _ = cancer
    gate = Policy("roc_auc >= 0.99").check({"roc_auc": 0.9})
    R.register(logreg, "m", X=X, y=y, metrics={"roc_auc": 0.9}, gate=gate)
    with pytest.raises(GateFailed, match=r"gate failed: roc_auc = 0.9, needs >= 0.99") as e: R.promote("m", 1, "production")
    assert e.value.result.passed is False and R.aliases("m") == {}
    assert R.promote("m", 1, "production", policy="roc_auc >= 0.8").changed            # an explicit policy decides
    assert R.versions("m").loc[1, "gate"] == "failed"


def test_the_workspace_policy_applies_without_a_policy(ws, two_versions):
    with open(ws.config_path, "a") as f: f.write('\n[gate]\nrules = ["roc_auc >= champion + 0.05"]\n')
    use_workspace(load_workspace(ws.root))
    with pytest.raises(GateFailed, match="needs >= 1"): R.promote("m", 2, "production")
    assert R.promote("m", 2, "production", policy="roc_auc >= 0.5").to_version == 2


def test_promoting_where_the_alias_points_is_a_no_op(ws, two_versions):
    c = R.promote("m", 1, "production", policy="roc_auc >= 0.99")
    assert (c.changed, c.message) == (False, "m@production already points at version 1; nothing changed")
    assert len(R.alias_history("m")) == 1 and len(audit(ws, "model.promote")) == 1


def test_rollback_undoes_moves_one_at_a_time_and_skips_retired_versions(ws, logreg, cancer):
    X, y, _, _ = cancer
    for _ in range(4): R.register(logreg, "m", X=X, y=y)
    for v in (1, 2, 3, 4): R.promote("m", v, "production")
    R.archive("m", 3, reason="leaks a feature")
    c = R.rollback("m", "production", reason="latency")
    assert (c.from_version, c.to_version, c.reason) == (4, 2, "latency")
    R.delete_version("m", 4, reason="broken")
    assert R.rollback("m", "production").to_version == 1
    with pytest.raises(RegistryError, match=r"m@production has no earlier version to roll back to; promote a version instead"):
        R.rollback("m", "production")
    R.promote("m", 2, "staging"); R.promote("m", 1, "staging")
    R.archive("m", 2)
    with pytest.raises(RegistryError, match=r"m@staging has no earlier version to roll back to \(versions \[2\] were archived or deleted\)"):
        R.rollback("m", "staging")
    R.remove_alias("m", "production", reason="maintenance")
    assert R.aliases("m") == {"staging": 1}
    assert R.rollback("m", "production").to_version == 1
    h = R.alias_history("m", "production")
    assert h["action"].tolist() == ["promote"] * 4 + ["rollback", "rollback", "remove", "rollback"]
    assert h["to_version"].fillna(0).tolist() == [1, 2, 3, 4, 2, 1, 0, 1]
    assert [e["action"] for e in audit(ws) if e["action"] != "model.register"] == (
        ["model.promote"] * 4 + ["model.archive", "model.rollback", "model.delete", "model.rollback"] + ["model.promote"] * 2 +
        ["model.archive", "model.remove", "model.rollback"])
    with pytest.raises(NotFound, match="no model named 'x'"): R.rollback("x", "production")


def test_archive_and_delete_refuse_aliased_versions(ws, two_versions):
    with pytest.raises(RegistryError, match=r"cannot archive m/1: m@production point\(s\) at it"): R.archive("m", 1)
    with pytest.raises(RegistryError, match=r"cannot delete m/1: m@production point\(s\) at it"): R.delete_version("m", 1, reason="x")
    with pytest.raises(RegistryError, match="deleting a version needs a reason"): R.delete_version("m", 2, reason=None)
    assert R.archive("m", 2).status == "archived"
    assert R.resolve("m") == ("m", 1)
    with pytest.raises(RegistryError, match=r"m/2 is archived; restore it first"): R.promote("m", 2, "staging")
    assert R.restore("m", 2, reason="needed again").status == "active"
    assert [e["details"].get("reason") for e in audit(ws) if e["action"] in ("model.archive", "model.restore")] == [None, "needed again"]


def test_alias_history_is_append_only(ws, two_versions):
    store = ws.open_store()
    for stmt in (S.alias_history.update().values(reason="rewritten"), S.alias_history.delete()):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.write() as conn: conn.execute(stmt)
    assert len(R.alias_history("m")) == 1


# ---------------------------------------------------------------- concurrency

PROMOTER = textwrap.dedent("""
    import json, os, random, sys, time
    from pathlib import Path
    from mlops_workbench.errors import RegistryError
    import mlops_workbench.gates
    from mlops_workbench.registry import aliases, promote, rollback
    seed, n, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    os.environ["MLWB_ACTOR"] = f"promoter-{seed}"
    aliases("m")   # imports done and the store open before the start
    while not go.exists(): time.sleep(0.005)
    rng, moves = random.Random(seed), []
    for i in range(n):
        time.sleep(rng.random() * 0.01)
        try:
            c = rollback("m", "production") if rng.random() < 0.3 else promote("m", rng.choice([1, 2, 3]), "production")
            moves.append([c.action, c.from_version, c.to_version, c.changed])
        except RegistryError as e:
            moves.append(["refused", str(e)[:60], None, False])
    print(json.dumps(moves))
""")

REGISTRAR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from sklearn.datasets import load_breast_cancer
    from mlops_workbench.registry import register
    import skops.io, mlops_workbench.eda
    from mlops_workbench.registry import models
    path, n, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    models()   # imports done and the store open before the start
    while not go.exists(): time.sleep(0.005)
    print(json.dumps([register(path, "m", X=X, y=y).version for _ in range(n)]))
""")


def run_together(ws, tmp_path, script: str, args: list[list[str]], timeout: float = 180) -> list:
    "Start one process per argument list, release them at once, and return what each printed (JSON)."
    go = tmp_path/"go"
    env = clean_env(MLWB_HOME=str(ws.root))
    procs = [subprocess.Popen([str(PYTHON), "-c", script, *a, str(go)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    time.sleep(0.5)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


@pytest.mark.slow
def test_concurrent_promoters_leave_aliases_history_and_audit_consistent(ws, logreg, cancer, tmp_path):
    X, y, _, _ = cancer
    for _ in range(3): R.register(logreg, "m", X=X, y=y)
    outs = run_together(ws, tmp_path, PROMOTER, [["1", "40"], ["2", "40"]])
    changed = [m for out in outs for m in out if m[3]]
    h = R.alias_history("m", "production")
    assert len(h) == len(changed) > 10
    froms, tos = h["from_version"].tolist(), h["to_version"].tolist()
    assert pd.isna(froms[0]) and all(froms[i] == tos[i - 1] for i in range(1, len(h))), list(zip(froms, tos))
    assert R.aliases("m") == {"production": tos[-1]}
    actors = h["actor"].tolist()
    assert sum(a != b for a, b in zip(actors, actors[1:])) >= 2, actors   # the two processes did interleave
    # each process saw its own moves in the order the history has them
    for out in outs:
        mine = [(a, f, t) for a, f, t, ch in out if ch]
        rows = [(a, None if pd.isna(f) else int(f), int(t)) for a, f, t in zip(h["action"], froms, tos)]
        it = iter(rows)
        assert all(m in it for m in mine)
    moves = [e for e in audit(ws) if e["action"] in ("model.promote", "model.rollback")]
    assert [e["details"]["history_id"] for e in moves] == h.index.tolist()
    assert [(e["details"]["from_version"], e["details"]["to_version"]) for e in moves] == [
        (None if pd.isna(f) else int(f), int(t)) for f, t in zip(froms, tos)]
    # rollbacks that found nothing to undo were refused cleanly, nothing else failed
    assert all(m[1].startswith("m@production has no earlier version") for out in outs for m in out if m[0] == "refused")


@pytest.mark.slow
def test_concurrent_registrations_get_consecutive_versions(ws, logreg, tmp_path):
    sio.dump(logreg, tmp_path/"m.skops")
    outs = run_together(ws, tmp_path, REGISTRAR, [[str(tmp_path/"m.skops"), "3"], [str(tmp_path/"m.skops"), "3"]])
    assert sorted(outs[0] + outs[1]) == [1, 2, 3, 4, 5, 6]
    assert all(out == sorted(out) for out in outs)
    assert R.versions("m").index.tolist() == [6, 5, 4, 3, 2, 1]
    assert sorted(e["target_id"] for e in audit(ws, "model.register")) == [f"m/{v}" for v in range(1, 7)]


# ---------------------------------------------------------------- model card

def test_model_card_escapes_and_saves(sqlite_ws, logreg, cancer, tmp_path):
    X, y, _, _ = cancer
    R.register(logreg, "m", X=X, y=y, metrics={"auc": 0.9}, description="<img src=x onerror=alert(1)> | triage")
    card = R.model_card("m", limitations="Only adults.")
    assert "<img" not in card.html and "&lt;img src=x onerror=alert(1)&gt; | triage" in card.html
    assert card.markdown.count("\n## ") == 8 and "- Only adults." in card.markdown
    assert card._repr_html_().startswith("<div class='mlwb-model-card'><h1>Model card: m version 1</h1>")
    html_path = card.save(tmp_path/"card.html")
    assert html_path.read_text().startswith("<!DOCTYPE html>") and "<title>Model card: m/1</title>" in html_path.read_text()
    assert (tmp_path/"card.md").exists() is False and card.save(tmp_path/"card.md").read_text() == card.markdown


# ---------------------------------------------------------------- CLI

@pytest.fixture
def cli(capsys, monkeypatch):
    "`mlwb ARGS` run in this process in folder `cwd` (as tests/test_cli.py does): a CompletedProcess."
    from mlops_workbench.cli import main
    def run(*args: str, cwd) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        use_workspace(None)
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as e: main(list(args))
        finally:
            use_workspace(None)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, out.out, out.err)
    return run


def ok(res) -> str:
    assert (res.returncode, res.stderr) == (0, ""), (res.returncode, res.stderr)
    return res.stdout


def one_line_error(res, message: str) -> None:
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {message}") and "Traceback" not in res.stderr, res.stderr


def test_cli_models(ws, two_versions, cli):
    root = ws.root
    assert json.loads(ok(cli("models", "ls", "--json", cwd=root)))[0] | {"created_at": 0, "updated_at": 0} == {
        "name": "m", "description": None, "versions": 2, "latest": 2, "aliases": "production=1", "created_at": 0, "updated_at": 0}
    assert [v["version"] for v in json.loads(ok(cli("models", "ls", "m", "--json", cwd=root)))] == [2, 1]
    assert "production=1" in ok(mlwb("models", "ls", cwd=root))       # the installed command, in a subprocess
    shown = json.loads(ok(cli("models", "show", "m@production", "--json", cwd=root)))
    assert (shown["ref"], shown["aliases"], shown["metrics"]) == ("m/1", ["production"], {"roc_auc": 0.95, "dpd": 0.02})
    assert ok(cli("models", "show", "m/2", cwd=root)).splitlines()[:2] == ["model:", "  version     m/2"]
    one_line_error(mlwb("models", "promote", "m", "2", "--alias", "production", "-p", "dpd <= 0.1", cwd=root),
                   "promotion of m/2 to 'production' refused, gate failed: dpd = 0.2, needs <= 0.1")
    one_line_error(cli("models", "promote", "m", "2", "--alias", "production", "-p", "dpd <= 0.1", "--force", cwd=root),
                   "forcing a promotion past its gate needs a reason")
    out = ok(cli("models", "promote", "m", "2", "--alias", "production", "-p", "dpd <= 0.1", "--force", "--reason", "hotfix", cwd=root))
    assert out == "m@production: version 1 -> version 2, gate FAILED (forced)\n"
    back = json.loads(ok(cli("models", "rollback", "m", "--alias", "production", "--reason", "oops", "--json", cwd=root)))
    assert (back["from_version"], back["to_version"], back["reason"], back["message"]) == (2, 1, "oops", "m@production: version 2 -> version 1 (rollback)")
    hist = json.loads(ok(cli("models", "history", "m", "--json", cwd=root)))
    assert [(r["action"], r["from_version"], r["to_version"], r["forced"]) for r in hist] == [
        ("promote", None, 1, False), ("promote", 1, 2, True), ("rollback", 2, 1, False)]
    trail = ok(cli("models", "history", "m", "--audit", cwd=root)).splitlines()
    assert [line.split()[3] for line in trail] == ["model.register", "model.register", "model.promote", "model.promote_refused",
                                                   "model.promote", "model.rollback"]
    assert ok(cli("models", "card", "m@production", cwd=root)).startswith("# Model card: m version 1\n")
    assert ok(cli("models", "card", "m/2", "-o", "card.html", cwd=root)).startswith("model card of m/2 written to ")
    assert (root/"card.html").read_text().startswith("<!DOCTYPE html>")
    one_line_error(cli("models", "show", "m/7", cwd=root), "model 'm' has no version 7; its versions: 1, 2")
    one_line_error(cli("models", "show", "m@", cwd=root), "model reference 'm@' does not parse")
    one_line_error(cli("models", "card", "m", "-o", "card.pdf", cwd=root), "save the card as .md or .html")
    assert cli("models", "promote", "m", "two", "--alias", "production", cwd=root).returncode == 2


# ---------------------------------------------------------------- the signature's checks

from hypothesis import HealthCheck, event, given, settings, strategies as st
from pandas.testing import assert_frame_equal

from mlops_workbench.signature import Signature


def signature_frame() -> pd.DataFrame:
    "Training inputs of every kind the fast check takes: integer, float with missing values, text, nullable text, a category, a flag."
    rng = np.random.default_rng(0)
    n = 50
    return pd.DataFrame({"age": rng.integers(18, 80, n), "income": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50, 10, n).round(2)),
                         "city": pd.Series(rng.choice(["Lima", "Oslo", "Pune"], n), dtype="str"),
                         "note": pd.Series(np.where(rng.random(n) < 0.2, None, rng.choice(["a", "b"], n)), dtype="str"),
                         "plan": pd.Categorical(rng.choice(["basic", "pro"], n)), "member": rng.random(n) < 0.5})


SIG = Signature.infer(signature_frame())
cells = {"age": st.one_of(st.integers(18, 79), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                          st.sampled_from(["40", "1e400", "inf", True])),
         "income": st.one_of(st.floats(20, 80), st.floats(allow_nan=True, allow_infinity=True), st.integers(20, 80), st.none(), st.just("inf")),
         "city": st.one_of(st.sampled_from(["Lima", "Oslo", "Pune"]), st.sampled_from(["Rome", ""]), st.none(), st.integers(0, 2)),
         "note": st.one_of(st.sampled_from(["a", "b"]), st.none(), st.just("c")),
         "plan": st.one_of(st.sampled_from(["basic", "pro"]), st.just("gold"), st.none()),
         "member": st.one_of(st.booleans(), st.none(), st.integers(0, 1))}


@st.composite
def frames(draw):
    "A frame of 0-5 rows, mostly clean, with pandas' own inference per column, its columns shuffled, sometimes one missing or extra."
    n = draw(st.integers(0, 4))
    cols = {c: draw(st.lists(st.one_of(_clean(c), _clean(c), strat) if draw(st.integers(0, 3)) == 0 else _clean(c), min_size=n, max_size=n))
            for c, strat in cells.items()}
    df = pd.DataFrame({c: pd.Series(v, dtype="str" if c in ("city", "note") and all(isinstance(x, str) or x is None for x in v) else None)
                       for c, v in cols.items()})
    order = draw(st.permutations(list(df.columns)))
    df = df[order]
    change = draw(st.sampled_from(["none"] * 6 + ["drop", "extra"]))
    if change == "drop": df = df.drop(columns=order[0])
    if change == "extra": df = df.assign(zip="0150")
    return df


def _clean(c: str):
    return {"age": st.integers(18, 79), "income": st.floats(20, 80), "city": st.sampled_from(["Lima", "Oslo", "Pune"]),
            "note": st.sampled_from(["a", "b"]), "plan": st.sampled_from(["basic", "pro"]), "member": st.booleans()}[c]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames())
def test_signature_fast_check_builds_the_slow_frame_or_declines(df):
    fast = SIG._fast(df)
    slow, problems = SIG._slow_frame(df)
    event("fast" if fast is not None else "slow, no problem" if not problems else "slow, problems")
    if fast is None: return
    assert problems == [], problems  # the fast check answers only for input without a single problem
    assert_frame_equal(fast, slow)
    assert fast.dtypes.astype(str).tolist() == ["int64", "float64", "str", "str", "category", "bool"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames())
def test_signature_small_frames_checked_as_records_build_the_slow_frame_or_decline(df):
    fast = SIG._fast.records(df.to_dict("records"), df.index) if df.columns.is_unique else None
    slow, problems = SIG._slow_frame(df)
    event("fast" if fast is not None else "declined")
    if fast is None: return
    assert problems == [], problems
    assert_frame_equal(fast, slow)


@st.composite
def records(draw):
    "1-5 records of plain JSON values, mostly clean, sometimes a key missing or one more."
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = {c: draw(_clean(c)) for c in cells}
        change = draw(st.sampled_from(["none"] * 12 + ["hostile"] * 6 + ["drop", "extra"]))
        if change == "hostile":
            c = draw(st.sampled_from(list(cells)))
            row[c] = draw(cells[c])
        if change == "drop": row.pop(draw(st.sampled_from(list(row))))
        if change == "extra": row["zip"] = "0150"
        rows.append(row)
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=records())
def test_signature_records_checked_value_by_value_build_the_slow_frame_or_decline(rows):
    fast = SIG._fast.records(rows)
    slow, problems = SIG._slow_frame(rows)
    event("fast" if fast is not None else "slow, no problem" if not problems else "slow, problems")
    if fast is None: return
    assert problems == [], problems
    assert_frame_equal(fast, slow)
    assert_frame_equal(SIG.frame(rows), slow)


def test_signature_fast_check_answers_for_clean_frames():
    X = signature_frame()
    for df in (X, X.iloc[[3]], X[X.columns[::-1]], X.assign(age=X["age"].astype("float64")), X.astype({"plan": "str"})):
        got, small = SIG._fast(df), SIG._fast.records(df.to_dict("records"), df.index)
        assert got is not None and small is not None
        assert_frame_equal(got, SIG._slow_frame(df)[0])
        assert_frame_equal(small, got)


NUMBERS = [  # what is sent in the integer column age / the float column income, the problems expected (column, kind, rows)
    ({"age": ["40", "1e400", "inf"]}, [("age", "wrong_type", [1, 2])]),
    ({"age": [40.0, float("inf"), float("-inf")]}, [("age", "wrong_type", [1, 2])]),
    ({"age": [40, 2**70, -(2**64)]}, [("age", "wrong_type", [1, 2])]),
    ({"age": [40, 10**400, 41]}, [("age", "wrong_type", [1])]),
    ({"income": [50.0, float("inf"), 60.0]}, [("income", "wrong_type", [1])]),
    ({"income": ["50", "-1e999", "Infinity"]}, [("income", "wrong_type", [1, 2])]),
    ({"income": [50.0, 1e300, 60.0]}, [("income", "out_of_range", [1])]),  # finite: a warning, the model extrapolates
]


@pytest.mark.parametrize("sent,expected", NUMBERS, ids=[str(s) for s, _ in NUMBERS])
def test_signature_numbers_no_model_can_take_are_wrong_type_errors(sent, expected):
    rows = signature_frame().iloc[:3].reset_index(drop=True).astype(object)
    for c, values in sent.items(): rows[c] = pd.Series(values, dtype=object)
    problems = SIG.check(rows, row_offset=500)
    assert [(p["column"], p["kind"], [r - 500 for r in p["rows"]]) for p in problems] == expected
    if expected[0][1] == "wrong_type":
        with pytest.raises(SignatureError) as e: SIG.frame(rows)
        assert f"column '{expected[0][0]}'" in str(e.value)
        assert f"(rows {', '.join(str(r + 500) for r in expected[0][2])})" in problems[0]["message"]


def test_signature_row_offset_and_strict():
    rows = signature_frame().iloc[:4].reset_index(drop=True).assign(zip="x").astype({"city": object})
    rows.loc[2, "city"] = "Rome"
    problems = SIG.check(rows, row_offset=1_000)
    assert [(p["kind"], p["severity"], p["rows"]) for p in problems] == [("unexpected_column", "warning", []), ("unseen_category", "error", [1_002])]
    assert "(rows 1002)" in problems[1]["message"]
    assert SIG.check(rows, strict=True)[0]["severity"] == "error"
    assert SIG.check(rows.drop(columns="zip").assign(city="Lima"), row_offset=7) == []

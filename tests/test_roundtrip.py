"""Everything a run logs reads back with the same values, on SQLite and on PostgreSQL."""
from __future__ import annotations

import math
import os
import platform

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import sqlalchemy as sa

from mlops_workbench import store as S
from mlops_workbench.data import fingerprint
from mlops_workbench.errors import FilterError, NotFound, TrackingError
from mlops_workbench.query import compare, runs
from mlops_workbench.store import VERSION_TABLE, audit_entries, metadata, open_store
from mlops_workbench.tracking import delete_run, get_run, start_run

PARAMS = {"i": 3, "f": 0.125, "s": "forest", "b": True, "n": None, "l": [1, "a", None, 2.5], "d": {"k": [1, 2], "z": {"y": "x"}}}


def count(ws, table: sa.Table, *where) -> int:
    store = open_store(ws.store_url, ws.root)
    with store.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


# ---------------------------------------------------------------- parameters

def test_params_round_trip_with_their_python_types(ws):
    with start_run("params", name="p", params=PARAMS) as run: pass
    got = get_run(run.id).params
    assert got == PARAMS
    assert [type(got[k]) for k in PARAMS] == [type(v) for v in PARAMS.values()]
    assert run.params == PARAMS


def test_params_as_runs_columns(ws):
    with start_run("params", name="p", params=PARAMS) as run: pass
    df = runs(experiment="params")
    assert list(df.index) == [run.id]
    row = df.loc[run.id]
    assert row["params.i"] == 3 and df["params.i"].dtype == "int64"
    assert row["params.f"] == 0.125 and df["params.f"].dtype == "float64"
    assert row["params.s"] == "forest"
    assert df["params.b"].dtype == bool and bool(row["params.b"]) is True
    assert row["params.n"] is None
    assert row["params.l"] == '[1, "a", null, 2.5]'
    assert row["params.d"] == '{"k": [1, 2], "z": {"y": "x"}}'


def test_numpy_scalar_params_read_back_as_numbers(ws):
    "np.int64 / np.float32 / np.bool_ (what sklearn and numpy loops hand out) come back as int / float / bool, not str."
    logged = {"i": np.int64(5), "f": np.float32(0.5), "b": np.bool_(True)}
    with start_run("params", params=logged) as run: pass
    got = get_run(run.id).params
    assert got == {"b": True, "f": 0.5, "i": 5}
    assert (type(got["i"]), type(got["f"]), type(got["b"])) == (int, float, bool)
    assert list(runs(experiment="params", where="params.i = 5").index) == [run.id]


def test_params_are_fixed_once_logged(ws):
    with start_run("params") as run:
        run.log_params(lr=0.1)
        run.log_params(lr=0.1)  # the same value again is fine
        with pytest.raises(TrackingError, match="already logged"):
            run.log_params(lr=0.2)
    assert get_run(run.id).params == {"lr": 0.1}


# ---------------------------------------------------------------- metrics

def test_metrics_steps_nan_inf_and_history(ws):
    with start_run("metrics") as run:
        for v in (1.0, 0.5, 0.25):
            run.log_metric("loss", v)             # auto steps 0, 1, 2
        run.log_metric("acc", 0.7, step=10)
        run.log_metric("acc", 0.9, step=20)
        run.log_metric("acc", 0.8, step=15)     # out of order: latest stays at step 20
        run.log_metric("weird", float("nan"))
        run.log_metric("big", float("inf"))
        run.log_metric("small", float("-inf"))
        run.log_metric("int", 7)
        run.log_metric("loss", 0.125)           # auto step continues at 3
    got = get_run(run.id)
    m = got.metrics
    assert set(m) == {"loss", "acc", "weird", "big", "small", "int"}
    assert m["loss"] == 0.125 and m["acc"] == 0.9 and m["int"] == 7.0
    assert math.isnan(m["weird"]) and m["big"] == math.inf and m["small"] == -math.inf

    loss = got.metric_history("loss")
    assert list(loss["step"]) == [0, 1, 2, 3]
    assert list(loss["value"]) == [1.0, 0.5, 0.25, 0.125]
    assert set(loss["key"]) == {"loss"}
    assert str(loss["time"].dt.tz) == "UTC"
    acc = got.metric_history("acc")
    assert list(acc["step"]) == [10, 15, 20] and list(acc["value"]) == [0.7, 0.8, 0.9]

    every = got.metric_history()
    assert len(every) == 11
    assert list(every["key"]) == sorted(every["key"])
    weird = every[every.key == "weird"]
    assert list(weird["step"]) == [0] and math.isnan(weird["value"].iloc[0])
    assert every.loc[every.key == "big", "value"].iloc[0] == math.inf

    df = runs(experiment="metrics")
    row = df.loc[run.id]
    assert row["metrics.loss"] == 0.125 and row["metrics.acc"] == 0.9 and row["metrics.big"] == math.inf
    assert row["metrics.small"] == -math.inf and math.isnan(row["metrics.weird"])


def test_log_metrics_batch_shares_a_step(ws):
    with start_run("metrics") as run:
        run.log_metrics({"a": 1, "b": 2.5}, step=3)
        run.log_metrics({"a": 2, "b": 3.5})          # auto: each key one past its last step
        run.log_metrics({"c": 0.0})
    h = get_run(run.id).metric_history()
    assert list(h[["key", "step", "value"]].itertuples(index=False, name=None)) == [
        ("a", 3, 1.0), ("a", 4, 2.0), ("b", 3, 2.5), ("b", 4, 3.5), ("c", 0, 0.0)]
    assert run.metrics == {"a": 2.0, "b": 3.5, "c": 0.0}


def test_metrics_reject_non_numbers(ws):
    with start_run("metrics") as run:
        for bad in ("0.5", None, True, [1]):
            with pytest.raises(TrackingError, match="real number"):
                run.log_metric("m", bad)
        with pytest.raises(TrackingError):
            run.log_metric("", 1.0)
    assert get_run(run.id).metrics == {}


def test_out_of_range_step_is_refused_and_nothing_is_lost(ws):
    "A step no database integer holds is refused at once; it must not poison the buffer and lose the other points."
    with start_run("metrics") as run:
        run.log_metric("ok", 1.0)
        with pytest.raises(TrackingError):
            run.log_metric("big", 1.0, step=2**63)
        run.log_metric("ok", 2.0)
        run.flush()
    got = get_run(run.id)
    assert got.info["status"] == "finished"
    assert got.metrics == {"ok": 2.0}
    assert list(got.metric_history("ok")["value"]) == [1.0, 2.0]


def test_metrics_more_than_the_buffer(ws, monkeypatch):
    "A full buffer is written at once, in order, in as many batches as it takes."
    from mlops_workbench import tracking
    monkeypatch.setattr(tracking, "BUFFER_LIMIT", 100)
    n = 2550
    with start_run("metrics") as run:
        for i in range(n):
            run.log_metric("x", i / 4)
            if i == 150:  # one batch of 100 went out synchronously (the background flush may have taken more)
                assert count(ws, S.metrics, S.metrics.c.run_id == run.id) >= 100
    h = get_run(run.id).metric_history("x")
    assert list(h["step"]) == list(range(n)) and list(h["value"]) == [i / 4 for i in range(n)]
    assert count(ws, S.metrics, S.metrics.c.run_id == run.id) == n


@pytest.mark.parametrize("key", ["a'b", "%s", "%(x)s", "?", "x; DROP TABLE mlwb_metrics; --", "ünï ☃", "k" * 250, "val/loss.@:-"])
def test_metric_and_param_keys_are_data(ws, key):
    "Keys reach the database as bound values, whatever characters they hold."
    with start_run("keys", params={key: key}, tags={key: key}) as run:
        run.log_metric(key, 0.5)
        run.log_metric(key, 1.5)
    got = get_run(run.id)
    assert (got.params, got.tags, got.metrics) == ({key: key}, {key: key}, {key: 1.5})
    assert list(got.metric_history(key)["value"]) == [0.5, 1.5]
    assert list(runs(where=f"metrics.`{key}` > 1 and params.`{key}` = '{key.replace(chr(39), chr(92) + chr(39))}'").index) == [run.id]
    assert count(ws, S.metrics) == 2


# ---------------------------------------------------------------- tags

def test_tags_overwrite(ws):
    with start_run("tags", tags={"team": "a", "stage": "dev"}) as run:
        run.set_tags(team="b")
        run.set_tags({"n": 3})
    assert get_run(run.id).tags == {"n": "3", "stage": "dev", "team": "b"}
    row = runs(experiment="tags").loc[run.id]
    assert (row["tags.team"], row["tags.stage"], row["tags.n"]) == ("b", "dev", "3")


@pytest.mark.parametrize("field", ["tag value", "run name", "experiment name"])
def test_nul_characters_behave_the_same_on_both_backends(ws, field):
    "Text with a NUL byte either round-trips exactly or is refused with a TrackingError, on SQLite and PostgreSQL alike."
    text = "a\0b"
    try:
        if field == "tag value":
            with start_run("nul") as run: run.set_tags(t=text)
        elif field == "run name":
            with start_run("nul", name=text) as run: pass
        else:
            with start_run(text) as run: pass
    except TrackingError:
        return  # refused clearly: fine
    info = get_run(run.id).info
    got = {"tag value": lambda: get_run(run.id).tags["t"], "run name": lambda: info["name"],
           "experiment name": lambda: info["experiment"]}[field]()
    assert got == text


def test_failure_whose_message_holds_a_nul_byte(ws):
    "The user's exception comes out unchanged and the run is recorded as failed, whatever bytes its message holds."
    with pytest.raises(ValueError, match="bad byte"):
        with start_run("nul", name="crash") as run:
            raise ValueError("bad byte \0 in the data")
    info = get_run(run.id).info
    assert info["status"] == "failed"
    assert "ValueError: bad byte" in info["error"] and "in the data" in info["error"]


# ---------------------------------------------------------------- artifacts

def test_artifact_file_folder_bytes_text(ws, tmp_path):
    f = tmp_path/"model.bin"
    f.write_bytes(bytes(range(256)) * 3)
    folder = tmp_path/"folder"
    (folder/"sub").mkdir(parents=True)
    (folder/"sub"/"x.txt").write_text("x content")
    (folder/"y.csv").write_text("a,b\n1,2\n")
    (folder/"sub"/"deeper").mkdir()
    (folder/"sub"/"deeper"/"z.json").write_text('{"z": 1}')
    with start_run("artifacts") as run:
        run.log_artifact(f)
        run.log_artifact(folder)
        run.log_artifact(b"\x00\x01raw", name="raw.bin")
        run.log_artifact(folder, name="renamed")
        run.log_text("héllo\nwörld", "notes.txt")
    got = get_run(run.id)
    arts = got.artifacts
    assert list(arts["name"]) == ["model.bin", "folder/sub/deeper/z.json", "folder/sub/x.txt", "folder/y.csv", "raw.bin",
                                  "renamed/sub/deeper/z.json", "renamed/sub/x.txt", "renamed/y.csv", "notes.txt"]
    assert got.load_artifact("model.bin") == bytes(range(256)) * 3
    assert arts.set_index("name").loc["model.bin", "size"] == 768
    assert got.load_artifact("folder/sub/x.txt") == b"x content"
    assert got.load_artifact("folder/sub/deeper/z.json") == b'{"z": 1}'
    assert got.load_artifact("renamed/y.csv") == b"a,b\n1,2\n"
    assert got.load_artifact("raw.bin") == b"\x00\x01raw"
    assert got.load_artifact("notes.txt") == "héllo\nwörld"
    assert got.artifact_path("model.bin").read_bytes() == bytes(range(256)) * 3
    assert got.artifact_path("model.bin").is_relative_to(ws.artifact_root)
    with pytest.raises(NotFound):
        got.load_artifact("missing")


def test_artifact_relogged_under_the_same_name_is_replaced(ws):
    with start_run("artifacts") as run:
        run.log_artifact(b"one", name="x")
        run.log_artifact(b"two", name="x")
    assert list(run.artifacts["name"]) == ["x"]
    assert run.load_artifact("x") == b"two"


def test_plotly_figure(ws):
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4.5, 5.5, 6.5], mode="lines", name="curve"))
    fig.update_layout(title="learning curve")
    with start_run("artifacts") as run:
        run.log_figure(fig, "curve")
    got = get_run(run.id)
    loaded = got.load_artifact("curve")
    assert isinstance(loaded, go.Figure)
    assert len(loaded.data) == 1
    tr = loaded.data[0]
    assert (tr.type, list(tr.x), list(tr.y), tr.mode, tr.name) == ("scatter", [1, 2, 3], [4.5, 5.5, 6.5], "lines", "curve")
    assert loaded.layout.title.text == "learning curve"
    assert loaded.to_plotly_json()["data"] == fig.to_plotly_json()["data"]
    html_path = got.artifact_path("curve", "html")
    assert html_path.exists() and "<html" in html_path.read_text()
    assert sorted(got.artifacts["format"]) == ["html", "json"]
    assert isinstance(got.load_artifact("curve", "html"), str)


def test_table_dtypes_survive(ws):
    df = pd.DataFrame({
        "s": pd.array(["a", None, "ç"], dtype="str"),
        "cat": pd.Categorical(["x", "y", "x"], categories=["y", "x"], ordered=True),
        "when": pd.to_datetime(["2024-01-01 12:00", None, "2024-03-01 00:00"]),
        "when_utc": pd.to_datetime(["2024-01-01", "2024-02-01", None], utc=True),
        "f": [1.5, np.nan, 3.0],
        "i": np.array([1, 2, 3], dtype="int32"),
        "b": [True, False, True],
    })
    assert df["s"].dtype == "str"
    with start_run("artifacts") as run:
        run.log_table(df, "table")
    back = get_run(run.id).load_artifact("table")
    pd.testing.assert_frame_equal(back, df)
    assert back["s"].dtype == "str" and back["cat"].cat.ordered


def test_table_errors(ws):
    from mlops_workbench.errors import ArtifactError
    with start_run("artifacts") as run:
        with pytest.raises(ArtifactError, match="DataFrame"):
            run.log_table([1, 2], "t")
        with pytest.raises(ArtifactError, match="Parquet"):
            run.log_table(pd.DataFrame({"mixed": [1, "a", {"k": 1}]}), "t")
        with pytest.raises(ArtifactError, match="plotly"):
            run.log_figure("not a figure", "f")
        with pytest.raises(ArtifactError):
            run.log_text(b"bytes", "t.txt")
    assert get_run(run.id).artifacts.empty


def test_log_input(ws):
    df = pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", "b", "c", "d"], "z": [0.5, np.nan, 1.5, 2.5]})
    with start_run("inputs") as a:
        fp = a.log_input(df, "train", name="toy")
        a.log_input(df.iloc[:2], "test")
    with start_run("inputs") as b:
        assert b.log_input(df.copy(), "train", name="toy") == fp
    assert fp == fingerprint(df)
    ins = get_run(a.id).inputs
    assert list(ins["role"]) == ["test", "train"]
    train = ins.set_index("role").loc["train"]
    assert (train["name"], train["fingerprint"], train["n_rows"], train["n_cols"]) == ("toy", fp, 4, 3)
    assert ins.set_index("role").loc["test", "n_rows"] == 2
    assert ins.set_index("role").loc["test", "fingerprint"] == fingerprint(df.iloc[:2])
    assert count(ws, S.datasets) == 2  # the same frame logged by two runs is one dataset
    assert count(ws, S.datasets, S.datasets.c.fingerprint == fp) == 1
    assert count(ws, S.run_inputs) == 3


# ---------------------------------------------------------------- lineage and status

def test_lineage(ws):
    with start_run("lineage") as run: pass
    info = get_run(run.id).info
    assert info["pid"] == os.getpid()
    assert info["environment"]["python"] == platform.python_version()
    assert info["environment"]["packages"]["pandas"] == pd.__version__
    assert isinstance(info["user"], str) and info["user"].strip()
    assert isinstance(info["host"], str) and info["host"].strip()
    assert info["experiment"] == "lineage" and info["kind"] == "run"
    assert info["start_time"] <= info["end_time"]


def test_status_finished_failed_killed(ws):
    with start_run("status", name="ok") as ok: assert ok.info["status"] == "running"
    with pytest.raises(ValueError):
        with start_run("status", name="bad") as bad:
            raise ValueError("boom 42")
    with pytest.raises(KeyboardInterrupt):
        with start_run("status", name="stopped") as stopped:
            raise KeyboardInterrupt
    i_ok, i_bad, i_stopped = (get_run(r.id).info for r in (ok, bad, stopped))
    assert (i_ok["status"], i_ok["error"]) == ("finished", None)
    assert i_bad["status"] == "failed" and "ValueError: boom 42" in i_bad["error"]
    assert i_stopped["status"] == "killed" and "KeyboardInterrupt" in i_stopped["error"]
    for i in (i_ok, i_bad, i_stopped): assert i["end_time"] is not None
    df = runs(experiment="status")
    assert df.set_index("name").loc[["ok", "bad", "stopped"], "status"].tolist() == ["finished", "failed", "killed"]
    with pytest.raises(TrackingError, match="not active"):
        ok.log_metric("late", 1.0)


def test_child_runs(ws):
    with start_run("family", name="parent", kind="study") as parent:
        with start_run("family", name="c1", parent=parent, kind="trial") as c1: pass
        with start_run("family", name="c2", parent=parent.id, kind="trial") as c2: pass
    assert get_run(c1.id).info["parent_id"] == parent.id
    assert get_run(c2.id).info["parent_id"] == parent.id
    assert get_run(parent.id).info["parent_id"] is None
    df = runs(where=f"parent_id = '{parent.id}'")
    assert sorted(df["name"]) == ["c1", "c2"] and set(df["kind"]) == {"trial"}
    with pytest.raises(NotFound):
        start_run("family", parent="0" * 32)


# ---------------------------------------------------------------- queries

@pytest.fixture
def four_runs(ws):
    "Four finished runs (and one in another experiment) with known params, metrics and tags."
    specs = [("r1", {"model": "rf", "lr": 0.1, "depth": 3}, {"auc": 0.8, "loss": 0.3}, {"team": "a"}),
             ("r2", {"model": "lr", "lr": 0.01, "depth": 5}, {"auc": 0.9}, {"team": "b"}),
             ("r3", {"model": "rf", "lr": 0.5, "depth": 8}, {"auc": float("nan")}, {"team": "a"}),
             ("r4", {"model": "it's", "lr": 1, "depth": 1}, {}, {"team": "c"})]
    ids = {}
    for name, p, m, t in specs:
        with start_run("q", name=name, params=p, tags=t) as run:
            run.log_metrics(m)
        ids[name] = run.id
    with start_run("other", name="o1", params={"model": "rf", "lr": 0.1}) as o:
        o.log_metric("auc", 0.99)
    ids["o1"] = o.id
    return ids


@pytest.mark.parametrize("where, expected", [
    ("params.model = 'rf'", {"r1", "r3"}),
    ("params.model != 'rf'", {"r2", "r4"}),
    ("params.model = \"it's\"", {"r4"}),
    ("params.lr > 0.05", {"r1", "r3", "r4"}),
    ("params.lr = 1", {"r4"}),
    ("params.depth >= 5 and params.model = 'rf'", {"r3"}),
    ("params.model in ('lr', 'it\\'s')", {"r2", "r4"}),
    ("metrics.auc >= 0.85", {"r2"}),
    ("metrics.auc < 0.85", {"r1"}),
    ("metrics.loss = 0.3", {"r1"}),
    ("tags.team = 'a'", {"r1", "r3"}),
    ("tags.team like 'b%' or tags.team = 'c'", {"r2", "r4"}),
    ("name = 'r2'", {"r2"}),
    ("name in ('r1', 'r4', 'nope')", {"r1", "r4"}),
    ("name like 'r%' and not (params.model = 'rf')", {"r2", "r4"}),
    ("status = 'finished'", {"r1", "r2", "r3", "r4"}),
    ("kind = 'run' and (tags.team = 'a' or metrics.auc > 0.85)", {"r1", "r2", "r3"}),
    ("start_time > '2000-01-01'", {"r1", "r2", "r3", "r4"}),
    ("start_time < 0", set()),
])
def test_runs_where(four_runs, where, expected):
    df = runs(experiment="q", where=where)
    assert set(df["name"]) == expected
    assert set(df.index) == {four_runs[n] for n in expected}


def test_runs_where_on_experiment_and_run_id(four_runs):
    assert set(runs(where="experiment = 'other'")["name"]) == {"o1"}
    assert set(runs(where="params.model = 'rf' and metrics.auc > 0.5")["name"]) == {"r1", "o1"}
    assert list(runs(where=f"run_id = '{four_runs['r2']}'").index) == [four_runs["r2"]]
    assert len(runs()) == 5


def test_runs_order_by_and_limit(four_runs):
    df = runs(experiment="q", order_by="metrics.auc desc")
    assert list(df["name"][:2]) == ["r2", "r1"]           # then NaN (r3) and missing (r4), last
    assert set(df["name"][2:]) == {"r3", "r4"}
    df = runs(experiment="q", order_by="metrics.auc")
    assert list(df["name"][:2]) == ["r1", "r2"] and set(df["name"][2:]) == {"r3", "r4"}
    assert list(runs(experiment="q", order_by="params.lr desc")["name"]) == ["r4", "r3", "r1", "r2"]
    assert list(runs(experiment="q", order_by=["tags.team desc", "params.depth"])["name"]) == ["r4", "r2", "r1", "r3"]
    assert list(runs(experiment="q", order_by="metrics.auc desc", limit=1)["name"]) == ["r2"]
    assert len(runs(limit=2)) == 2
    # default: newest first
    assert list(runs(experiment="q")["name"]) == ["r4", "r3", "r2", "r1"]
    with pytest.raises(FilterError):
        runs(limit=0)
    with pytest.raises(FilterError):
        runs(order_by="bogus desc")


def test_runs_order_by_text_param(four_runs):
    "A parameter logged as text orders by its text, like a tag does (not silently left unordered)."
    assert list(runs(experiment="q", order_by="params.model")["name"][:2]) == ["r4", "r2"]  # "it's" < "lr" < "rf"
    assert list(runs(experiment="q", order_by=["params.model", "params.depth desc"])["name"]) == ["r4", "r2", "r3", "r1"]


def test_compare(four_runs):
    a, b = four_runs["r1"], four_runs["r2"]
    cmp = compare([a, b[:8]])
    t = cmp.table
    assert list(t.index) == [a, b]
    assert list(t["name"]) == ["r1", "r2"] and list(t["status"]) == ["finished", "finished"]
    assert list(t["params.lr"]) == [0.1, 0.01] and list(t["params.model"]) == ["rf", "lr"]
    assert list(t["params.depth"]) == [3, 5]
    assert list(t["metrics.auc"]) == [0.8, 0.9]
    assert t["metrics.loss"].iloc[0] == 0.3 and math.isnan(t["metrics.loss"].iloc[1])
    assert "tags.team" not in t.columns
    fig = cmp.figure
    assert isinstance(fig, go.Figure) and fig.data[0].type == "parcoords"
    labels = [d["label"] for d in fig.data[0].dimensions]
    assert set(labels) == {"params.lr", "params.model", "params.depth", "metrics.auc", "metrics.loss"}
    auc = next(d for d in fig.data[0].dimensions if d["label"] == "metrics.auc")
    assert list(auc["values"]) == [0.8, 0.9]
    model = next(d for d in fig.data[0].dimensions if d["label"] == "params.model")
    assert list(model["ticktext"]) == ["lr", "rf"] and list(model["values"]) == [1, 0]
    with pytest.raises(FilterError):
        compare([])
    with pytest.raises(FilterError):
        compare([a, b], color="nope")
    with pytest.raises(NotFound):
        compare([a, "ffffffffffff"])


# ---------------------------------------------------------------- delete and audit

def test_delete_run_with_children_and_audit(ws):
    with start_run("del", name="keep") as keep:
        keep.log_metric("m", 1.0)
    with start_run("del", name="parent", params={"p": 1}) as parent:
        parent.log_metric("m", 2.0)
        parent.log_artifact(b"data", name="a.bin")
        with start_run("del", name="child", parent=parent, tags={"t": "x"}) as child:
            child.log_metric("m", 3.0)
            with start_run("del", name="grandchild", parent=child) as grandchild:
                grandchild.log_input(pd.DataFrame({"x": [1]}))
    store = open_store(ws.store_url, ws.root)
    before = len(audit_entries(store))
    deleted = delete_run(parent.id)
    assert sorted(deleted) == sorted([parent.id, child.id, grandchild.id])
    assert list(runs(experiment="del")["name"]) == ["keep"]
    for rid in deleted:
        with pytest.raises(NotFound):
            get_run(rid)
        for table in (S.metrics, S.latest_metrics, S.params, S.tags, S.artifacts, S.run_inputs):
            assert count(ws, table, table.c.run_id == rid) == 0
    assert get_run(keep.id).metrics == {"m": 1.0}
    entries = audit_entries(store, parent.id)
    assert len(entries) == 1
    e = entries[0]
    assert (e["action"], e["target_kind"], e["target_id"]) == ("run.delete", "run", parent.id)
    assert e["details"]["experiment"] == "del"
    assert sorted(d["id"] for d in e["details"]["deleted"]) == sorted(deleted)
    assert e["actor"] and "@" in e["actor"]
    assert len(audit_entries(store)) == before + 1
    assert audit_entries(store, child.id) == []


def test_delete_audit_entry_names_the_deleted_run(ws, monkeypatch):
    "The entry's `name` is the name of the run asked for, not of one of its children."
    import uuid
    ids = iter([uuid.UUID("f" * 32), *(uuid.UUID(f"{i}" * 32) for i in range(3))])
    with monkeypatch.context() as m:
        m.setattr(uuid, "uuid4", lambda: next(ids))  # the parent's id sorts after its children's
        with start_run("del", name="parent") as parent:
            for i in range(3):
                with start_run("del", name=f"child{i}", parent=parent): pass
    assert parent.id == "f" * 32
    delete_run(parent.id)
    [entry] = audit_entries(open_store(ws.store_url, ws.root), parent.id)
    assert entry["details"]["name"] == "parent"


def test_delete_running_run_needs_force(ws):
    run = start_run("del", name="live")
    try:
        with pytest.raises(TrackingError, match="still running"):
            delete_run(run.id)
        assert get_run(run.id).info["status"] == "running"
        assert delete_run(run.id, force=True) == [run.id]
    finally:
        run._writer.close(); run._writer = None  # the run's rows are gone: stop its heartbeat thread
        from mlops_workbench import tracking
        if run in tracking._active: tracking._active.remove(run)
    assert len(runs(experiment="del")) == 0


def test_audit_log_is_append_only(ws):
    with start_run("audit") as run: pass
    delete_run(run.id)
    store = open_store(ws.store_url, ws.root)
    entries = audit_entries(store)
    assert len(entries) == 1
    t = S.audit_log
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with store.write() as conn: conn.execute(t.update().values(actor="mallory"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with store.write() as conn: conn.execute(t.delete())
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with store.write() as conn: conn.exec_driver_sql("DELETE FROM mlwb_audit_log WHERE id > 0")
    if store.dialect == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.write() as conn: conn.exec_driver_sql("TRUNCATE mlwb_audit_log")
    assert audit_entries(store) == entries


# ---------------------------------------------------------------- schema

def test_schema_matches_the_migrations(ws):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    store = open_store(ws.store_url, ws.root)
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        names = sa.inspect(conn).get_table_names()
        version = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    unexpected = [d for d in diffs if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == VERSION_TABLE)]
    assert unexpected == []
    assert "alembic_version" not in names
    assert all(n.startswith("mlwb_") for n in names), names
    assert set(names) == set(metadata.tables) | {VERSION_TABLE}
    assert version == [S.head_revision()]

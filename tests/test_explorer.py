"""The explorer widget driven from Python: every control updates the one FigureWidget and the statistics panel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import pytest

from mlops_workbench.eda_widgets import MAX_GROUPS, NONE, explore
from mlops_workbench.errors import DataError


@pytest.fixture(scope="module")
def tips() -> pd.DataFrame:
    return px.data.tips()


def plotted(ex) -> np.ndarray:
    "Every x value of every trace, sorted."
    return np.sort(np.concatenate([np.asarray(t.x) for t in ex.figure.data]))


def fmt(v: float) -> str:
    return f"{float(v):,.6g}"


# ---------------------------------------------------------------- controls

def test_column_change_plots_that_column(tips):
    ex = explore(tips)
    fig = ex.figure
    for col in ["tip", "size", "total_bill"]:
        ex.column.value = col
        assert ex.figure.layout.xaxis.title.text == col
        np.testing.assert_array_equal(plotted(ex), np.sort(tips[col].to_numpy(dtype=float)))
    ex.column.value = "day"
    assert sorted(ex.figure.data[0].x) == sorted(tips["day"])
    assert ex.figure.layout.xaxis.type == "category"
    assert ex.figure is fig


def test_kind_change_changes_trace_type(tips):
    ex = explore(tips, target="tip")
    fig = ex.figure
    for kind, trace in [("box", "box"), ("violin", "violin"), ("histogram", "histogram"), ("scatter vs target", "scatter")]:
        ex.kind.value = kind
        assert [t.type for t in ex.figure.data] == [trace]
    np.testing.assert_array_equal(ex.figure.data[0].y, tips["tip"].to_numpy())
    assert ex.figure is fig


def test_scatter_is_offered_only_for_a_numeric_target(tips):
    assert "scatter vs target" in explore(tips, target="tip").kind.options
    assert "scatter vs target" not in explore(tips, target="day").kind.options
    assert "scatter vs target" not in explore(tips).kind.options


def test_color_by_draws_one_trace_per_group(tips):
    ex = explore(tips, target="day")
    assert ex.color.value == "day"
    assert [t.name for t in ex.figure.data] == ["Fri", "Sat", "Sun", "Thur"]
    for t in ex.figure.data:
        np.testing.assert_array_equal(np.sort(t.x), np.sort(tips.loc[tips["day"] == t.name, "total_bill"].to_numpy()))
    ex.color.value = "size"
    assert [t.name for t in ex.figure.data] == ["1", "2", "3", "4", "5", "6"]
    assert len({t.marker.color for t in ex.figure.data}) == 6
    ex.color.value = NONE
    assert len(ex.figure.data) == 1 and ex.figure.layout.showlegend is False


def test_group_keeps_its_colour_when_a_filter_removes_others(tips):
    ex = explore(tips, target="day")
    colours = {t.name: t.marker.color for t in ex.figure.data}
    ex.filter_column.value = "day"
    ex.categories.value = ("Sun",)
    assert [(t.name, t.marker.color) for t in ex.figure.data] == [("Sun", colours["Sun"])]


def test_range_filter_keeps_values_in_range_and_counts_them(tips):
    ex = explore(tips)
    ex.column.value, ex.filter_column.value = "tip", "tip"
    assert ex.range.layout.display != "none" and ex.categories.layout.display == "none"
    assert ex.range.value == (tips["tip"].min(), tips["tip"].max())
    ex.range.value = (2.0, 4.0)
    kept = tips[tips["tip"].between(2.0, 4.0)]
    x = plotted(ex)
    assert x.min() >= 2.0 and x.max() <= 4.0 and len(x) == len(kept)
    assert ex.summary["rows"] == len(kept)
    assert f"rows</th><td style=\"text-align:right;padding:1px 8px\">{len(kept)}</td>" in ex.stats.value
    assert f"filter on tip: {len(kept)} rows" in ex.stats.value


def test_range_filter_on_another_column(tips):
    ex = explore(tips, target="sex")
    ex.column.value, ex.filter_column.value = "tip", "total_bill"
    ex.range.value = (10.0, 20.0)
    kept = tips[tips["total_bill"].between(10.0, 20.0)]
    np.testing.assert_array_equal(plotted(ex), np.sort(kept["tip"].to_numpy()))
    assert sum(len(t.x) for t in ex.figure.data) == len(kept) == ex.summary["rows"]


def test_category_filter_keeps_only_those_categories(tips):
    ex = explore(tips)
    ex.filter_column.value = "day"
    assert ex.categories.layout.display != "none" and ex.range.layout.display == "none"
    assert set(ex.categories.value) == {"Thur", "Fri", "Sat", "Sun"}
    ex.categories.value = ("Fri", "Thur")
    ex.column.value = "day"
    assert set(ex.figure.data[0].x) == {"Fri", "Thur"}
    assert ex.summary["rows"] == int(tips["day"].isin(["Fri", "Thur"]).sum())
    ex.categories.value = ()
    assert len(ex.figure.data) == 0 and "no values" in ex.stats.value


def test_switching_filter_column_resets_the_filter(tips):
    ex = explore(tips)
    ex.filter_column.value = "tip"
    ex.range.value = (2.0, 3.0)
    ex.filter_column.value = "total_bill"
    assert ex.summary["rows"] == len(tips)
    ex.filter_column.value = NONE
    assert ex.range.layout.display == "none" and ex.categories.layout.display == "none"
    assert ex.summary["rows"] == len(tips)


def test_numeric_stats_equal_pandas(tips):
    ex = explore(tips)
    ex.column.value = "total_bill"
    d = tips["total_bill"].describe()
    for key in ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]:
        assert ex.summary[key] == pytest.approx(d[key], rel=1e-12)
        assert f">{key}</th>" in ex.stats.value and f">{fmt(d[key])}</td>" in ex.stats.value
    assert ex.summary["missing"] == 0 and ex.summary["rows"] == 244


def test_categorical_stats_equal_pandas(tips):
    ex = explore(tips)
    ex.column.value = "day"
    counts = tips["day"].value_counts()
    assert ex.summary["top"] == list(counts.items())
    assert ex.summary["unique"] == 4 and ex.summary["count"] == 244
    for day, n in counts.items():
        assert f">{day}</th><td style=\"text-align:right;padding:1px 8px\">{n}</td>" in ex.stats.value


# ---------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def large() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 200_000
    return pd.DataFrame({"x": rng.normal(10, 2, n), "g": rng.choice(["a", "b", "c"], n), "k": rng.integers(0, 1000, n)})


def test_sampling_large_frame_is_announced_and_seeded(large):
    ex = explore(large, target="g")
    assert len(ex.data) == 50_000 and ex.total == 200_000
    assert "showing 50,000 of 200,000 rows (sample)" in ex.stats.value
    assert sum(len(t.x) for t in ex.figure.data) == 50_000
    assert ex.data.index.equals(explore(large, seed=0).data.index)
    assert not ex.data.index.equals(explore(large, seed=1).data.index)
    assert ex.summary["mean"] == pytest.approx(ex.data["x"].mean())
    small = explore(large, sample=1_000)
    assert "showing 1,000 of 200,000 rows (sample)" in small.stats.value
    assert len(explore(large.head(100)).data) == 100


def test_figure_identity_never_changes(large):
    ex = explore(large, target="g", sample=5_000)
    fig, model = ex.figure, ex.figure.model_id
    ex.column.value, ex.kind.value, ex.color.value = "k", "violin", NONE
    ex.filter_column.value = "x"
    ex.range.value = (9.0, 11.0)
    ex.filter_column.value = "g"
    ex.categories.value = ("a",)
    ex.kind.value = "box"
    assert ex.figure is fig and ex.figure.model_id == model
    assert ex.widget.children[2].children[0].children[0] is fig


# ---------------------------------------------------------------- hostile data

@pytest.fixture
def hostile() -> pd.DataFrame:
    n = 12
    return pd.DataFrame({
        "num": [1.0, np.nan, 3.0, np.inf, -np.inf, 6.0, np.nan, 8.0, 9.0, 10.0, 11.0, 12.0],
        "text": pd.Series(["a", None, "b", "a", None, "c", "a", "b", "a", "c", "a", "b"], dtype="str"),
        "empty": [np.nan] * n,
        "empty_text": pd.Series([None] * n, dtype="str"),
        "flag": [True, False] * 6,
        "nflag": pd.Series([True, None, False] * 4, dtype="boolean"),
        "cat": pd.Categorical(["lo", "hi", None] * 4, categories=["lo", "mid", "hi"]),
        "when": pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC"),
        "span": pd.to_timedelta(range(n), unit="s"),
        "mixed": pd.Series([1, "a", None, 2.5] * 3, dtype=object),
        "ints": pd.Series([1, None, 3] * 4, dtype="Int64"),
    })


def test_every_hostile_column_draws(hostile):
    ex = explore(hostile)
    assert "span" not in ex.column.options and len(ex.column.options) == hostile.shape[1] - 1
    fig = ex.figure
    for _, col in ex.column.options:
        for kind in ["histogram", "box", "violin"]:
            ex.column.value, ex.kind.value = col, kind
            assert ex.figure.layout.xaxis.title.text == col
            assert ex.summary["rows"] == len(hostile)
    assert ex.figure is fig


def test_nan_and_inf_are_left_out_and_counted(hostile):
    ex = explore(hostile)
    ex.column.value = "num"
    assert ex.figure.data[0].x.tolist() == [1.0, 3.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    assert (ex.summary["missing"], ex.summary["infinite"]) == (2, 2)
    finite = hostile["num"].replace([np.inf, -np.inf], np.nan)
    assert ex.summary["mean"] == pytest.approx(finite.mean()) and ex.summary["std"] == pytest.approx(finite.std())
    assert "infinite</th>" in ex.stats.value
    ex.filter_column.value = "num"
    assert ex.range.value == (1.0, 12.0)
    ex.range.value = (2.0, 9.0)
    assert ex.figure.data[0].x.tolist() == [3.0, 6.0, 8.0, 9.0]


def test_str_dtype_with_missing(hostile):
    ex = explore(hostile, target="text")
    assert ex.color.value == "text"
    assert [t.name for t in ex.figure.data] == ["a", "b", "c"]  # both rows without text have no finite "num"
    ex.column.value = "flag"
    assert [(t.name, len(t.x)) for t in ex.figure.data] == [("a", 5), ("b", 3), ("c", 2), ("(missing)", 2)]
    ex.column.value = "text"
    assert ex.summary["missing"] == 2 and ex.summary["top"] == [("a", 5), ("b", 3), ("c", 2)]
    ex.filter_column.value = "text"
    assert set(ex.categories.options) == {"a", "b", "c", "(missing)"}
    ex.categories.value = ("(missing)",)
    assert ex.summary["rows"] == 2 and len(ex.figure.data) == 0 and "no values" in ex.stats.value


def test_all_null_columns_show_no_values(hostile):
    ex = explore(hostile)
    for col in ["empty", "empty_text"]:
        ex.column.value = col
        assert len(ex.figure.data) == 0
        assert [a.text for a in ex.figure.layout.annotations] == ["no values"]
        assert "no values" in ex.stats.value and ex.summary["missing"] == len(hostile)
    ex.filter_column.value = "empty"  # a slider over nothing filters nothing
    ex.column.value = "num"
    assert ex.summary["rows"] == len(hostile) and len(ex.figure.layout.annotations) == 0


def test_booleans_categoricals_datetimes(hostile):
    ex = explore(hostile, target="flag")
    assert [t.name for t in ex.figure.data] == ["False", "True"]
    ex.color.value = "cat"
    assert [t.name for t in ex.figure.data] == ["lo", "hi", "(missing)"]
    ex.color.value = "nflag"
    assert [t.name for t in ex.figure.data] == ["False", "True", "(missing)"]
    ex.column.value, ex.color.value = "when", NONE
    assert ex.figure.layout.xaxis.type == "date" and len(ex.figure.data[0].x) == len(hostile)
    assert ex.summary["min"] == hostile["when"].min()
    ex.column.value = "mixed"
    assert sorted(set(ex.figure.data[0].x)) == ["1", "2.5", "a"]


def test_high_cardinality_categorical_is_not_a_colour():
    n = 20_000
    df = pd.DataFrame({"id": pd.Categorical([f"id{i % 10_000}" for i in range(n)]),
                       "y": np.arange(n, dtype=float), "g": ["a", "b"] * (n // 2)})
    ex = explore(df, target="id")
    offered = [c for _, c in ex.color.options]
    assert "id" not in offered and "g" in offered and ex.color.value is NONE
    assert "id" not in [c for _, c in ex.filter_column.options]
    with pytest.raises(Exception):
        ex.color.value = "id"
    ex.column.value = "id"
    x = ex.figure.data[0].x
    assert len(x) == n and len(set(x)) == 51 and "(other)" in set(x)  # 50 bars, the rest as "(other)"
    assert ex.summary["unique"] == 10_000 and len(ex.summary["top"]) == 10
    assert MAX_GROUPS == 30


def test_colour_groups_up_to_the_limit():
    df = pd.DataFrame({"y": np.arange(62.0), "g30": [f"g{i % 30:02d}" for i in range(62)],
                       "g31": [f"g{i % 31:02d}" for i in range(62)]})
    offered = [c for _, c in explore(df).color.options]
    assert "g30" in offered and "g31" not in offered


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("call, message", [
    (lambda t: explore(t, target="nope"), "target 'nope' is not a column"),
    (lambda t: explore(t.iloc[:0]), "the frame is empty"),
    (lambda t: explore(t[[]]), "the frame is empty"),
    (lambda t: explore(t, sample=-5), "sample must be a positive number"),
    (lambda t: explore(t, sample=2.5), "sample must be a positive number"),
    (lambda t: explore(t.values), "takes a pandas DataFrame"),
    (lambda t: explore(pd.concat([t["tip"], t["tip"]], axis=1)), "appear more than once"),
])
def test_bad_arguments_raise_data_error(tips, call, message):
    with pytest.raises(DataError, match=message):
        call(tips)


def test_display_is_the_widget(tips):
    ex = explore(tips)
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id
    assert repr(ex).startswith("Explorer(column='total_bill'")

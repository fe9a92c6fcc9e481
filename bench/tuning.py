"""Benchmark: per-trial overhead of `mlops_workbench.tuning.tune` against bare optuna on the same storage.

Both contenders run the same objective on the same optuna storage (the workspace's SQLite store): a tiny
estimator whose `fit` sleeps `delay` seconds, cross-validated on 2 folds of 40 rows (clone, set one
parameter, fit, score). Bare optuna does that inside a plain objective; `tune` adds what it adds per trial:
a tracked child run (start, params, tags, per-fold metrics, duration, end) and the user attribute that
links the trial to it. Setup (workspace, first study creation, imports) is outside the timed region; the
refit of the best model at the end of `tune` is inside it but is one fit of the tiny estimator.

    .venv/bin/python bench/tuning.py                # 100 trials, delays 0 and 50 ms (about 15 s)
    .venv/bin/python bench/tuning.py --trials 300   # more trials

Target: tune adds <= 20 % per trial. With a trivial objective our bookkeeping (a run is a few database writes
and a writer thread) is a few ms, so the ratio is also reported with a 50 ms objective. Not a test; never in CI.
"""
from __future__ import annotations

import argparse, logging, statistics, tempfile, time, warnings
from pathlib import Path

import numpy as np
import optuna
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from mlops_workbench.config import init_workspace
from mlops_workbench.tuning import study_storage, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore")


class Sleepy(ClassifierMixin, BaseEstimator):
    "Predicts the majority class after sleeping `delay` seconds in fit."
    def __init__(self, delay: float = 0.0, c: float = 1.0): self.delay, self.c = delay, c
    def fit(self, X, y):
        if self.delay: time.sleep(self.delay)
        self.classes_, counts = np.unique(y, return_counts=True); self.major_ = self.classes_[counts.argmax()]
        return self
    def predict(self, X): return np.full(len(X), self.major_)


def space(trial): return {"c": trial.suggest_float("c", 0.0, 1.0)}


def bare(storage, X, y, folds, delay: float, n: int) -> float:
    model = Sleepy(delay)
    def objective(trial):
        scores = []
        for tr, te in folds:
            m = clone(model).set_params(**space(trial)).fit(X[tr], y[tr])
            scores.append(m.score(X[te], y[te]))
        return float(np.mean(scores))
    study = optuna.create_study(storage=storage, direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    t = time.perf_counter(); study.optimize(objective, n_trials=n); return time.perf_counter() - t


def ours(ws, X, y, folds, delay: float, n: int) -> float:
    t = time.perf_counter()
    tune(Sleepy(delay), X, y, space, n_trials=n, cv=_Fixed(folds), metric="accuracy", prune=False, progress=False, workspace=ws)
    return time.perf_counter() - t


class _Fixed:
    "A CV splitter with the given folds."
    def __init__(self, folds): self.folds = folds
    def split(self, X, y=None, groups=None): return iter(self.folds)
    def get_n_splits(self, *a, **k): return len(self.folds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("mlops_workbench").setLevel(logging.WARNING)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.array([0, 1] * 20)
    folds = [(np.arange(20, 40), np.arange(20)), (np.arange(20), np.arange(20, 40))]
    ws = init_workspace(Path(tempfile.mkdtemp())/"ws")
    storage = study_storage(ws)
    bare(storage, X, y, folds, 0.0, 2); ours(ws, X, y, folds, 0.0, 2)  # warm-up: tables, imports
    print(f"{args.trials} trials, 2 folds, SQLite store, median of {args.repeats}")
    print(f"{'objective':>12} {'optuna ms/trial':>16} {'tune ms/trial':>14} {'added ms':>9} {'ratio':>6}  target <= 1.20")
    for delay in (0.0, 0.025):  # 2 fits per trial: 0 and 50 ms of objective
        b = statistics.median(bare(storage, X, y, folds, delay, args.trials) for _ in range(args.repeats)) / args.trials * 1e3
        o = statistics.median(ours(ws, X, y, folds, delay, args.trials) for _ in range(args.repeats)) / args.trials * 1e3
        ratio = o / b
        print(f"{('trivial' if not delay else f'{2*delay*1e3:.0f} ms'):>12} {b:16.2f} {o:14.2f} {o-b:9.2f} {ratio:6.2f}  {'PASS' if ratio <= 1.2 else 'MISS'}")


if __name__ == "__main__":
    main()

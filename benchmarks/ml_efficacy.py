"""ML efficacy on concept-drift streams: does the loop help, compared with what people use today?

    python benchmarks/ml_efficacy.py [--rows 60000] [--seeds 7,8] [--jobs 2] [--only abrupt,no-drift]
                                     [--plot benchmarks/out/ml_efficacy.png] [--quick]

Prequential (test-then-train) accuracy: every row is predicted by the model deployed at that moment and
its label arrives the stream's label delay later (`label_delay` rows; the long-delay stream's is 4x);
nothing learns from a label before it has arrived. The clock is one row per second and everything acts
once per `tick` rows (the loop's monitoring interval).

Every stream runs once per seed of `--seeds` (default 7 and 8), each run in its own worker process, `--jobs`
at a time. Streams (5% label noise; the first five datasets.drift_stream, the others the generator named):
- abrupt: hyperplane, 3 abrupt drifts at 1/4, 1/2, 3/4 of the stream;
- gradual: agrawal, 2 gradual drifts at 1/3, 2/3, each mixing the concepts over a tenth of the stream;
- irregular: agrawal, 3 abrupt drifts at 0.17, 0.38, 0.81 of the stream, another seed (seed + 1);
- long-delay: hyperplane, 2 abrupt drifts at 1/3, 2/3, label delay 4x (2,000 rows instead of 500);
- no-drift: hyperplane, one concept throughout: every retraining there is a false one;
- covariate: hyperplane, from 1/3 on the inputs squeezed around the boundary, the concept unchanged
  (covariate_shift_stream);
- recurring: agrawal, concepts A, B, A, B, A switching at 1/5, 2/5, 3/5, 4/5 (recurring_stream);
- prior: hyperplane, from 1/3 on 85% of the rows of class 1, the concept unchanged (prior_shift_stream);
- rotation: hyperplane, from 1/4 on the boundary turns a little every row, 180 degrees by the end
  (rotating_stream); measured from 1/4 to the end, as it never settles;
- noise-burst: hyperplane, no drift, but 30% of the labels flipped between 1/2 and 6/10 (noise_burst_stream):
  a labelling outage, not a drift: every retraining there is a false one;
- very-long-delay: hyperplane, 2 abrupt drifts at 1/3, 2/3, label delay 10x (5,000 rows); measured over
  twice that after each drift (over less, nothing could have seen a label of the new concept).
One more stream is run by the loop alone, for the input-drift check only (none of the tables, summaries or
goals (a)-(d) include it):
- covariate-very-long-delay: the covariate stream's rows with the very-long-delay stream's label delay (10x):
  inputs that move long before any label can tell.

Every strategy uses the trainer's default estimator (HistGradientBoostingClassifier, defaults) and, but for
the oracle, the trainer's training table: the base data (concept 0, drawn as datasets.write_base_csv draws
it) plus the last `window` labelled rows, those weighted `recent_weight` (retraining.recentWeight).
Before anything retrains, every strategy serves the same version 1, fitted on the base data only.
Strategies:
- none: version 1 forever;
- sched N: retrain every N rows (two cadences: a busy one and one as sparing as the loop), ungated;
- ADWIN: river's own DriftRetrainingClassifier with an ADWIN detector on the 0/1 error stream, around a
  river-compatible wrapper of the same sklearn model: when ADWIN fires, river clones the model and the
  clone is fitted on the same training table;
- loop: the operator's real decision function, `phases.decide(World(...))`, once per tick: the accuracy
  rule (threshold, `for`, minSamples) through `monitoring.evaluate_rule` on the stable version's labels,
  cooldown and budget, a simulated training Job whose challenger is trained and judged by the trainer's
  own plan (mfl_trainer.plan: the cut at the last rise of the served error, cross-fitted recipes on the
  rows since it; without a cut, the newest `holdoutFraction` of the feedback held out), the offline gate
  (with the sign test when breached), then the canary steps judged by the sequential analysis on the
  labels of the rows each arm served;
- oracle, the label-delay oracle: knows when each drift happened (a gradual drift: its midpoint), and
  nothing else (not which row of a gradual mixture follows which concept: nothing can know that). After a
  drift it trains only on labelled rows (row < now - label delay) at or after the drift, refitting when
  there are 100, 200, 400, ... of them up to
  `window`, then on the last `window` of them every `window` new ones until the next drift. No base data,
  no old concept, no row whose label has not arrived: what retraining can reach under the label delay when
  the drift is known the moment it happens (nothing real knows that), a reference, not an unreachable bound.

Columns, per stream: prequential accuracy over the whole stream; accuracy over the `post_drift_span` rows
after each drift and their mean; that mean as a % of the oracle's; rows from each drift to the first
500-row stretch back at the healthy accuracy (version 1's before the first drift, less 0.05); retrainings
(on the streams without drift: false retrainings); the loop's outcomes. Then a summary, per stream and seed:
the loop's post-drift mean as a % of the oracle's, the loop's prequential accuracy and retrainings against
the busier schedule's (and their ratio), and on the streams without drift every strategy's false
retrainings. Then, per drift stream and seed, the gap between the oracle's post-drift mean and the loop's,
split at the loop's first promotion after each drift: before it (detection, training, canary) and after it
(the new model, trained on few rows of the new concept). Last, the goals of issue 24, printed as PASS or
FAIL (informative: the benchmark never fails on them): (a) loop >= 95% of the oracle's post-drift accuracy
on every drift stream, every seed; (b) loop prequential >= the busier schedule's, with <= 1/3 of its
retrainings (every Job the loop started, those the gate rejected too), per drift stream and seed and over
all of them together; (c) 0 loop retraining Jobs on the streams without drift (no-drift, noise-burst);
(d) 0 promoted versions worse than the version they replaced, both scored on the (up to) 2,000 rows after
the promotion.

Input drift before labels (monitoring.inputDrift, a warning that never retrains): the loop's spec sets it, so
`decide` judges it every tick exactly as the operator does (inputdrift.judge through monitoring.evaluate_rule,
its state reset at each promotion) and emits the InputDrift Warning; the simulated server counts each row the
stable track serves into the bins of the version serving it (mfl_contracts.inputprofile.bin_of), and each
version's profile is the trainer's (mfl_trainer.input_profile: `make_profile` of the rows the published model
was fitted on; version 1: the base data; a challenger: the rows of its final fit). Each poll's sample is the
largest `inputprofile.psi` over the features, of the serving version's stable rows in the window, with their
count as the samples (minRows), and the breakdown when the operator would ask for it. Its defaults (maxPsi
0.2, minRows 500, window 30m, for 5m) are rows at one row per second; `--quick` scales the window as the
accuracy rule's window (1/3: 600 rows) and `for` as the rule's `for` (1/5: 60 rows). Printed per stream and
seed: each drift's first input-drift warning and the loop's first BreachStarted after it, and how many times
later the breach comes; every warning per 100,000 rows; and goal (e): with labels delayed far beyond the
drift (the input-shift streams with at least the long-delay stream's label delay), the warning comes >= 5x
earlier than the label-based breach, with <= 1 false warning per 100,000 rows on the streams without drift
(no-drift, noise-burst: the burst changes labels, not inputs).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from feedbackloop.core import api, inputdrift
from feedbackloop.core.canary import ArmCounts, CanaryObservation
from feedbackloop.core.monitoring import Sample
from feedbackloop.core.phases import (
    EnsureCanary,
    EnsureStable,
    Event,
    JobObservation,
    RemoveCanary,
    ServingObservation,
    StartTraining,
    World,
    decide,
)
from feedbackloop.core.timeutil import parse_time
from mfl_contracts import inputprofile
from mfl_testbed import datasets
from mfl_trainer import input_profile, plan, split

EPOCH = 1_800_000_000.0  # the loop's clock: row r is predicted at EPOCH + r seconds
MIN_HOLDOUT_ROWS = 50  # the trainer's default minHoldoutRows
RECOVERY_STRETCH = 500  # rows of accuracy back at the healthy level that count as recovered
ORACLE_FIRST_FIT = 100  # new-concept labels the oracle's first refit after a drift waits for
PROMOTION_CHECK_ROWS = 2_000  # rows after a promotion on which the new and the replaced version are compared
LONG_DELAY_FACTOR = 4  # the long-delay stream's label delay, in units of Settings.label_delay
VERY_LONG_DELAY_FACTOR = 10  # the very-long-delay stream's
BURST_NOISE = 0.3  # share of labels the noise burst flips (on top of the 5% label noise)
DEFAULT_SEEDS = (7, 8)
ORACLE_GOAL = 0.95  # issue 24: the loop's post-drift accuracy as a share of the oracle's, on every drift stream
HAVE_RIVER = importlib.util.find_spec("river") is not None  # the ADWIN peer (requirements/bench.txt)
DEFAULT_PLOT = Path(__file__).resolve().parent / "out" / "ml_efficacy.png"
INPUT_DRIFT_DEFAULTS = api.InputDrift()  # monitoring.inputDrift's defaults, the benchmark's at full size
INPUT_SHIFT_SHAPES = ("covariate", "prior")  # the streams whose inputs move (the others only relabel them)
INPUT_DRIFT_EARLIER = 5  # goal (e): the warning >= 5x earlier than the breach, with labels far behind
FALSE_WARNINGS_PER_100K = 1.0  # goal (e): at most this many warnings per 100,000 rows without drift
ALERTS = ("BreachStarted", "Recovered", "InputDrift", "InputDriftCleared")  # the loop's Events kept per row


@dataclass(frozen=True)
class Settings:
    rows: int = 60_000
    seed: int = 7
    label_delay: int = 500  # rows (= seconds) from a prediction to its label; a stream may have its own
    window: int = 5_000  # labelled rows in every training table (retraining.dataWindow)
    base_rows: int = 3_000  # concept-0 base data, always in the table
    recent_weight: float = 4.0  # weight of feedback rows against base rows (retraining.recentWeight's default)
    tick: int = 30  # rows between looks (monitoring and analysis interval: 30s)
    schedules: tuple[int, ...] = (4_000, 8_000)
    post_drift_span: int = 5_000  # accuracy measured over these rows after each drift
    # the loop's spec
    rule_window: int = 600  # the accuracy rule's query window (labels that arrived in the last 10m)
    rule_for: int = 300  # `for`: 5m, the CRD's default
    rule_min_samples: int = 200
    cooldown: int = 1_800  # 30m, the CRD's default
    max_retrains_per_day: int = 12  # the CRD's default
    holdout_fraction: float = 0.25
    training_seconds: int = 120  # how long the simulated training Job runs
    canary_steps: tuple[tuple[int, int], ...] = ((20, 120), (50, 120))  # (weight %, pause s): the defaults
    canary_max_degradation: float = 0.02
    canary_min_samples: int = 200
    canary_max_duration: int = 3_600
    replicas: int = 2
    change_point: bool = True  # retraining.changePoint.enabled
    change_point_min_rows: int = 100
    change_point_alpha: float = 0.01
    superior_when_breached: bool = True  # retraining.gate.superiorWhenBreached
    # retraining.refresh (opt-in in the operator): None, or its growth
    refresh_growth: float | None = None
    revive_versions: int = 5  # the trainer's reviveVersions (its default); 0: never revive a past version
    # monitoring.inputDrift: a warning, never a trigger (the loop's figures are the same without it)
    input_drift: bool = True
    input_max_psi: float = INPUT_DRIFT_DEFAULTS.max_psi
    input_min_rows: int = INPUT_DRIFT_DEFAULTS.min_rows
    input_window: int = int(INPUT_DRIFT_DEFAULTS.window.seconds)  # 30m: served rows the PSI is taken over
    input_for: int = int(INPUT_DRIFT_DEFAULTS.for_.seconds)  # 5m


def quick_settings(rows: int = 8_000, seed: int = 7) -> Settings:
    """A small run with the time constants and windows scaled down (3-5x), for smoke tests; its drifts are
    too close together for the slower strategies to recover between them."""
    return Settings(
        rows=rows,
        seed=seed,
        label_delay=100,
        window=1_000,
        base_rows=1_000,
        schedules=(1_000,),
        post_drift_span=min(1_000, rows // 8),
        rule_window=200,
        rule_for=60,
        rule_min_samples=100,
        cooldown=360,
        training_seconds=30,
        canary_steps=((20, 30), (50, 30)),
        canary_min_samples=100,
        canary_max_duration=900,
        input_window=600,  # 30m scaled as the accuracy rule's window (600 -> 200 rows): 1/3
        input_for=60,  # 5m scaled as the rule's `for` (300 -> 60 rows): 1/5
    )


# --- streams ---------------------------------------------------------------------------------------


Shape = Literal["concept", "covariate", "recurring", "prior", "rotation", "noise-burst"]


@dataclass(frozen=True)
class StreamSpec:
    """What a stream is, without its rows: small enough to travel between processes."""

    name: str
    generator: datasets.Generator
    kind: datasets.DriftKind
    drifts: tuple[int, ...]  # rows where a new concept starts (the middle of the change if gradual)
    width: int
    threshold: float  # the loop's accuracy rule `min`: 7-9 points under the healthy accuracy
    label_delay: int  # rows (= seconds) from a prediction to its label, for everything on this stream
    seed: int
    shape: Shape = "concept"  # what changes at the drifts (see SHAPES)
    span: int = 0  # rows after each drift its accuracy is measured on; 0: Settings.post_drift_span
    burst: tuple[int, int] | None = None  # the noise-burst stream's flipped rows [start, stop)
    loop_only: bool = False  # run by the loop alone, for the input-drift check only (input_drift_streams)

    def describe(self) -> str:
        what = f"no drift ({self.generator})"
        if self.burst:
            what = f"no drift ({self.generator}), {BURST_NOISE:.0%} of labels flipped in rows {list(self.burst)}"
        elif self.drifts:
            width = f", width {self.width}" if self.kind == "gradual" else ""
            what = f"{SHAPES[self.shape].format(kind=self.kind)} ({self.generator}{width}) at rows {list(self.drifts)}"
        return f"{self.name}: {what}, label delay {self.label_delay}, seed {self.seed}"

    def after_span(self, settings: Settings) -> int:
        return self.span or settings.post_drift_span

    @property
    def inputs_shift(self) -> bool:
        """Whether the served inputs move at the drifts (elsewhere only their labels change)."""
        return bool(self.drifts) and self.shape in INPUT_SHIFT_SHAPES


SHAPES: dict[str, str] = {
    "concept": "{kind} drift",
    "covariate": "covariate shift (inputs squeezed to the boundary, same concept)",
    "recurring": "recurring concepts A, B, A, ...",
    "prior": "prior shift (85% of class 1 after it, same concept)",
    "rotation": "the boundary rotating a little every row (180 degrees by the end)",
    "noise-burst": "no drift",
}


@dataclass(frozen=True, eq=False, kw_only=True)
class Case(StreamSpec):
    """One stream with its rows and everything every strategy shares about it."""

    X: np.ndarray
    y: np.ndarray
    concept: np.ndarray  # the concept that labelled each row (for tests and plots: no strategy looks)
    base_X: np.ndarray
    base_y: np.ndarray

    def spec(self) -> StreamSpec:
        return StreamSpec(**{f.name: getattr(self, f.name) for f in fields(StreamSpec)})


def make_case(spec: StreamSpec, settings: Settings) -> Case:
    stream = make_stream(spec, settings.rows)
    base_X = datasets.sample_features(settings.base_rows, seed=spec.seed + 1000, generator=spec.generator)
    base_y = datasets.flip_labels(datasets.concept_labels(base_X, 0, spec.generator), 0.05, spec.seed + 1000)
    described = {f.name: getattr(spec, f.name) for f in fields(StreamSpec)}
    return Case(**described, X=stream.X, y=stream.y, concept=stream.concept, base_X=base_X, base_y=base_y)


def make_stream(spec: StreamSpec, n: int) -> datasets.Stream:
    """The rows of `spec`'s stream: each shape has its own generator, first drift = where the change starts."""
    common = {"seed": spec.seed, "generator": spec.generator}
    first = spec.drifts[0] if spec.drifts else 0
    if spec.shape == "covariate":
        return datasets.covariate_shift_stream(n, first, **common)
    if spec.shape == "recurring":
        return datasets.recurring_stream(n, spec.drifts, kind=spec.kind, width=spec.width, **common)
    if spec.shape == "prior":
        return datasets.prior_shift_stream(n, first, **common)
    if spec.shape == "rotation":
        return datasets.rotating_stream(n, first, seed=spec.seed)
    if spec.shape == "noise-burst":
        assert spec.burst is not None
        return datasets.noise_burst_stream(n, spec.burst, burst_noise=BURST_NOISE, **common)
    return datasets.drift_stream(n, spec.drifts, kind=spec.kind, width=spec.width, **common)


def stream_specs(settings: Settings) -> list[StreamSpec]:
    """Every stream, in report order. Thresholds: hyperplane's healthy accuracy is about 0.87, agrawal's 0.94."""
    return [*issue_11_streams(settings), *issue_24_streams(settings)]


def issue_11_streams(settings: Settings) -> list[StreamSpec]:
    n, delay, seed = settings.rows, settings.label_delay, settings.seed
    return [
        StreamSpec("abrupt", "hyperplane", "abrupt", (n // 4, n // 2, 3 * n // 4), 1, 0.80, delay, seed),
        StreamSpec("gradual", "agrawal", "gradual", (n // 3, 2 * n // 3), n // 10, 0.85, delay, seed),
        StreamSpec(
            "irregular", "agrawal", "abrupt", (int(0.17 * n), int(0.38 * n), int(0.81 * n)), 1, 0.85, delay, seed + 1
        ),
        StreamSpec(
            "long-delay", "hyperplane", "abrupt", (n // 3, 2 * n // 3), 1, 0.80, LONG_DELAY_FACTOR * delay, seed
        ),
        StreamSpec("no-drift", "hyperplane", "abrupt", (), 1, 0.80, delay, seed),
    ]


def issue_24_streams(settings: Settings) -> list[StreamSpec]:
    """The rotation is measured from its start to the end (it never settles); the very long delay over twice
    its delay after each drift (over less, no strategy could have a label of the new concept)."""
    n, delay, seed = settings.rows, settings.label_delay, settings.seed
    very_long, thirds = VERY_LONG_DELAY_FACTOR * delay, (n // 3, 2 * n // 3)
    return [
        StreamSpec("covariate", "hyperplane", "abrupt", (n // 3,), 1, 0.80, delay, seed, "covariate"),
        StreamSpec(
            "recurring", "agrawal", "abrupt", tuple(k * n // 5 for k in range(1, 5)), 1, 0.85, delay, seed, "recurring"
        ),
        StreamSpec("prior", "hyperplane", "abrupt", (n // 3,), 1, 0.80, delay, seed, "prior"),
        StreamSpec("rotation", "hyperplane", "abrupt", (n // 4,), 1, 0.80, delay, seed, "rotation", n - n // 4),
        StreamSpec(
            "noise-burst", "hyperplane", "abrupt", (), 1, 0.80, delay, seed, "noise-burst", burst=(n // 2, 6 * n // 10)
        ),
        StreamSpec("very-long-delay", "hyperplane", "abrupt", thirds, 1, 0.80, very_long, seed, span=2 * very_long),
    ]


def input_drift_streams(settings: Settings) -> list[StreamSpec]:
    """Streams the loop alone runs, for the input-drift check: inputs that move while the labels that could
    show it are far behind (the covariate stream's rows, the very-long-delay stream's label delay)."""
    n, very_long = settings.rows, VERY_LONG_DELAY_FACTOR * settings.label_delay
    return [
        StreamSpec(
            "covariate-very-long-delay", "hyperplane", "abrupt", (n // 3,), 1, 0.80, very_long, settings.seed,
            "covariate", loop_only=True,
        ),
    ]  # fmt: skip


def stream_spec(settings: Settings, name: str) -> StreamSpec:
    [spec] = [s for s in [*stream_specs(settings), *input_drift_streams(settings)] if s.name == name]
    return spec


def make_cases(settings: Settings) -> list[Case]:
    return [make_case(spec, settings) for spec in stream_specs(settings)]


# --- models and the shared training table ----------------------------------------------------------


class Model:
    """A fitted estimator and its predictions, made in one batch, for every row from `first_row` on."""

    def __init__(self, estimator: HistGradientBoostingClassifier, X: np.ndarray, first_row: int) -> None:
        self.estimator = estimator
        self.first_row = first_row
        self.cached = estimator.predict(X[first_row:])

    def predictions(self, rows: slice) -> np.ndarray:
        assert rows.start >= self.first_row, "a model cannot serve rows from before it existed"
        return self.cached[rows.start - self.first_row : rows.stop - self.first_row]

    def prediction(self, row: int) -> int:
        assert row >= self.first_row, "a model cannot score rows from before it existed"
        return int(self.cached[row - self.first_row])


@dataclass
class Table:
    X: np.ndarray
    y: np.ndarray
    is_feedback: np.ndarray
    rows: np.ndarray  # the stream row of each feedback row; -1 for base rows


class Lab:
    """The stream seen through its label delay, and the one training rule every strategy uses."""

    def __init__(self, case: Case, settings: Settings) -> None:
        self.case, self.settings = case, settings
        self.fits = 0

    def labelled_end(self, now: int) -> int:
        """Rows before this one have their label at time `now`."""
        return max(0, now - self.case.label_delay)

    def table(self, end: int) -> Table:
        """The trainer's table: base data, then the last `window` labelled rows before `end`, in time order."""
        recent = slice(max(0, end - self.settings.window), end)
        X, y = self.case.X[recent], self.case.y[recent]
        return Table(
            np.vstack([self.case.base_X, X]),
            np.concatenate([self.case.base_y, y]),
            np.r_[np.zeros(len(self.case.base_y), bool), np.ones(len(y), bool)],
            np.r_[np.full(len(self.case.base_y), -1), np.arange(recent.start, recent.stop)],
        )

    def fit(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray, first_row: int) -> Model:
        """A fitted model that will score rows from `first_row` on (rows it was not trained on)."""
        self.fits += 1
        estimator = HistGradientBoostingClassifier(random_state=self.settings.seed)
        with threadpool_limits(1):  # the machine is shared; and with sample weights more threads were slower
            estimator.fit(X, y, sample_weight=weights)
            return Model(estimator, self.case.X, first_row)

    def fit_until(self, end: int) -> Model:
        """Fitted on the table of the rows labelled before `end`."""
        table = self.table(end)
        weights = split.sample_weights(table.is_feedback, self.settings.recent_weight)
        return self.fit(table.X, table.y, weights, end)

    def fit_recent(self, now: int) -> Model:
        return self.fit_until(self.labelled_end(now))


# --- strategies ------------------------------------------------------------------------------------


class Strategy(Protocol):
    name: str
    retrains: int

    def serve(self, rows: slice) -> np.ndarray: ...

    def observe(self, now: int, correct: np.ndarray) -> None: ...

    def notes(self) -> str: ...


class Retrainer:
    """One model at a time, refitted on the shared table whenever `due(now)` says so."""

    def __init__(self, name: str, lab: Lab, due: Callable[[int], bool]) -> None:
        self.name, self.lab, self.due = name, lab, due
        self.model = lab.fit_recent(0)
        self.retrains = 0

    def serve(self, rows: slice) -> np.ndarray:
        return self.model.predictions(rows)

    def observe(self, now: int, correct: np.ndarray) -> None:
        if self.due(now):
            self.model = self.lab.fit_recent(now)
            self.retrains += 1

    def notes(self) -> str:
        return ""


def never(now: int) -> bool:
    return False


def every(rows: int, tick: int) -> Callable[[int], bool]:
    """Due at the first look at or after each multiple of `rows`."""
    return lambda now: now // rows > (now - tick) // rows


class Oracle(Retrainer):
    """The label-delay oracle: knows when each drift happened (a gradual one: its midpoint) and, after it,
    is refitted on the labelled rows since then only."""

    def __init__(self, lab: Lab) -> None:
        super().__init__("oracle", lab, never)
        self.concept = 0  # the newest concept whose drift has labelled rows
        self.due_at = ORACLE_FIRST_FIT  # how many of its labelled rows the next refit waits for
        self.trained: list[tuple[int, int]] = []  # per fit: (time of the fit, last row trained on)

    def observe(self, now: int, correct: np.ndarray) -> None:
        case, end = self.lab.case, self.lab.labelled_end(now)
        concept = bisect_left(case.drifts, end)  # drifts before the first unlabelled row
        if concept != self.concept:
            self.concept, self.due_at = concept, ORACLE_FIRST_FIT
        if concept == 0:
            return
        drift = case.drifts[concept - 1]
        # Every labelled row since the drift: it knows when, not which row of a gradual mixture follows
        # which concept (no system can; for an abrupt drift the two are the same).
        rows = np.arange(drift, end)
        if len(rows) < self.due_at:
            return
        rows = rows[-self.lab.settings.window :]
        self.model = self.lab.fit(case.X[rows], case.y[rows], np.ones(len(rows)), now)
        self.trained.append((now, int(rows[-1])))
        self.retrains += 1
        self.due_at = next_oracle_fit(self.due_at, self.lab.settings.window)


def next_oracle_fit(due_at: int, window: int) -> int:
    """100, 200, 400, ... up to `window`, then every `window` more."""
    return due_at + window if due_at >= window else min(2 * due_at, window)


# --- ADWIN: river's DriftRetrainingClassifier around the same sklearn model -------------------------


class LabelledHistory:
    """How far the labels river has been given go. Shared by every clone river makes, never copied."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.labelled = 0  # rows before this one have been learned

    def __deepcopy__(self, memo: dict) -> LabelledHistory:
        return self


def window_classifier_class():
    """Built on first use so that river is only needed by this strategy."""
    from river import base

    class WindowRefitClassifier(base.Classifier):
        """The sklearn model behind river's API. A fresh instance (river's clone on a drift) is fitted on
        first use on the shared training table; learn_one only has to exist, as labels live in the history.
        Features travel as {"row": index}: predictions are looked up from one batch per fitted model."""

        def __init__(self, history: LabelledHistory) -> None:
            self.history = history
            self._model: Model | None = None

        def _fitted(self) -> Model:
            if self._model is None:
                self._model = self.history.lab.fit_until(self.history.labelled)
            return self._model

        def learn_one(self, x: dict, y: int) -> None:
            self._fitted()

        def predict_proba_one(self, x: dict) -> dict[int, float]:
            label = self._fitted().prediction(x["row"])
            return {label: 1.0, 1 - label: 0.0}

    return WindowRefitClassifier


class RiverDriftRetraining:
    def __init__(self, lab: Lab) -> None:
        from river.drift import ADWIN, DriftRetrainingClassifier

        self.name, self.lab = "ADWIN", lab
        self.history = LabelledHistory(lab)
        self.river = DriftRetrainingClassifier(
            window_classifier_class()(self.history), drift_detector=ADWIN(), train_in_background=False
        )  # ADWIN gives no warnings
        self.retrains = 0

    def serve(self, rows: slice) -> np.ndarray:
        return np.array([self.river.predict_one({"row": r}) for r in range(rows.start, rows.stop)])

    def observe(self, now: int, correct: np.ndarray) -> None:
        """Feeds the labels that arrived, one by one; river scores each with the model it serves now, and a
        model river makes on a drift is fitted on the labels up to and including that row."""
        before = self.lab.fits
        for row in range(self.history.labelled, self.lab.labelled_end(now)):
            self.history.labelled = row + 1
            self.river.learn_one({"row": row}, int(self.lab.case.y[row]))
        self.retrains += self.lab.fits - before

    def notes(self) -> str:
        return ""


# --- this loop: the operator's own decisions ---------------------------------------------------------


@dataclass
class TrainingJob:
    done_at: int
    summary: dict


def seconds(rows: int) -> str:
    return f"{rows}s"


def loop_spec(settings: Settings, threshold: float) -> api.ModelFeedbackLoopSpec:
    input_drift = {
        "maxPsi": settings.input_max_psi,
        "minRows": settings.input_min_rows,
        "window": seconds(settings.input_window),
        "for": seconds(settings.input_for),
    }
    return api.validate_spec(
        {
            "model": {
                "name": "bench",
                "storage": {"hostPath": {"path": "/unused"}},
                "initialVersion": 1,
                "serving": {"replicas": settings.replicas},
            },
            "monitoring": {
                "prometheus": {"url": "http://unused"},
                "interval": seconds(settings.tick),
                "metrics": [
                    {
                        "name": "accuracy",
                        "query": "correct/labelled",
                        "min": threshold,
                        "for": seconds(settings.rule_for),
                        "minSamples": settings.rule_min_samples,
                        "samplesQuery": "labelled",
                    }
                ],
                **({"inputDrift": input_drift} if settings.input_drift else {}),
            },
            "retraining": {
                "features": ["x"],
                "target": "label",
                "dataWindow": seconds(settings.window),
                "holdoutFraction": settings.holdout_fraction,
                "recentWeight": settings.recent_weight,
                "cooldown": seconds(settings.cooldown),
                "maxRetrainsPerDay": settings.max_retrains_per_day,
                "changePoint": {
                    "enabled": settings.change_point,
                    "minRows": settings.change_point_min_rows,
                    "alpha": settings.change_point_alpha,
                },
                "gate": {"superiorWhenBreached": settings.superior_when_breached},
                **({"refresh": {"growth": settings.refresh_growth}} if settings.refresh_growth else {}),
            },
            "rollout": {
                "steps": [{"weight": w, "pause": seconds(p)} for w, p in settings.canary_steps],
                "analysis": {
                    "interval": seconds(settings.tick),
                    "maxDegradation": settings.canary_max_degradation,
                    "minSamples": settings.canary_min_samples,
                    "maxDuration": seconds(settings.canary_max_duration),
                    "latency": {"enabled": False},
                },
            },
        }
    )


class FeedbackLoop:
    """Plays the engine's part around `decide`: observes the simulated world, applies the actions."""

    def __init__(self, lab: Lab) -> None:
        self.name, self.lab, self.settings = "loop", lab, lab.settings
        self.spec = loop_spec(lab.settings, lab.case.threshold)
        self.rule = self.spec.monitoring.metrics[0]
        self.models = {1: lab.fit_recent(0)}
        self.status: dict = {}
        self.stable, self.canary, self.canary_share = 1, None, 0.0
        self.jobs: dict[str, TrainingJob] = {}
        n = len(lab.case.y)
        self.version = np.zeros(n, np.int32)  # which version served each row
        self.on_canary = np.zeros(n, bool)  # and on which track
        self.correct = np.zeros(n, bool)
        self.rng = np.random.default_rng(lab.settings.seed)
        self.retrains = 0
        self.events: Counter[str] = Counter()
        self.timeline: list[tuple[int, str]] = []
        self.promotions: list[tuple[int, int, int]] = []  # (time, replaced version, promoted version)
        self.concept_since: dict[int, float | None] = {1: None}  # each version's trainingData.conceptSince
        self.trained_until: dict[int, float] = {}  # each version's dataWindow.end (version 1: base data only)
        self.cuts = 0
        self.revived: list[tuple[int, int]] = []  # (row, past version) of every revival
        self.recipes: Counter[str] = Counter()
        # the input-drift check: each version's profile, and the bin of each value the stable track served
        self.features = datasets.feature_names(lab.case.generator, lab.case.X.shape[1])
        self.profiles = {1: self.profile(lab.table(lab.labelled_end(0)).X)}  # version 1: the base data
        self.bins = np.full(lab.case.X.shape, -1, np.int8)  # under the profile of the version that served it
        self.alerts: list[tuple[int, str]] = []  # (time, Event reason) of ALERTS
        self.input_checks: list[tuple[int, float | None, int]] = []  # per poll: (time, largest PSI, rows)

    # serving
    def serve(self, rows: slice) -> np.ndarray:
        predictions = self.models[self.stable].predictions(rows)
        self.version[rows] = self.stable
        if self.canary is None:
            self.count_inputs(np.arange(rows.start, rows.stop), self.stable)
            return predictions
        routed = self.rng.random(rows.stop - rows.start) < self.canary_share
        self.on_canary[rows] = routed
        self.version[rows] = np.where(routed, self.canary, self.stable)
        self.count_inputs(np.arange(rows.start, rows.stop)[~routed], self.stable)
        return np.where(routed, self.models[self.canary].predictions(rows), predictions)

    def profile(self, X: np.ndarray, rows: np.ndarray | None = None) -> dict | None:
        """A version's input profile, made by the trainer's own function of the table's `rows` the version was
        fitted on (all of `X` when None)."""
        columns = {name: X[:, j] for j, name in enumerate(self.features)}
        # None: fitted on fewer rows than inputprofile.MIN_ROWS; the version gets no verdict, as in the operator
        return input_profile.of_table(columns, self.features, np.arange(len(X)) if rows is None else rows)

    def count_inputs(self, rows: np.ndarray, version: int) -> None:
        """What the stable track's server does with every row it serves: each value counted into its bin of
        the serving version's profile (kept here as the bin's index in `inputprofile.bin_names`)."""
        profile = self.profiles.get(version)
        if not self.settings.input_drift or profile is None:
            return
        for j, name in enumerate(self.features):
            feature = profile["features"][name]
            index = {bin_: i for i, bin_ in enumerate(inputprofile.bin_names(feature["edges"]))}
            self.bins[rows, j] = [index[inputprofile.bin_of(feature, v)] for v in self.lab.case.X[rows, j].tolist()]

    # one reconcile, as engine._reconcile does it
    def observe(self, now: int, correct: np.ndarray) -> None:
        self.correct = correct
        world = World(
            now=EPOCH + now,
            name="bench",
            generation=1,
            spec=self.spec,
            status=self.status,
            samples=(self.poll(now),),
            job=self.job(now),
            serving=self.serving(),
            canary=self.canary_counts(now),
        )
        decision = decide(world)
        self.status = decision.status
        for action in decision.actions:
            self.apply(action, now)

    def poll(self, now: int) -> dict[str, Sample]:
        """The accuracy rule's sample: labels that arrived in its window, of the stable version's rows; and
        the input-drift check's, when it is on."""
        end = self.lab.labelled_end(now)
        rows = slice(max(0, end - self.settings.rule_window), end)
        serving = self.status.get("currentVersion", 1)
        mine = (self.version[rows] == serving) & ~self.on_canary[rows]
        labelled = int(mine.sum())
        value = float(self.correct[rows][mine].mean()) if labelled else None
        samples = {self.rule.name: Sample(value, EPOCH + now, samples=float(labelled), version=serving)}
        if self.settings.input_drift:
            samples[inputdrift.RULE_NAME] = self.input_sample(now, serving)
        return samples

    def input_sample(self, now: int, serving: int) -> Sample:
        """The input-drift check's poll (inputdrift.rule): the largest PSI over the features of the serving
        version's stable rows served in the window, and those rows (its minRows); then, as the operator's
        observer does, the breakdown (the features above maxPsi, largest first) when it is worth asking."""
        if self.profiles.get(serving) is None:  # the server counts nothing: the queries answer no data
            return Sample(None, EPOCH + now, samples=None, version=serving)
        rows = slice(max(0, now - self.settings.input_window), now)
        mine = (self.version[rows] == serving) & ~self.on_canary[rows]
        bins = self.bins[rows][mine]
        assert (bins >= 0).all(), "a stable row of the serving version was not counted"
        psis = {name: self.feature_psi(serving, name, bins[:, j]) for j, name in enumerate(self.features)}
        found = {name: value for name, value in psis.items() if value is not None}
        largest = max(found.values(), default=None)
        self.input_checks.append((now, largest, len(bins)))
        sample = Sample(largest, EPOCH + now, samples=float(len(bins)), version=serving)
        settings = self.spec.monitoring.input_drift
        if settings is None or not inputdrift.worth_a_breakdown(settings, sample):
            return sample
        above = [({"feature": name}, value) for name, value in found.items() if value > settings.max_psi]
        return replace(sample, breakdown=inputdrift.ranked(above))

    def feature_psi(self, version: int, name: str, bins: np.ndarray) -> float | None:
        feature = self.profiles[version]["features"][name]
        names = inputprofile.bin_names(feature["edges"])
        counts = np.bincount(bins, minlength=len(names))
        return inputprofile.psi(feature["expected"], {names[i]: int(c) for i, c in enumerate(counts) if c})

    def job(self, now: int) -> JobObservation | None:
        run = self.status.get("retraining")
        if not run:
            return None
        job = self.jobs[run["jobName"]]
        if now < job.done_at:
            return JobObservation(run["jobName"], "Running")
        return JobObservation(run["jobName"], "Succeeded", summary=job.summary)

    def serving(self) -> ServingObservation:
        replicas = self.settings.replicas
        return ServingObservation(
            stable_version=self.stable,
            stable_ready=replicas,
            stable_replicas=replicas,
            canary_version=self.canary,
            canary_ready=1 if self.canary else 0,
        )

    def canary_counts(self, now: int) -> CanaryObservation | None:
        """Both arms since the canary started, as canary_queries reads them: labels that arrived since
        then (so the stable arm includes rows predicted up to a label delay before the start)."""
        rollout = self.status.get("rollout")
        if not rollout:
            return None
        started = int(parse_time(rollout["startedAt"]) - EPOCH)
        labelled = slice(max(0, started - self.lab.case.label_delay), self.lab.labelled_end(now))
        served = slice(started, now)
        return CanaryObservation(
            accuracy=(self.arm(labelled, rollout["version"], True), self.arm(labelled, self.stable, False)),
            availability=(self.requests(served, rollout["version"], True), self.requests(served, self.stable, False)),
        )

    def arm(self, rows: slice, version: int, canary: bool) -> ArmCounts:
        mine = (self.version[rows] == version) & (self.on_canary[rows] == canary)
        return ArmCounts(float(self.correct[rows][mine].sum()), float(mine.sum()))

    def requests(self, rows: slice, version: int, canary: bool) -> ArmCounts:
        count = float(((self.version[rows] == version) & (self.on_canary[rows] == canary)).sum())
        return ArmCounts(count, count)  # the simulated server never fails a request

    # acting, as engine._do does it
    def apply(self, action: object, now: int) -> None:
        if isinstance(action, StartTraining):
            self.train(action, now)
        elif isinstance(action, EnsureStable):
            if action.version != self.stable:
                self.promotions.append((now, self.stable, action.version))
            self.stable = action.version
        elif isinstance(action, EnsureCanary):
            self.canary, self.canary_share = action.version, action.weight / 100
        elif isinstance(action, RemoveCanary):
            self.canary, self.canary_share = None, 0.0
        elif isinstance(action, Event):
            self.events[action.reason] += 1
            if action.reason in ("Promoted", "RolledBack", "CandidateRejected"):
                self.timeline.append((now, action.reason))
            if action.reason in ALERTS:
                self.alerts.append((now, action.reason))

    def train(self, action: StartTraining, now: int) -> None:
        """The trainer's run (mfl_trainer.plan, as train.py calls it): the cut at the last rise of the served
        error, cross-fitted recipes on the rows since it (or the newest-feedback holdout without one), both
        models scored on the same rows, with the paired counts the gate's sign test reads."""
        table = self.lab.table(self.lab.labelled_end(now))
        parent = action.parent_version or self.stable
        training = self.plan(table, parent)
        rows, weights, challenger_predictions = training.train, training.weights, None
        if training.folds is not None:
            recipe, challenger_predictions, _ = plan.best_recipe(
                training, self.fit_predict(table), lambda p: float((p == table.y[training.holdout]).mean())
            )
            rows, weights = training.rows_of(recipe)
            self.recipes[recipe.name] += 1
        challenger = self.lab.fit(table.X[rows], table.y[rows], weights, now)
        self.models[action.version] = challenger
        self.profiles[action.version] = self.profile(table.X, rows)  # the rows it was fitted on
        self.concept_since[action.version] = training.concept_since
        self.trained_until[action.version] = float(self.lab.labelled_end(now))
        self.cuts += training.cut is not None
        ts = np.where(table.rows >= 0, table.rows, np.nan).astype(float)[training.holdout]
        judged = plan.unseen_by_champion(ts, self.trained_until.get(parent), MIN_HOLDOUT_ROWS)
        X, y = table.X[training.holdout][judged], table.y[training.holdout][judged]
        if challenger_predictions is None:
            challenger_predictions = challenger.estimator.predict(X)
        else:
            challenger_predictions = challenger_predictions[judged]
        champion_ok = self.models[parent].estimator.predict(X) == y
        revived = self.revive(action.version, parent, X, y, challenger_predictions == y, champion_ok, ts[judged])
        if revived is not None:  # the trainer publishes that version's model as this one (mfl_trainer.revive)
            self.models[action.version], self.profiles[action.version] = self.models[revived], self.profiles[revived]
            challenger_predictions = self.models[revived].estimator.predict(X)
            self.revived.append((now, revived))
        challenger_ok = challenger_predictions == y
        since = training.concept_since
        summary = {
            "ok": True,
            "conceptSince": EPOCH + since if since is not None else None,  # a refresh is timed by it
            "rows": {"holdout": len(y)},
            "challenger": {"accuracy": float(challenger_ok.mean())},
            "champion": {"accuracy": float(champion_ok.mean())},
            "paired": {
                "challengerOnly": int((challenger_ok & ~champion_ok).sum()),
                "championOnly": int((champion_ok & ~challenger_ok).sum()),
            },
        }
        self.jobs[action.job_name] = TrainingJob(now + self.settings.training_seconds, summary)
        self.retrains += 1

    def revive(
        self,
        version: int,
        parent: int,
        X: np.ndarray,
        y: np.ndarray,
        challenger_ok: np.ndarray,
        champion_ok: np.ndarray,
        ts: np.ndarray,
    ) -> int | None:
        """mfl_trainer.revive's rule: of the newest reviveVersions earlier versions (not the champion) whose data
        ended before the judged rows, the best one at least as good as the trained challenger and better than
        the champion on them (a tie: the newer)."""
        candidates = sorted((v for v in self.models if v < version and v != parent), reverse=True)
        if not len(ts) or not np.isfinite(ts).any():
            return None  # judged on base data: no past version's window can be shown to end before it
        first_judged = float(np.nanmin(ts))
        best, best_score = None, max(float(challenger_ok.mean()), float(champion_ok.mean()) + 1e-12)
        for candidate in candidates[: self.settings.revive_versions]:
            if self.trained_until.get(candidate, np.inf) >= first_judged:
                continue  # it may have trained on the judged rows
            score = float((self.models[candidate].estimator.predict(X) == y).mean())
            if score >= best_score and (best is None or score > best_score):
                best, best_score = candidate, score
        return best

    def plan(self, table: Table, parent: int) -> plan.TrainingPlan:
        feedback = table.rows >= 0
        return plan.plan_training(
            table.is_feedback,
            table.y,
            np.where(feedback, table.rows, np.nan).astype(float),  # ts: the row's time
            np.where(feedback, ~self.correct[np.maximum(table.rows, 0)], np.nan).astype(float),  # served error
            fraction=self.spec.retraining.holdout_fraction,
            min_holdout_rows=MIN_HOLDOUT_ROWS,
            stratify=True,
            seed=self.settings.seed,
            recent_weight=self.spec.retraining.recent_weight,
            change=plan.ChangeSettings(
                self.spec.retraining.change_point.enabled,
                self.spec.retraining.change_point.alpha,
                self.spec.retraining.change_point.min_rows,
            ),
            inherited_since=self.concept_since.get(parent),
        )

    def fit_predict(self, table: Table) -> plan.FitPredict:
        def fit_predict(rows: np.ndarray, weights: np.ndarray, test: np.ndarray) -> np.ndarray:
            estimator = HistGradientBoostingClassifier(random_state=self.settings.seed)
            with threadpool_limits(1):
                return estimator.fit(table.X[rows], table.y[rows], sample_weight=weights).predict(table.X[test])

        return fit_predict

    def checked_promotions(self) -> list[PromotionCheck]:
        """Each promoted version and the one it replaced, scored on the same rows after the promotion."""
        checks, y = [], self.lab.case.y
        for at, replaced, promoted in self.promotions:
            rows = slice(at, min(len(y), at + PROMOTION_CHECK_ROWS))
            if rows.stop > rows.start:
                scores = [float((self.models[v].predictions(rows) == y[rows]).mean()) for v in (promoted, replaced)]
                checks.append(PromotionCheck(at, promoted, replaced, rows.stop - rows.start, *scores))
        return checks

    def notes(self) -> str:
        return (
            f"{self.events['Promoted']} promoted, {self.events['RolledBack']} rolled back, "
            f"{self.events['CandidateRejected']} rejected by the gate; {len(self.revived)} revived; {self.cuts} cuts, "
            "recipes "
            f"{dict(self.recipes) or '-'}"
        )


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionCheck:
    """A version the loop promoted against the version it replaced, scored on the rows after the promotion."""

    at: int
    promoted: int
    replaced: int
    rows: int
    promoted_accuracy: float
    replaced_accuracy: float

    @property
    def difference(self) -> float:
        return self.promoted_accuracy - self.replaced_accuracy


@dataclass
class Result:
    """What one strategy did on one stream: plain data only (no fitted models), so it can leave a worker."""

    name: str
    correct: np.ndarray
    retrains: int
    notes: str
    seconds: float
    timeline: list[tuple[int, str]] = field(default_factory=list)  # the loop's (time, event)
    promotions: list[PromotionCheck] = field(default_factory=list)  # the loop's
    trained: list[tuple[int, int]] = field(default_factory=list)  # the oracle's fits: (time, last row trained on)
    alerts: list[tuple[int, str]] = field(default_factory=list)  # the loop's (time, ALERTS Event)
    input_checks: list[tuple[int, float | None, int]] = field(default_factory=list)  # the loop's (time, PSI, rows)

    def accuracy(self) -> float:
        return float(self.correct.mean())

    def after_drifts(self, drifts: tuple[int, ...], span: int) -> list[float]:
        return [float(self.correct[d : d + span].mean()) for d in drifts]

    def post_drift(self, drifts: tuple[int, ...], span: int) -> float | None:
        """The mean of `after_drifts`; None without drifts."""
        after = self.after_drifts(drifts, span)
        return float(np.mean(after)) if after else None

    def recoveries(self, stream: StreamSpec, target: float, stretch: int = RECOVERY_STRETCH) -> list[int | None]:
        """Rows from each drift to the first `stretch`-row run at `target` accuracy (None: not before the
        next drift)."""
        ends = [*stream.drifts[1:], len(self.correct)]
        found = []
        for drift, end in zip(stream.drifts, ends):
            sums = np.convolve(self.correct[drift:end], np.ones(stretch), mode="valid")
            hits = np.flatnonzero(sums >= target * stretch)
            found.append(int(hits[0]) if len(hits) else None)
        return found


def run(strategy: Strategy, case: Case, settings: Settings) -> Result:
    """Test, then learn: serve a tick of rows, score them, let the strategy see the labels that arrived."""
    started = time.monotonic()
    correct = np.zeros(len(case.y), bool)
    for start in range(0, len(case.y), settings.tick):
        rows = slice(start, min(start + settings.tick, len(case.y)))
        correct[rows] = strategy.serve(rows) == case.y[rows]
        strategy.observe(rows.stop, correct)
    return Result(
        strategy.name,
        correct,
        strategy.retrains,
        strategy.notes(),
        time.monotonic() - started,
        getattr(strategy, "timeline", []),
        strategy.checked_promotions() if isinstance(strategy, FeedbackLoop) else [],
        list(strategy.trained) if isinstance(strategy, Oracle) else [],
        list(getattr(strategy, "alerts", [])),
        list(getattr(strategy, "input_checks", [])),
    )


def strategies(settings: Settings) -> dict[str, Callable[[Lab], Strategy]]:
    """Every strategy by name, in table order."""
    scheduled = {f"sched {rows}": schedule(rows) for rows in settings.schedules}
    adwin: dict[str, Callable[[Lab], Strategy]] = {"ADWIN": RiverDriftRetraining} if HAVE_RIVER else {}
    return {
        "none": lambda lab: Retrainer("none", lab, never),
        **scheduled,
        **adwin,
        "loop": FeedbackLoop,
        "oracle": Oracle,
    }


def schedule(rows: int) -> Callable[[Lab], Strategy]:
    return lambda lab: Retrainer(f"sched {rows}", lab, every(rows, lab.settings.tick))


def run_case(case: Case, settings: Settings, names: list[str] | None = None) -> list[Result]:
    known = strategies(settings)
    return [run(known[name](Lab(case, settings)), case, settings) for name in names or list(known)]


@dataclass
class Outcome:
    """One stream's results, as its worker returns them."""

    stream: StreamSpec
    results: list[Result]
    seconds: float  # wall time in the worker
    seed: int = DEFAULT_SEEDS[0]  # the run's (Settings.seed); a stream's own seed may differ (irregular)

    @property
    def label(self) -> str:
        return f"{self.stream.name} s{self.seed}"

    def result(self, name: str) -> Result | None:
        return next((r for r in self.results if r.name == name), None)


def run_stream(settings: Settings, name: str) -> Outcome:
    """Builds the stream called `name` and runs every strategy on it, on one thread: a worker's job."""
    started = time.monotonic()
    case = make_case(stream_spec(settings, name), settings)
    with threadpool_limits(1):
        results = run_case(case, settings, ["loop"] if case.loop_only else None)
    return Outcome(case.spec(), results, time.monotonic() - started, settings.seed)


def run_streams(tasks: list[tuple[Settings, str]], jobs: int) -> Iterator[Outcome]:
    """The outcomes of the (settings, stream name) tasks in their order, `jobs` at a time in worker processes."""
    if jobs <= 1:
        yield from (run_stream(settings, name) for settings, name in tasks)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = [pool.submit(run_stream, settings, name) for settings, name in tasks]
        yield from (future.result() for future in futures)


# --- reporting -------------------------------------------------------------------------------------


def print_settings(settings: Settings, seeds: list[int]) -> None:
    s = settings
    if not HAVE_RIVER:
        print("ADWIN left out: river is not installed (pip install -r requirements/bench.txt)")
    steps = ", ".join(f"{w}% for {p}s" for w, p in s.canary_steps)
    print(
        f"rows {s.rows}, seeds {', '.join(map(str, seeds))}; one row per second; label delay {s.label_delay} rows "
        f"(long-delay stream: {LONG_DELAY_FACTOR * s.label_delay}, very-long-delay: "
        f"{VERY_LONG_DELAY_FACTOR * s.label_delay}); every strategy acts every {s.tick} rows"
    )
    print(
        f"model: HistGradientBoostingClassifier (defaults); training table: {s.base_rows} base rows of "
        f"concept 0 + the last {s.window} labelled rows x recentWeight {s.recent_weight:g}"
    )
    print(
        f"sched N: every N rows, ungated | ADWIN: river DriftRetrainingClassifier + ADWIN(delta=0.002) on the "
        f"0/1 errors | oracle (label-delay oracle): knows when each drift happened; refitted on the labelled rows "
        f"since then only, at {ORACLE_FIRST_FIT}, {2 * ORACLE_FIRST_FIT}, {4 * ORACLE_FIRST_FIT}, ... of them up to "
        f"{s.window}, then on the last {s.window} every {s.window}"
    )
    print(
        f"loop: accuracy over the last {s.rule_window} labels (min as per stream, for {s.rule_for}s, minSamples "
        f"{s.rule_min_samples}); cooldown {s.cooldown}s; maxRetrainsPerDay {s.max_retrains_per_day}; training "
        f"Job {s.training_seconds}s; holdoutFraction {s.holdout_fraction}; gate maxDegradation 0; canary "
        f"{steps} ({s.replicas} stable replicas: weights by replica share), maxDegradation "
        f"{s.canary_max_degradation}, minSamples {s.canary_min_samples}/arm, maxDuration {s.canary_max_duration}s"
    )
    if s.input_drift:
        print(
            f"loop's inputDrift (a warning only): maxPsi {s.input_max_psi:g}, minRows {s.input_min_rows}, window "
            f"{s.input_window} rows, for {s.input_for} rows; each version profiled on the rows it was fitted on"
        )


def recovery_target(stream: StreamSpec, reference: Result, margin: float = 0.05) -> float:
    """The healthy accuracy before the first drift (the whole stream if none), less `margin`: every strategy
    serves version 1 there."""
    healthy_until = stream.drifts[0] - stream.width // 2 if stream.drifts else len(reference.correct)
    return float(reference.correct[:healthy_until].mean()) - margin


def busier_schedule(settings: Settings) -> str:
    return f"sched {min(settings.schedules)}"


def share_of_oracle(outcome: Outcome, name: str, span: int) -> float | None:
    """A strategy's post-drift mean over the oracle's; None without drifts or an oracle."""
    result, oracle = outcome.result(name), outcome.result("oracle")
    if result is None or oracle is None or not outcome.stream.drifts:
        return None
    return result.post_drift(outcome.stream.drifts, span) / oracle.post_drift(outcome.stream.drifts, span)


def drift_cells(outcome: Outcome, result: Result, span: int, target: float) -> list[str]:
    """The per-drift columns of one row: accuracies after each drift, their mean, % of the oracle, recoveries."""
    drifts = outcome.stream.drifts
    if not drifts:
        return ["-"] * 4
    share = share_of_oracle(outcome, result.name, span)
    return [
        " / ".join(f"{a:.3f}" for a in result.after_drifts(drifts, span)),
        f"{result.post_drift(drifts, span):.3f}",
        "-" if share is None else f"{100 * share:.0f}%",
        " / ".join("never" if n is None else str(n) for n in result.recoveries(outcome.stream, target)),
    ]


def print_table(outcome: Outcome, settings: Settings) -> None:
    stream, span = outcome.stream, outcome.stream.after_span(settings)
    target = recovery_target(stream, outcome.results[0])
    print(
        f"\n{stream.describe()}; run seed {outcome.seed}; {settings.rows} rows; loop rule: accuracy min "
        f"{stream.threshold}; recovered: first {RECOVERY_STRETCH} rows at >= {target:.3f} (healthy - 0.05)"
    )
    retrainings = "retrainings" if stream.drifts else "false retrainings"
    header = (
        f"{'strategy':<10} | {'prequential':>11} | {f'acc, {span} rows after each drift':>29} | {'mean':>5} | "
        f"{'% oracle':>8} | {'rows to recover':>23} | {retrainings:>17} | loop outcomes"
    )
    print(header)
    print("-" * len(header))
    for r in outcome.results:
        after, mean, share, recovered = drift_cells(outcome, r, span, target)
        print(
            f"{r.name:<10} | {r.accuracy():>11.4f} | {after:>29} | {mean:>5} | {share:>8} | {recovered:>23} | "
            f"{r.retrains:>17} | {r.notes}"
        )


def print_loop_only(outcome: Outcome) -> None:
    """A stream for the input-drift check: the loop alone ran it (its warnings come with the other streams')."""
    loop = outcome.result("loop")
    print(
        f"\n{outcome.stream.describe()}; run seed {outcome.seed}; the loop alone (for the input-drift check): "
        f"prequential {loop.accuracy():.4f}, {loop.retrains} retrainings, {loop.notes}"
    )


def print_summary(outcomes: list[Outcome], settings: Settings) -> None:
    sched = busier_schedule(settings)
    print(f"\nsummary: the loop against the label-delay oracle (post-drift mean) and the busier schedule, {sched}")
    header = (
        f"{'stream, seed':<20} | {'loop % of oracle':>16} | {f'prequential: loop vs {sched}':>31} | "
        f"{f'retrainings: loop vs {sched} (ratio)':>40} | false retrainings (no drift)"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        loop, busy = o.result("loop"), o.result(sched)
        share = share_of_oracle(o, "loop", o.stream.after_span(settings))
        ratio = f"{loop.retrains / busy.retrains:.2f}" if busy.retrains else "-"
        false = ", ".join(f"{r.name} {r.retrains}" for r in o.results) if not o.stream.drifts else "-"
        print(
            f"{o.label:<20} | {'-' if share is None else f'{100 * share:.0f}%':>16} | "
            f"{f'{loop.accuracy():.4f} vs {busy.accuracy():.4f}':>31} | "
            f"{f'{loop.retrains} vs {busy.retrains} ({ratio})':>40} | {false}"
        )


# --- where the gap to the oracle comes from ----------------------------------------------------------


@dataclass(frozen=True)
class GapSplit:
    """The oracle's post-drift mean less the loop's, split at the loop's first promotion after each drift:
    `before` accrues while the loop detects, trains and canaries (version 1 or an older one serving),
    `after` while its new model, trained on few rows of the new concept, serves. before + after = gap."""

    gap: float
    before: float
    after: float
    served: list[int | None]  # rows from each drift to the first promotion after it (None: not in the span)


def gap_split(outcome: Outcome, settings: Settings) -> GapSplit | None:
    loop, oracle = outcome.result("loop"), outcome.result("oracle")
    drifts, span = outcome.stream.drifts, outcome.stream.after_span(settings)
    if not drifts or loop is None or oracle is None:
        return None
    promoted = sorted(at for at, reason in loop.timeline if reason == "Promoted")
    lead = oracle.correct.astype(float) - loop.correct  # per row: 1 where only the oracle was right
    before = after = 0.0
    served: list[int | None] = []
    for drift in drifts:
        end = min(drift + span, len(loop.correct))
        first = next((at for at in promoted if drift <= at < end), None)
        served.append(None if first is None else first - drift)
        cut = end if first is None else first
        before += lead[drift:cut].sum() / (end - drift)
        after += lead[cut:end].sum() / (end - drift)
    n = len(drifts)
    return GapSplit((before + after) / n, before / n, after / n, served)


def print_gaps(outcomes: list[Outcome], settings: Settings) -> None:
    print(
        "\nthe gap to the oracle's post-drift accuracy, split at the loop's first promotion after each drift "
        "(before: detection + training + canary; after: the new model trained on few rows)"
    )
    header = (
        f"{'stream, seed':<20} | {'loop':>6} | {'oracle':>6} | {'gap':>7} | {'before':>7} | {'after':>7} | "
        "rows from each drift to the first promotion"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        split = gap_split(o, settings)
        if split is None:
            continue
        span = o.stream.after_span(settings)
        loop, oracle = (o.result(n).post_drift(o.stream.drifts, span) for n in ("loop", "oracle"))
        served = " / ".join("none" if r is None else str(r) for r in split.served)
        print(
            f"{o.label:<20} | {loop:>6.3f} | {oracle:>6.3f} | {split.gap:>+7.3f} | {split.before:>+7.3f} | "
            f"{split.after:>+7.3f} | {served}"
        )


# --- input drift before labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class DriftAlerts:
    """One drift as the loop saw it: its first input-drift warning (InputDrift Event) and its first
    label-based breach (BreachStarted), each the first at or after the drift and before the next one."""

    drift: int
    end: int  # the next drift, or the stream's end
    warning: int | None
    breach: int | None

    def earlier(self) -> float | None:
        """Rows from the drift to the breach over rows from it to the warning; without a breach before `end`
        a lower bound (counted to `end`); None without a warning."""
        if self.warning is None:
            return None
        breach = self.end if self.breach is None else self.breach
        return (breach - self.drift) / max(1, self.warning - self.drift)


def drift_alerts(outcome: Outcome) -> list[DriftAlerts]:
    loop = outcome.result("loop")
    if loop is None:
        return []
    drifts = outcome.stream.drifts
    ends = [*drifts[1:], len(loop.correct)]

    def first(reason: str, start: int, end: int) -> int | None:
        return next((at for at, r in loop.alerts if r == reason and start <= at < end), None)

    return [DriftAlerts(d, e, first("InputDrift", d, e), first("BreachStarted", d, e)) for d, e in zip(drifts, ends)]


def warnings(result: Result) -> int:
    """InputDrift Warnings: each time the condition turned True."""
    return sum(reason == "InputDrift" for _, reason in result.alerts)


def warning_rate(outcomes: list[Outcome]) -> tuple[int, int, float]:
    """The loop's warnings over `outcomes`, their rows, and the warnings per 100,000 rows."""
    loops = [o.result("loop") for o in outcomes]
    count, rows = sum(warnings(r) for r in loops if r), sum(len(r.correct) for r in loops if r)
    return count, rows, 100_000 * count / rows if rows else 0.0


def earlier_text(alert: DriftAlerts) -> str:
    earlier = alert.earlier()
    if earlier is None:
        return "-"
    return f"{'>' if alert.breach is None else ''}{earlier:.1f}x"


def after_text(at: int | None, drift: int) -> str:
    return "none" if at is None else f"{at} (+{at - drift})"


def late_label_streams(outcomes: list[Outcome], settings: Settings) -> list[Outcome]:
    """Goal (e)'s: inputs that shift while labels are far behind (at least the long-delay stream's delay)."""
    late = LONG_DELAY_FACTOR * settings.label_delay
    return [o for o in outcomes if o.stream.inputs_shift and o.stream.label_delay >= late and o.result("loop")]


def print_input_drift(outcomes: list[Outcome], settings: Settings) -> None:
    s = settings
    print(
        f"\ninput drift before labels (monitoring.inputDrift: maxPsi {s.input_max_psi:g}, minRows {s.input_min_rows}, "
        f"window {s.input_window} rows, for {s.input_for} rows; a warning, never a trigger): per drift, the loop's "
        "first InputDrift warning and first BreachStarted after it, and how many times later the breach came; "
        "where the inputs never move, every warning is a false one"
    )
    header = (
        f"{'stream, seed':<30} | {'inputs':>6} | {'label delay':>11} | {'drift':>6} | {'first warning (+rows)':>21} | "
        f"{'first breach (+rows)':>20} | {'breach/warning':>14} | {'warnings':>8} | false warnings per 100k rows"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        loop = o.result("loop")
        if loop is None:
            continue
        count, _, rate = warning_rate([o])
        false = "-" if o.stream.inputs_shift else f"{rate:.1f}"
        cells = [("-", "-", "-", "-")] + [
            (str(a.drift), after_text(a.warning, a.drift), after_text(a.breach, a.drift), earlier_text(a))
            for a in drift_alerts(o)
        ]
        for i, (drift, warned, breached, earlier) in enumerate(cells[1:] or cells):
            label, inputs = (o.label, "shift" if o.stream.inputs_shift else "same") if i == 0 else ("", "")
            delay, total, per = (o.stream.label_delay, count, false) if i == 0 else ("", "", "")
            print(
                f"{label:<30} | {inputs:>6} | {delay:>11} | {drift:>6} | {warned:>21} | {breached:>20} | "
                f"{earlier:>14} | {total:>8} | {per}"
            )
    steady = [o for o in outcomes if not o.stream.drifts]
    same = [o for o in outcomes if not o.stream.inputs_shift]
    for what, group in (("the streams without drift", steady), ("every stream whose inputs never move", same)):
        count, rows, rate = warning_rate(group)
        if rows:
            print(f"false warnings on {what}: {count} in {rows} rows ({rate:.1f} per 100,000)")


# --- issue 24's goals --------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_lines(outcomes: list[Outcome], settings: Settings) -> list[str]:
    """Issue 24's goals, measured on the streams and seeds that ran: (a)-(d) on the efficacy streams, (e)
    on every stream the loop ran."""
    efficacy = [o for o in outcomes if not o.stream.loop_only]
    drifting = [o for o in efficacy if o.stream.drifts]
    steady = [o for o in efficacy if not o.stream.drifts]
    return [
        oracle_target(drifting, settings),
        *(schedule_target(o, settings) for o in drifting),
        *([schedule_target_overall(drifting, settings)] if len(drifting) > 1 else []),
        *(false_retraining_target(o) for o in steady),
        promotion_target(efficacy, settings),
        input_drift_target(outcomes, settings),
    ]


def oracle_target(drifting: list[Outcome], settings: Settings) -> str:
    text = f"(a) loop >= {ORACLE_GOAL:.0%} of the label-delay oracle's post-drift accuracy on every drift stream"
    if not drifting:
        return f"{text}: not measured (no drift stream ran)"
    shares = {o.label: share_of_oracle(o, "loop", o.stream.after_span(settings)) for o in drifting}
    detail = ", ".join(f"{label} {100 * share:.0f}%" for label, share in shares.items())
    return f"{text}, every seed: {verdict(all(s >= ORACLE_GOAL for s in shares.values()))} ({detail})"


def schedule_target(outcome: Outcome, settings: Settings) -> str:
    sched = busier_schedule(settings)
    loop, busy = outcome.result("loop"), outcome.result(sched)
    better = loop.accuracy() >= busy.accuracy()
    sparing = 3 * loop.retrains <= busy.retrains
    return (
        f"(b) {outcome.label}: loop prequential >= {sched}'s ({loop.accuracy():.4f} vs {busy.accuracy():.4f}: "
        f"{verdict(better)}) with <= 1/3 of its retrainings, rejected Jobs included ({loop.retrains} vs "
        f"{busy.retrains}: {verdict(sparing)}): {verdict(better and sparing)}"
    )


def schedule_target_overall(drifting: list[Outcome], settings: Settings) -> str:
    """(b) over the drift streams together: the loop's retrainings against the schedule's, summed."""
    sched = busier_schedule(settings)
    loop = sum(o.result("loop").retrains for o in drifting)
    busy = sum(o.result(sched).retrains for o in drifting)
    better = all(o.result("loop").accuracy() >= o.result(sched).accuracy() for o in drifting)
    sparing = 3 * loop <= busy
    return (
        f"(b) all drift streams together: loop prequential >= {sched}'s on each ({verdict(better)}) with <= 1/3 of "
        f"its retrainings in all ({loop} vs {busy}: {verdict(sparing)}): {verdict(better and sparing)}"
    )


def false_retraining_target(outcome: Outcome) -> str:
    retrains = outcome.result("loop").retrains
    return f"(c) 0 loop retraining Jobs on {outcome.label} (no drift): {verdict(retrains == 0)} ({retrains})"


def promotion_target(outcomes: list[Outcome], settings: Settings) -> str:
    margin = settings.canary_max_degradation
    text = (
        f"(d) 0 promotions worse than the champion they replaced (both scored on the <= {PROMOTION_CHECK_ROWS} rows "
        "after the promotion)"
    )
    checks = [(o.label, c) for o in outcomes for c in o.result("loop").promotions]
    if not checks:
        return f"{text}: PASS (no promotions)"
    worse = sum(c.difference < 0 for _, c in checks)
    beyond = sum(c.difference < -margin for _, c in checks)
    label, worst = min(checks, key=lambda pair: pair[1].difference)
    return (
        f"{text}: {verdict(worse == 0)} ({worse} of {len(checks)} worse, {beyond} by more than the canary margin "
        f"{margin:g}; worst {worst.difference:+.3f}: {label}, v{worst.promoted} {worst.promoted_accuracy:.3f} "
        f"replacing v{worst.replaced} {worst.replaced_accuracy:.3f} at row {worst.at})"
    )


def input_drift_target(outcomes: list[Outcome], settings: Settings) -> str:
    """(e): on the input-shift streams with late labels, every drift's warning >= INPUT_DRIFT_EARLIER x earlier
    than its breach (no breach in the stream: the bound to its end); and on the streams without drift at most
    FALSE_WARNINGS_PER_100K warnings per 100,000 rows, over all of them and every seed together."""
    text = (
        f"(e) with labels delayed far beyond the drift, the input-drift warning >= {INPUT_DRIFT_EARLIER}x earlier "
        f"than the label-based breach, with <= {FALSE_WARNINGS_PER_100K:g} false warning per 100,000 rows on the "
        "streams without drift"
    )
    late = late_label_streams(outcomes, settings)
    steady = [o for o in outcomes if not o.stream.drifts and o.result("loop")]
    alerts = [(o.label, a) for o in late for a in drift_alerts(o)]
    earlier_ok = all((a.earlier() or 0.0) >= INPUT_DRIFT_EARLIER for _, a in alerts)
    count, rows, rate = warning_rate(steady)
    ratios = ", ".join(f"{label} {earlier_text(a)}" for label, a in alerts)
    streams = ", ".join(sorted({o.stream.name for o in steady}))
    parts = [
        f"warning vs breach: {ratios}: {verdict(earlier_ok)}"
        if alerts
        else "warning vs breach: not measured (no input-shift stream with late labels ran)",
        f"false warnings: {count} in {rows} rows of {streams} ({rate:.1f} per 100,000): "
        f"{verdict(rate <= FALSE_WARNINGS_PER_100K)}"
        if rows
        else "false warnings: not measured (no stream without drift ran)",
    ]
    overall = verdict(earlier_ok and rate <= FALSE_WARNINGS_PER_100K) if alerts and rows else "not measured in full"
    return f"{text}: {overall} ({'; '.join(parts)})"


def print_targets(outcomes: list[Outcome], settings: Settings) -> None:
    print("\nissue 24's goals (informative: nothing here fails the run)")
    for line in target_lines(outcomes, settings):
        print(line)


def plot(outcomes: list[Outcome], path: Path, smoothing: int = 1000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(outcomes), 1, figsize=(15, 3.6 * len(outcomes)), squeeze=False, sharex=True, layout="constrained"
    )
    for ax, outcome in zip(axes[:, 0], outcomes):
        plot_panel(ax, outcome, smoothing)
    axes[-1, 0].set_xlabel("row (one per second); label delay and training windows in rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Each strategy's line: the loop dark, thick and on top; the baselines lighter under it; the oracle dashed.
LOOP_STYLE = {"color": "#0b2e6b", "lw": 2.4, "alpha": 1.0, "zorder": 5}
BASELINE_STYLES = {
    "none": {"color": "tab:gray"},
    "ADWIN": {"color": "tab:purple"},
    "oracle": {"color": "tab:green", "ls": "--"},
}
SCHEDULE_COLORS = ("tab:orange", "tab:brown", "tab:pink")


def line_style(name: str, schedules: list[str]) -> dict[str, object]:
    if name == "loop":
        return LOOP_STYLE
    style = BASELINE_STYLES.get(name) or {"color": SCHEDULE_COLORS[schedules.index(name) % len(SCHEDULE_COLORS)]}
    return {"lw": 1.0, "alpha": 0.55, "zorder": 2, **style}


def plot_panel(ax: object, outcome: Outcome, smoothing: int) -> None:
    """One stream: each strategy's rolling accuracy, the loop's events, the drifts (none on no-drift); the
    legend right of the panel, off the curves."""
    markers = {"Promoted": ("^", "green"), "RolledBack": ("v", "red"), "CandidateRejected": ("x", "grey")}
    stream = outcome.stream
    schedules = [r.name for r in outcome.results if r.name.startswith("sched ")]
    for r in outcome.results:
        rolling = np.convolve(r.correct, np.ones(smoothing) / smoothing, mode="valid")
        ax.plot(
            np.arange(len(rolling)) + smoothing,
            rolling,
            label=f"{r.name}: {r.accuracy():.3f}, {r.retrains} retrainings",
            **line_style(r.name, schedules),
        )
        for at, reason in r.timeline:
            marker, color = markers[reason]
            ax.scatter([at], [0.33], marker=marker, color=color, s=30, zorder=6)
    for d in stream.drifts:
        ax.axvline(d, color="black", ls=":", alpha=0.6, zorder=1)
        if stream.kind == "gradual":
            ax.axvspan(d - stream.width / 2, d + stream.width / 2, color="grey", alpha=0.08, zorder=0)
    if stream.burst:  # the noise burst's flipped labels
        ax.axvspan(*stream.burst, color="tab:red", alpha=0.08, zorder=0)
    ax.set_title(
        f"{stream.describe()}: accuracy over {smoothing} rows; loop: ^ promoted, v rolled back, x rejected",
        fontsize=9,
    )
    ax.set_ylim(0.3, 1.0)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    for text in legend.get_texts():
        if text.get_text().startswith("loop:"):
            text.set_fontweight("bold")


def parse_seeds(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",")]


def main(argv: list[str] | None = None) -> list[Outcome]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="stream length (default 60000; quick 8000)")
    parser.add_argument(
        "--seeds", "--seed", type=parse_seeds, default=list(DEFAULT_SEEDS), help="SEED[,SEED]: one run of each"
    )
    parser.add_argument("--jobs", type=int, default=2, help="streams run at once, each in its own process")
    parser.add_argument(
        "--only", default=None, help="run only these streams (NAME[,NAME]; covariate-very-long-delay: the loop only)"
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="the first seed's streams are plotted")
    parser.add_argument("--quick", action="store_true", help="a small run with scaled-down time constants")
    parser.add_argument(
        "--refresh", type=float, default=None, metavar="GROWTH", help="the loop sets retraining.refresh (its growth)"
    )
    parser.add_argument("--revive-versions", type=int, default=5, help="the trainer's reviveVersions (0: none)")
    args = parser.parse_args(argv)
    settings = quick_settings() if args.quick else Settings()
    settings = replace(settings, refresh_growth=args.refresh, revive_versions=args.revive_versions)
    if args.rows:
        settings = replace(settings, rows=args.rows, post_drift_span=min(settings.post_drift_span, args.rows // 8))
    known = [spec.name for spec in [*stream_specs(settings), *input_drift_streams(settings)]]
    wanted = args.only.split(",") if args.only else known
    if unknown := sorted(set(wanted) - set(known)):
        parser.error(f"unknown stream(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # Seed by seed, so that each seed's tables come together.
    tasks = [(replace(settings, seed=seed), name) for seed in args.seeds for name in known if name in wanted]
    started = time.monotonic()
    print_settings(settings, args.seeds)
    outcomes = []
    for outcome in run_streams(tasks, args.jobs):
        if outcome.stream.loop_only:
            print_loop_only(outcome)
        else:
            print_table(outcome, settings)
        print(f"({outcome.label}: {outcome.seconds:.0f}s wall time in its worker)")
        outcomes.append(outcome)
    efficacy = [o for o in outcomes if not o.stream.loop_only]
    print_summary(efficacy, settings)
    print_gaps(efficacy, settings)
    if settings.input_drift:
        print_input_drift(outcomes, settings)
    print_targets(outcomes, settings)
    plot([o for o in efficacy if o.seed == args.seeds[0]], args.plot)
    print(f"\nplot: {args.plot}\ntotal wall time {time.monotonic() - started:.0f}s ({args.jobs} jobs)")
    return outcomes


if __name__ == "__main__":
    main()

"""ML efficacy on concept-drift streams: does the loop help, compared with what people use today?

    python benchmarks/ml_efficacy.py [--rows 60000] [--seed 7] [--plot benchmarks/out/ml_efficacy.png] [--quick]

Prequential (test-then-train) accuracy: every row is predicted by the model deployed at that moment and
its label arrives `label_delay` rows later; nothing learns from a label before it has arrived. The clock
is one row per second and everything acts once per `tick` rows (the loop's monitoring interval).

Every strategy uses the trainer's default estimator (HistGradientBoostingClassifier, defaults) and the
trainer's training table: the base data (concept 0, drawn as datasets.write_base_csv draws it) plus the
last `window` labelled rows, those weighted `recent_weight` (retraining.recentWeight). Strategies:
- none: version 1 (base data only) forever;
- schedule: retrain every `schedules` rows (two cadences: a busy one and one as sparing as the loop), ungated;
- ADWIN: river's own DriftRetrainingClassifier with an ADWIN detector on the 0/1 error stream, around a
  river-compatible wrapper of the same sklearn model: when ADWIN fires, river clones the model and the
  clone is fitted on the same training table;
- loop: the operator's real decision function, `phases.decide(World(...))`, once per tick: the accuracy
  rule (threshold, `for`, minSamples) through `monitoring.evaluate_rule` on the stable version's labels,
  cooldown and budget, a simulated training Job whose challenger is trained and gated exactly as the
  trainer does it (the newest `holdoutFraction` of the feedback is the holdout and is not trained on),
  then the canary steps judged by the sequential analysis on the labels of the rows each arm served;
- oracle: knows each drift; as soon as labels of the new concept can exist (drift + label_delay) it is
  refitted on `window` fresh rows of the new concept: an upper bound, not a real system.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from feedbackloop import api
from feedbackloop.canary import ArmCounts, CanaryObservation
from feedbackloop.monitoring import Health, RuleState, Sample, evaluate_rule, rule_state_from_status, summarize
from feedbackloop.phases import (
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
from feedbackloop.timeutil import parse_time
from mfl_testbed import datasets
from mfl_trainer import split

EPOCH = 1_800_000_000.0  # the loop's clock: row r is predicted at EPOCH + r seconds
MIN_HOLDOUT_ROWS = 50  # the trainer's default minHoldoutRows
RECOVERY_STRETCH = 500  # rows of accuracy back at the healthy level that count as recovered
DEFAULT_PLOT = Path(__file__).resolve().parent / "out" / "ml_efficacy.png"


@dataclass(frozen=True)
class Settings:
    rows: int = 60_000
    seed: int = 7
    label_delay: int = 500  # rows (= seconds) from a prediction to its label
    window: int = 5_000  # labelled rows in every training table (retraining.dataWindow)
    base_rows: int = 3_000  # concept-0 base data, always in the table
    recent_weight: float = 4.0  # weight of feedback rows against base rows
    tick: int = 30  # rows between looks (monitoring and analysis interval: 30s)
    schedules: tuple[int, ...] = (4_000, 8_000)
    post_drift_span: int = 5_000  # accuracy measured over these rows after each drift
    # the loop's spec
    rule_window: int = 600  # the accuracy rule's query window (labels that arrived in the last 10m)
    rule_for: int = 300  # `for`: 5m
    rule_min_samples: int = 200
    cooldown: int = 1_800  # 30m
    max_retrains_per_day: int = 24
    holdout_fraction: float = 0.25
    training_seconds: int = 120  # how long the simulated training Job runs
    canary_steps: tuple[tuple[int, int], ...] = ((20, 120), (50, 120))  # (weight %, pause s): the defaults
    canary_max_degradation: float = 0.02
    canary_min_samples: int = 200
    canary_max_duration: int = 3_600
    replicas: int = 2


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
    )


# --- streams ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """One drift stream and everything every strategy shares about it."""

    name: str
    generator: str
    kind: str
    drifts: list[int]
    width: int
    threshold: float  # the loop's accuracy rule `min`: 7-9 points under the healthy accuracy
    X: np.ndarray
    y: np.ndarray
    base_X: np.ndarray
    base_y: np.ndarray

    def describe(self) -> str:
        width = f", width {self.width}" if self.kind == "gradual" else ""
        return f"{self.kind} drift ({self.generator}{width}) at rows {self.drifts}"


def make_case(
    name: str, generator: str, kind: str, drifts: list[int], width: int, threshold: float, settings: Settings
) -> Case:
    stream = datasets.drift_stream(
        settings.rows, drifts, kind=kind, width=width, seed=settings.seed, generator=generator
    )
    base_X = datasets.sample_features(settings.base_rows, seed=settings.seed + 1000, generator=generator)
    base_y = datasets.flip_labels(datasets.concept_labels(base_X, 0, generator), 0.05, settings.seed + 1000)
    return Case(name, generator, kind, drifts, width, threshold, stream.X, stream.y, base_X, base_y)


def make_cases(settings: Settings) -> list[Case]:
    n = settings.rows
    return [
        make_case("abrupt", "hyperplane", "abrupt", [n // 4, n // 2, 3 * n // 4], 1, 0.80, settings),
        make_case("gradual", "agrawal", "gradual", [n // 3, 2 * n // 3], n // 10, 0.85, settings),
    ]


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


class Lab:
    """The stream seen through label delay, and the one training rule every strategy uses."""

    def __init__(self, case: Case, settings: Settings) -> None:
        self.case, self.settings = case, settings
        self.fits = 0

    def labelled_end(self, now: int) -> int:
        """Rows before this one have their label at time `now`."""
        return max(0, now - self.settings.label_delay)

    def table(self, end: int) -> Table:
        """The trainer's table: base data, then the last `window` labelled rows before `end`, in time order."""
        recent = slice(max(0, end - self.settings.window), end)
        X, y = self.case.X[recent], self.case.y[recent]
        return Table(
            np.vstack([self.case.base_X, X]),
            np.concatenate([self.case.base_y, y]),
            np.r_[np.zeros(len(self.case.base_y), bool), np.ones(len(y), bool)],
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
    """Refitted on fresh rows of the new concept the moment that concept's labels could first exist."""

    def __init__(self, lab: Lab) -> None:
        super().__init__("oracle", lab, never)
        case, settings = lab.case, lab.settings
        self.refit_at = {d + settings.label_delay: concept for concept, d in enumerate(case.drifts, start=1)}

    def observe(self, now: int, correct: np.ndarray) -> None:
        due = [c for at, c in self.refit_at.items() if now - self.lab.settings.tick < at <= now]
        if not due:
            return
        case, settings = self.lab.case, self.lab.settings
        X = datasets.sample_features(settings.window, seed=settings.seed + 2000 + now, generator=case.generator)
        y = datasets.flip_labels(datasets.concept_labels(X, due[0], case.generator), 0.05, settings.seed + now)
        self.model = self.lab.fit(X, y, np.ones(len(y)), self.lab.labelled_end(now))
        self.retrains += 1


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
            },
            "retraining": {
                "features": ["x"],
                "target": "label",
                "dataWindow": seconds(settings.window),
                "holdoutFraction": settings.holdout_fraction,
                "recentWeight": settings.recent_weight,
                "cooldown": seconds(settings.cooldown),
                "maxRetrainsPerDay": settings.max_retrains_per_day,
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

    # serving
    def serve(self, rows: slice) -> np.ndarray:
        predictions = self.models[self.stable].predictions(rows)
        self.version[rows] = self.stable
        if self.canary is None:
            return predictions
        routed = self.rng.random(rows.stop - rows.start) < self.canary_share
        self.on_canary[rows] = routed
        self.version[rows] = np.where(routed, self.canary, self.stable)
        return np.where(routed, self.models[self.canary].predictions(rows), predictions)

    # one reconcile, as engine._reconcile does it
    def observe(self, now: int, correct: np.ndarray) -> None:
        self.correct = correct
        world = World(
            now=EPOCH + now,
            name="bench",
            generation=1,
            spec=self.spec,
            status=self.status,
            health=self.health(now),
            job=self.job(now),
            serving=self.serving(),
            canary=self.canary_counts(now),
        )
        decision = decide(world)
        self.status = decision.status
        for action in decision.actions:
            self.apply(action, now)

    def health(self, now: int) -> Health:
        """The accuracy rule's sample: labels that arrived in its window, of the stable version's rows."""
        end = self.lab.labelled_end(now)
        rows = slice(max(0, end - self.settings.rule_window), end)
        mine = (self.version[rows] == self.status.get("currentVersion", 1)) & ~self.on_canary[rows]
        labelled = int(mine.sum())
        value = float(self.correct[rows][mine].mean()) if labelled else None
        previous = {m["name"]: rule_state_from_status(m) for m in self.status.get("metrics", [])}
        state = evaluate_rule(
            self.rule, previous.get(self.rule.name, RuleState()), Sample(value, EPOCH + now, samples=float(labelled))
        )
        return summarize({self.rule.name: state})

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
        labelled = slice(max(0, started - self.settings.label_delay), self.lab.labelled_end(now))
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
            self.stable = action.version
        elif isinstance(action, EnsureCanary):
            self.canary, self.canary_share = action.version, action.weight / 100
        elif isinstance(action, RemoveCanary):
            self.canary, self.canary_share = None, 0.0
        elif isinstance(action, Event):
            self.events[action.reason] += 1
            if action.reason in ("Promoted", "RolledBack", "CandidateRejected"):
                self.timeline.append((now, action.reason))

    def train(self, action: StartTraining, now: int) -> None:
        """The trainer's run: time-ordered holdout, fit on the rest, both models scored on the holdout."""
        table = self.lab.table(self.lab.labelled_end(now))
        holdout = split.choose_holdout(
            table.is_feedback,
            table.y,
            self.settings.holdout_fraction,
            MIN_HOLDOUT_ROWS,
            stratify=True,
            seed=self.settings.seed,
        )
        rows = holdout.train
        weights = split.sample_weights(table.is_feedback[rows], self.settings.recent_weight)
        challenger = self.lab.fit(table.X[rows], table.y[rows], weights, now)
        self.models[action.version] = challenger
        X, y = table.X[holdout.holdout], table.y[holdout.holdout]
        champion = self.models[action.parent_version or self.stable].estimator
        summary = {
            "ok": True,
            "rows": {"holdout": len(y)},
            "challenger": {"accuracy": float((challenger.estimator.predict(X) == y).mean())},
            "champion": {"accuracy": float((champion.predict(X) == y).mean())},
        }
        self.jobs[action.job_name] = TrainingJob(now + self.settings.training_seconds, summary)
        self.retrains += 1

    def notes(self) -> str:
        return (
            f"{self.events['Promoted']} promoted, {self.events['RolledBack']} rolled back, "
            f"{self.events['CandidateRejected']} rejected by the gate"
        )


# --- running and reporting -------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    correct: np.ndarray
    retrains: int
    notes: str
    seconds: float
    timeline: list[tuple[int, str]] = field(default_factory=list)

    def accuracy(self) -> float:
        return float(self.correct.mean())

    def after_drifts(self, drifts: list[int], span: int) -> list[float]:
        return [float(self.correct[d : d + span].mean()) for d in drifts]

    def recoveries(self, case: Case, target: float, stretch: int = RECOVERY_STRETCH) -> list[int | None]:
        """Rows from each drift to the first `stretch`-row run at `target` accuracy (None: not before the
        next drift)."""
        ends = [*case.drifts[1:], len(self.correct)]
        found = []
        for drift, end in zip(case.drifts, ends):
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
    )


def strategies(settings: Settings) -> dict[str, Callable[[Lab], Strategy]]:
    """Every strategy by name, in table order."""
    scheduled = {f"sched {rows}": schedule(rows) for rows in settings.schedules}
    return {
        "none": lambda lab: Retrainer("none", lab, never),
        **scheduled,
        "ADWIN": RiverDriftRetraining,
        "loop": FeedbackLoop,
        "oracle": Oracle,
    }


def schedule(rows: int) -> Callable[[Lab], Strategy]:
    return lambda lab: Retrainer(f"sched {rows}", lab, every(rows, lab.settings.tick))


def run_case(case: Case, settings: Settings, names: list[str] | None = None) -> list[Result]:
    known = strategies(settings)
    return [run(known[name](Lab(case, settings)), case, settings) for name in names or list(known)]


def print_settings(settings: Settings) -> None:
    s = settings
    steps = ", ".join(f"{w}% for {p}s" for w, p in s.canary_steps)
    print(
        f"rows {s.rows}, seed {s.seed}; one row per second; label delay {s.label_delay} rows; every "
        f"strategy acts every {s.tick} rows"
    )
    print(
        f"model: HistGradientBoostingClassifier (defaults); training table: {s.base_rows} base rows of "
        f"concept 0 + the last {s.window} labelled rows x recentWeight {s.recent_weight:g}"
    )
    print(
        f"sched N: every N rows, ungated | ADWIN: river DriftRetrainingClassifier + "
        f"ADWIN(delta=0.002) on the 0/1 errors | oracle: {s.window} fresh rows of the new concept at "
        f"drift + label delay"
    )
    print(
        f"loop: accuracy over the last {s.rule_window} labels (min as per stream, for {s.rule_for}s, minSamples "
        f"{s.rule_min_samples}); cooldown {s.cooldown}s; maxRetrainsPerDay {s.max_retrains_per_day}; training "
        f"Job {s.training_seconds}s; holdoutFraction {s.holdout_fraction}; gate maxDegradation 0; canary "
        f"{steps} ({s.replicas} stable replicas: weights by replica share), maxDegradation "
        f"{s.canary_max_degradation}, minSamples {s.canary_min_samples}/arm, maxDuration {s.canary_max_duration}s"
    )


def recovery_target(case: Case, reference: Result, margin: float = 0.05) -> float:
    """The healthy accuracy before the first drift, less `margin`: every strategy serves version 1 there."""
    healthy_until = case.drifts[0] - case.width // 2
    return float(reference.correct[:healthy_until].mean()) - margin


def print_table(case: Case, results: list[Result], settings: Settings) -> None:
    span, target = settings.post_drift_span, recovery_target(case, results[0])
    print(
        f"\n{case.describe()} of {settings.rows} rows; loop rule: accuracy min {case.threshold}; recovered: "
        f"first {RECOVERY_STRETCH} rows at >= {target:.3f} (healthy - 0.05)"
    )
    header = (
        f"{'strategy':<10} | {'prequential':>11} | {f'acc, {span} rows after each drift':>29} | {'mean':>5} | "
        f"{'rows to recover':>23} | {'retrainings':>11} | loop outcomes"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        after = r.after_drifts(case.drifts, span)
        recovered = " / ".join("never" if n is None else str(n) for n in r.recoveries(case, target))
        print(
            f"{r.name:<10} | {r.accuracy():>11.4f} | {' / '.join(f'{a:.3f}' for a in after):>29} | "
            f"{np.mean(after):>5.3f} | {recovered:>23} | {r.retrains:>11} | {r.notes}"
        )


def plot(outcomes: list[tuple[Case, list[Result]]], path: Path, smoothing: int = 1000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outcomes), 1, figsize=(12, 4 * len(outcomes)), squeeze=False)
    markers = {"Promoted": ("^", "green"), "RolledBack": ("v", "red"), "CandidateRejected": ("x", "grey")}
    for ax, (case, results) in zip(axes[:, 0], outcomes):
        for r in results:
            rolling = np.convolve(r.correct, np.ones(smoothing) / smoothing, mode="valid")
            ax.plot(
                np.arange(len(rolling)) + smoothing,
                rolling,
                lw=1.3 if r.name == "loop" else 1.0,
                label=f"{r.name}: {r.accuracy():.3f}, {r.retrains} retrainings",
            )
            for at, reason in r.timeline:
                marker, color = markers[reason]
                ax.scatter([at], [0.33], marker=marker, color=color, s=30, zorder=3)
        for d in case.drifts:
            ax.axvline(d, color="black", ls="--", alpha=0.5)
            if case.kind == "gradual":
                ax.axvspan(d - case.width / 2, d + case.width / 2, color="grey", alpha=0.08)
        ax.set_title(
            f"{case.describe()}: rolling accuracy over {smoothing} rows (loop: ^ promoted, v rolled back, x rejected)",
            fontsize=10,
        )
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("row (one per second); label delay and training windows in rows")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[tuple[Case, list[Result]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="stream length (default 60000; quick 12000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--quick", action="store_true", help="a small run with scaled-down time constants")
    args = parser.parse_args(argv)
    settings = quick_settings(seed=args.seed) if args.quick else Settings(seed=args.seed)
    if args.rows:
        settings = replace(settings, rows=args.rows, post_drift_span=min(settings.post_drift_span, args.rows // 8))
    print_settings(settings)
    outcomes = []
    for case in make_cases(settings):
        started = time.monotonic()
        results = run_case(case, settings)
        print_table(case, results, settings)
        print(f"({time.monotonic() - started:.0f}s)")
        outcomes.append((case, results))
    plot(outcomes, args.plot)
    print(f"\nplot: {args.plot}")
    return outcomes


if __name__ == "__main__":
    main()

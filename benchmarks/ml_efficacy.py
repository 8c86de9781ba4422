"""ML efficacy on concept-drift streams: does the loop help, against what people use today?

    python benchmarks/ml_efficacy.py [--rows 60000] [--quick] [--plot benchmarks/out/ml_efficacy.png]

Prequential (test-then-train) accuracy: each row is predicted by the model deployed at that moment; its
label arrives `--label-delay` rows later. All strategies share the base model (the trainer's default,
HistGradientBoosting) and the training rule (base data + the last `--window` labelled rows, weighted up,
as `retraining.recentWeight` does). Strategies:
- none: version 1 forever;
- schedule: retrain every `--every` rows;
- ADWIN: river's ADWIN on the 0/1 error stream (the detector behind river's DriftRetrainingClassifier),
  retraining when it fires;
- loop: this project's decisions, from its own pure code: the accuracy rule with `for`
  (monitoring.evaluate_rule), the cooldown, the offline gate on the most recent labels (gate.offline_gate),
  then a canary on half the traffic judged by the sequential analysis (canary.judge_canary), promoted or
  rolled back;
- oracle: retrained at each drift on data of the new concept (an upper bound no real system has).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from feedbackloop import api, datasets
from feedbackloop.canary import ArmCounts, CanaryObservation, judge_canary
from feedbackloop.gate import offline_gate
from feedbackloop.monitoring import RuleState, Sample, evaluate_rule
from feedbackloop.timeutil import format_time

CHUNK = 250  # rows per monitoring interval


@dataclass
class Settings:
    rows: int = 60000
    label_delay: int = 500
    window: int = 4000
    every: int = 6000  # not a divisor of the drift spacing: a schedule aligned with the drifts flatters it
    recent_weight: float = 10.0
    threshold: float = 0.8
    seed: int = 3


@dataclass
class Result:
    name: str
    correct: np.ndarray
    retrains: int = 0
    notes: dict[str, int] = field(default_factory=dict)


def train(base_X, base_y, X, y, settings: Settings, seed: int = 0) -> HistGradientBoostingClassifier:
    features = np.vstack([base_X, X]) if len(X) else base_X
    labels = np.concatenate([base_y, y]) if len(y) else base_y
    weights = np.concatenate([np.ones(len(base_y)), np.full(len(y), settings.recent_weight)])
    return HistGradientBoostingClassifier(random_state=seed).fit(features, labels, sample_weight=weights)


class Stream:
    def __init__(self, kind: str, settings: Settings) -> None:
        drifts = [settings.rows // 4, settings.rows // 2, 3 * settings.rows // 4] if kind == "abrupt" else \
            [settings.rows // 3, 2 * settings.rows // 3]
        self.drifts = drifts
        self.X, self.y, _, self.concept = datasets.drift_stream(settings.rows, drifts, kind=kind,
                                                                width=settings.rows // 12, seed=settings.seed)
        self.base_X = datasets.sample_features(3000, seed=settings.seed + 1)
        self.base_y = datasets.flip_labels(datasets.concept_labels(self.base_X, 0), 0.05, settings.seed + 1)


def labelled_until(stream: Stream, t: int, settings: Settings) -> int:
    return max(0, t - settings.label_delay)


def recent(stream: Stream, t: int, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    end = labelled_until(stream, t, settings)
    start = max(0, end - settings.window)
    return stream.X[start:end], stream.y[start:end]


def run_simple(name: str, stream: Stream, settings: Settings, should_retrain) -> Result:
    model = train(stream.base_X, stream.base_y, [], [], settings)
    correct = np.zeros(settings.rows, dtype=bool)
    result = Result(name, correct)
    for t in range(0, settings.rows, CHUNK):
        rows = slice(t, t + CHUNK)
        correct[rows] = model.predict(stream.X[rows]) == stream.y[rows]
        if should_retrain(t + CHUNK, correct):
            model = train(stream.base_X, stream.base_y, *recent(stream, t + CHUNK, settings), settings)
            result.retrains += 1
    return result


def adwin_trigger(stream: Stream, settings: Settings):
    from river.drift import ADWIN
    detector, fed = ADWIN(), [0]

    def check(t: int, correct: np.ndarray) -> bool:
        labelled = labelled_until(stream, t, settings)
        fired = False
        for ok in correct[fed[0]:labelled]:
            detector.update(0.0 if ok else 1.0)
            fired = fired or detector.drift_detected
        fed[0] = max(fed[0], labelled)
        return fired
    return check


def run_oracle(stream: Stream, settings: Settings) -> Result:
    model = train(stream.base_X, stream.base_y, [], [], settings)
    correct = np.zeros(settings.rows, dtype=bool)
    result = Result("oracle", correct)
    drifts = set(stream.drifts)
    for t in range(0, settings.rows, CHUNK):
        if t in drifts:  # knows the new concept the moment it starts
            concept = int(stream.concept[min(t + settings.rows // 12, settings.rows - 1)])
            X = datasets.sample_features(settings.window, seed=t)
            model = train(X, datasets.concept_labels(X, concept), [], [], settings)
            result.retrains += 1
        rows = slice(t, t + CHUNK)
        correct[rows] = model.predict(stream.X[rows]) == stream.y[rows]
    return result


def loop_spec(settings: Settings) -> api.ModelFeedbackLoopSpec:
    return api.validate_spec({
        "model": {"name": "bench", "storage": {"hostPath": {"path": "/tmp"}}},
        "monitoring": {"prometheus": {"url": "http://unused"}, "metrics": [
            {"name": "accuracy", "query": "q", "min": settings.threshold, "for": f"{2 * CHUNK}s"}]},
        "retraining": {"features": ["x"], "target": "y", "gate": {"maxDegradation": 0.0}},
        "rollout": {"analysis": {"minSamples": 200, "maxDegradation": 0.03, "latency": {"enabled": False},
                                 "maxDuration": f"{20 * CHUNK}s"}},
    })


def run_loop(stream: Stream, settings: Settings) -> Result:
    """One row = one second for the loop's clock: `for`, cooldown and deadlines count rows."""
    spec = loop_spec(settings)
    rule = spec.monitoring.metrics[0]
    stable = train(stream.base_X, stream.base_y, [], [], settings)
    correct = np.zeros(settings.rows, dtype=bool)
    on_canary = np.zeros(settings.rows, dtype=bool)
    result = Result("loop", correct, notes={"promoted": 0, "rolledBack": 0, "rejected": 0})
    state, last_outcome, canary, rollout = RuleState(), -10**9, None, None
    cooldown = 2 * CHUNK * 4
    for t in range(0, settings.rows, CHUNK):
        rows = slice(t, t + CHUNK)
        predictions = stable.predict(stream.X[rows])
        if canary is not None:
            routed = np.random.default_rng(t).random(CHUNK) < 0.5
            on_canary[rows] = routed
            predictions = np.where(routed, canary.predict(stream.X[rows]), predictions)
        correct[rows] = predictions == stream.y[rows]
        now, labelled = t + CHUNK, labelled_until(stream, t + CHUNK, settings)
        if canary is not None:
            stable, canary, rollout, last_outcome = judge(spec, result, stable, canary, rollout, on_canary,
                                                          labelled, now, last_outcome)
            if canary is None:
                state = RuleState()  # a decided canary: the (new) stable is judged on its own data
            continue
        window = slice(max(0, labelled - 500), labelled)
        live = correct[window][~on_canary[window]]
        state = evaluate_rule(rule, state, Sample(float(live.mean()) if len(live) else None, now))
        if state.state != "Breaching" or now - last_outcome < cooldown:
            continue
        X, y = recent(stream, now, settings)
        holdout = max(1, int(0.3 * len(y)))
        challenger = train(stream.base_X, stream.base_y, X[:-holdout], y[:-holdout], settings, seed=now)
        result.retrains += 1
        summary = {"challenger": {"accuracy": float((challenger.predict(X[-holdout:]) == y[-holdout:]).mean())},
                   "champion": {"accuracy": float((stable.predict(X[-holdout:]) == y[-holdout:]).mean())},
                   "rows": {"holdout": holdout}}
        last_outcome = now
        if offline_gate(spec, summary, first_version=False).passed:
            canary, rollout = challenger, {"startedAt": format_time(now), "start": now}
        else:
            result.notes["rejected"] += 1
    return result


def judge(spec, result, stable, canary, rollout, on_canary, labelled, now, last_outcome):
    """One look of the sequential analysis at the canary's labelled rows so far."""
    since = slice(rollout["start"], labelled)
    ok = result.correct[since]
    routed = on_canary[since]
    observation = CanaryObservation(
        accuracy=(ArmCounts(float(ok[routed].sum()), float(routed.sum())),
                  ArmCounts(float(ok[~routed].sum()), float((~routed).sum()))),
        availability=(ArmCounts(float(routed.sum()), float(routed.sum())),
                      ArmCounts(float((~routed).sum()), float((~routed).sum()))))
    verdict = judge_canary(spec.rollout.analysis, "classification", rollout, observation, now)
    rollout.update(verdict.rollout_fields)
    if verdict.phase == "Successful":
        result.notes["promoted"] += 1
        return canary, None, None, now
    if verdict.phase in ("Failed", "Error", "Inconclusive"):
        result.notes["rolledBack"] += 1
        return stable, None, None, now
    return stable, canary, rollout, last_outcome


def post_drift_accuracy(result: Result, stream: Stream, span: int) -> float:
    return float(np.mean([result.correct[d:d + span].mean() for d in stream.drifts]))


def print_table(kind: str, stream: Stream, results: list[Result], settings: Settings, seconds: float) -> None:
    span = min(5000, settings.rows // 8)
    print(f"\n{kind} drift at rows {stream.drifts} of {settings.rows} (hyperplane, 10 features); label delay "
          f"{settings.label_delay} rows; window {settings.window} labelled rows x recentWeight "
          f"{settings.recent_weight:g} + 3,000 base rows; {seconds:.0f}s")
    header = f"{'strategy':<10} | {'prequential acc':>15} | {'acc, ' + str(span) + ' rows after drifts':>26} | " \
             f"{'retrainings':>11} | loop outcomes"
    print(header)
    print("-" * len(header))
    for r in results:
        notes = ", ".join(f"{k} {v}" for k, v in r.notes.items())
        print(f"{r.name:<10} | {r.correct.mean():>15.4f} | {post_drift_accuracy(r, stream, span):>26.4f} | "
              f"{r.retrains:>11} | {notes}")


def plot(all_results: dict[str, tuple[Stream, list[Result]]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(all_results), 1, figsize=(11, 3.6 * len(all_results)), squeeze=False)
    for ax, (kind, (stream, results)) in zip(axes[:, 0], all_results.items()):
        for r in results:
            rolling = np.convolve(r.correct, np.ones(1000) / 1000, mode="valid")
            ax.plot(np.arange(len(rolling)) + 1000, rolling, label=f"{r.name} ({r.correct.mean():.3f})", lw=1.2)
        for d in stream.drifts:
            ax.axvline(d, color="black", ls="--", alpha=0.4)
        ax.set_title(f"{kind} drift: rolling accuracy (1,000 rows)")
        ax.set_ylim(0.3, 1.0)
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("row")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, tuple[Stream, list[Result]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small run for smoke tests")
    parser.add_argument("--plot", default=str(Path(__file__).parent / "out" / "ml_efficacy.png"))
    args = parser.parse_args(argv)
    settings = Settings(rows=12000 if args.quick else args.rows, seed=args.seed)
    if args.quick:
        settings.window, settings.every = 1500, 2000
    everything = {}
    for kind in ("abrupt", "gradual"):
        started = time.monotonic()
        stream = Stream(kind, settings)
        results = [
            run_simple("none", stream, settings, lambda t, c: False),
            run_simple("schedule", stream, settings, lambda t, c: t % settings.every == 0),
            run_simple("ADWIN", stream, settings, adwin_trigger(stream, settings)),
            run_loop(stream, settings),
            run_oracle(stream, settings),
        ]
        print_table(kind, stream, results, settings, time.monotonic() - started)
        everything[kind] = (stream, results)
    plot(everything, Path(args.plot))
    print(f"\nplot: {args.plot}")
    return everything


if __name__ == "__main__":
    main()

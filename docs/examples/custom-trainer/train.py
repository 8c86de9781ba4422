"""A custom trainer for model-feedback-loop: numpy, scikit-learn and joblib, nothing of the project.

It keeps the trainer contract (docs/contracts.md, "Trainer"): the config comes in MFL_TRAINER_CONFIG, the
model goes to <storageRoot>/<model>/versions/<version>/, a JSON summary goes to the termination-message file
and stdout, and the exit code is 0 (done), 2 (bad config or data) or 1 (anything unexpected).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MIN_HOLDOUT_ROWS = 50


class BadInput(Exception):
    """A bad config or bad data: exit code 2, the message goes to the loop's status."""


def load_config() -> dict:
    text = os.environ.get("MFL_TRAINER_CONFIG") or ""
    try:
        config = json.loads(text)
    except ValueError as error:
        raise BadInput(f"MFL_TRAINER_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise BadInput("MFL_TRAINER_CONFIG must be a JSON object")
    missing = [key for key in ("model", "version", "features", "target") if not config.get(key)]
    if missing:
        raise BadInput(f"MFL_TRAINER_CONFIG lacks {missing}")
    if not isinstance(config["version"], int) or config["version"] < 1:
        raise BadInput(f"version must be a positive integer, got {config['version']!r}")
    if config.get("task", "classification") not in ("classification", "regression"):
        raise BadInput(f"unknown task {config['task']!r}")
    return config  # unknown fields are ignored: a newer operator may send more


def as_label(value, task: str):
    """Base CSV labels are text, feedback labels JSON: one type per class (1, "1" and 1.0 are 1)."""
    if task == "regression":
        return float(value)
    try:
        number = float(value)
        return int(number) if number.is_integer() else number
    except (TypeError, ValueError):
        return str(value)


def read_base(folder: Path, features: list, target: str, task: str) -> tuple[list, list]:
    X, y = [], []
    for path in sorted(folder.glob("data/*.csv")):
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = sorted(set(features + [target]) - set(reader.fieldnames or []))
            if missing:
                raise BadInput(f"{path.name} lacks the columns {missing}")
            for line, row in enumerate(reader, start=2):
                try:
                    X.append([float(row[name]) for name in features])
                    y.append(as_label(row[target], task))
                except (TypeError, ValueError) as error:
                    raise BadInput(f"{path.name} line {line}: {error}") from None
    return X, y


def json_lines(folder: Path):
    for path in sorted(folder.glob("date=*/*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # e.g. a line cut short by a crashed server
            if (
                isinstance(record, dict)
                and isinstance(record.get("id"), str)
                and isinstance(record.get("ts"), (int, float))
            ):
                yield record


def read_feedback(folder: Path, features: list, task: str, start: float, now: float) -> tuple[list, list]:
    """Predictions made in [start, now] joined by id with their first label."""
    predictions = {r["id"]: r for r in json_lines(folder / "predictions") if start <= r["ts"] <= now}
    labels: dict = {}
    for record in json_lines(folder / "feedback"):
        first = labels.get(record["id"])
        if record["ts"] <= now and (first is None or record["ts"] < first["ts"]):
            labels[record["id"]] = record
    X, y = [], []
    joined = sorted((predictions[i] for i in labels if i in predictions), key=lambda r: r["ts"])
    for prediction in joined:  # oldest first: the newest rows make the holdout
        try:
            X.append([float(prediction["features"][name]) for name in features])
            y.append(as_label(labels[prediction["id"]]["label"], task))
        except (KeyError, TypeError, ValueError):
            continue  # a row without every feature cannot be trained on
    return X, y


def scores(task: str, y_true, y_pred) -> dict:
    if task == "classification":
        return {"accuracy": accuracy_score(y_true, y_pred), "f1_macro": f1_score(y_true, y_pred, average="macro")}
    rmse = float(np.sqrt(mean_squared_error(y_true, y_pred)))
    return {"mae": mean_absolute_error(y_true, y_pred), "rmse": rmse, "r2": r2_score(y_true, y_pred)}


def train(config: dict) -> dict:
    task, features, target = config.get("task", "classification"), config["features"], config["target"]
    model, version, parent = config["model"], config["version"], config.get("parentVersion")
    folder = Path(config.get("storageRoot", "/var/lib/mfl/artifacts")) / model
    final = folder / "versions" / str(version)
    if (final / "metadata.json").exists():  # a retried Job: the version was published before
        return summary_of(json.loads((final / "metadata.json").read_text()), existing=True)
    now = float(config.get("now") or time.time())
    start = now - float(config.get("dataWindowSeconds", 7 * 86400))

    base_X, base_y = read_base(folder, features, target, task)
    fb_X, fb_y = read_feedback(folder, features, task, start, now)
    X, y = np.array(base_X + fb_X, dtype=float).reshape(-1, len(features)), np.array(base_y + fb_y)
    min_rows = int(config.get("minRows", 200))
    if len(y) < min_rows:
        raise BadInput(f"{len(y)} labelled rows ({len(base_y)} base, {len(fb_y)} feedback), minRows is {min_rows}")
    # Held out: the newest share of the feedback, else a random share of the base data.
    share, n_fb = float(config.get("holdoutFraction", 0.25)), len(fb_y)
    if int(n_fb * share) >= MIN_HOLDOUT_ROWS or not base_y:
        held = np.arange(len(y) - max(1, int(n_fb * share)), len(y))
    else:
        held = np.random.default_rng(0).permutation(len(base_y))[: max(1, int(len(base_y) * share))]
    train_rows = np.setdiff1d(np.arange(len(y)), held)
    weights = np.where(np.arange(len(y)) >= len(base_y), float(config.get("recentWeight", 1.0)), 1.0)

    estimator = LogisticRegression if task == "classification" else Ridge
    try:
        pipeline = Pipeline([("scale", StandardScaler()), ("model", estimator(**config.get("hyperparameters") or {}))])
    except TypeError as error:
        raise BadInput(f"hyperparameters: {error}") from None
    pipeline.fit(X[train_rows], y[train_rows], model__sample_weight=weights[train_rows])

    # The gate compares challenger and champion on the same rows: the champion is the parent version.
    challenger_pred = pipeline.predict(X[held])
    champion, paired = None, None
    if parent is not None:
        try:
            champion_pred = joblib.load(folder / "versions" / str(parent) / "model.joblib").predict(X[held])
        except Exception as error:  # noqa: BLE001 - a missing or unloadable champion is bad input
            raise BadInput(f"champion version {parent}: {type(error).__name__}: {error}") from None
        champion = scores(task, y[held], champion_pred)
        if task == "classification":
            right_new, right_old = challenger_pred == y[held], champion_pred == y[held]
        else:
            error_new, error_old = np.abs(challenger_pred - y[held]), np.abs(champion_pred - y[held])
            right_new, right_old = error_new < error_old, error_old < error_new
        paired = {"challengerOnly": int(sum(right_new & ~right_old)), "championOnly": int(sum(right_old & ~right_new))}
    metadata = {
        "model": model, "version": version, "parentVersion": parent, "task": task,
        "estimator": f"custom-{estimator.__name__}", "format": "sklearn", "servingOutput": "labels",
        "features": features, "target": target,
        "classes": pipeline.classes_.tolist() if task == "classification" else None,
        "dataWindow": {"start": start, "end": now},
        "rows": {"base": len(base_y), "feedback": n_fb, "train": len(train_rows), "holdout": len(held)},
        "metrics": {"metric": "accuracy" if task == "classification" else "mae",
                    "greaterIsBetter": task == "classification",
                    "challenger": scores(task, y[held], challenger_pred), "champion": champion},
        "paired": paired, "trainerImage": config.get("trainerImage"),
    }  # fmt: skip
    settings = {"name": model, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": str(version)}}  # fmt: skip
    publish(final, pipeline, settings, metadata)
    return summary_of(metadata, existing=False)


def publish(final: Path, pipeline, settings: dict, metadata: dict) -> None:
    """Write into a hidden staging folder, then rename it: readers see the whole version or none of it."""
    staging = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        joblib.dump(pipeline, staging / "model.joblib")
        (staging / "model-settings.json").write_text(json.dumps(settings, indent=2))
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))  # last
        os.rename(staging, final)  # atomic; fails if another run published this version first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def summary_of(metadata: dict, existing: bool) -> dict:
    metrics = metadata["metrics"]
    return {"ok": True, "model": metadata["model"], "version": metadata["version"],
            "parentVersion": metadata["parentVersion"], "task": metadata["task"], "metric": metrics["metric"],
            "greaterIsBetter": metrics["greaterIsBetter"], "challenger": metrics["challenger"],
            "champion": metrics["champion"], "rows": metadata["rows"], "paired": metadata["paired"],
            "existing": existing}  # fmt: skip


def main() -> int:
    try:
        summary, code = train(load_config()), 0
    except BadInput as error:
        summary, code = {"ok": False, "error": str(error)}, 2
    except Exception as error:  # noqa: BLE001 - the operator shows this message in the loop's status
        traceback.print_exc()
        summary, code = {"ok": False, "error": f"unexpected {type(error).__name__}: {error}"[:1000]}, 1
    line = json.dumps(summary, separators=(",", ":"))  # well under 4 KiB, Kubernetes' limit
    try:
        Path(os.environ.get("MFL_TERMINATION_LOG", "/dev/termination-log")).write_text(line)
    except OSError as error:  # not in a Pod: stdout's last line is enough
        print(f"cannot write the termination message: {error}", file=sys.stderr)
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

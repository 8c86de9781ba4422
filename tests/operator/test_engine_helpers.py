"""The engine's pure helpers: what is worth a status write, merge patches, drift of owned objects."""

from feedbackloop import engine


def status(value, state="Healthy", message="m"):
    return {
        "phase": "Monitoring",
        "summary": f"accuracy={value}",
        "metrics": [{"name": "accuracy", "state": state, "value": value, "sampleTime": "t", "message": message}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Monitoring", "message": message}],
    }


def test_a_new_value_alone_is_not_significant_but_a_new_state_is():
    assert engine._significant(status(0.9)) == engine._significant(status(0.91, message="other"))
    assert engine._significant(status(0.9)) != engine._significant(status(0.9, state="Pending"))
    assert engine._values(status(0.9)) != engine._values(status(0.91))


def test_merge_patch_nulls_removed_keys_and_skips_equal_ones():
    before = {"a": 1, "b": {"x": 1}, "gone": 2}
    after = {"a": 1, "b": {"x": 2}, "new": 3}
    assert engine._merge_patch(before, after) == {"gone": None, "b": {"x": 2}, "new": 3}


def test_empty_strings_are_dropped_everywhere():
    assert engine._without_empty_strings({"a": "", "b": [{"c": "", "d": 1}], "e": "x"}) == {"b": [{"d": 1}], "e": "x"}


def deployment(replicas=2, image="i:1", version="1"):
    return {
        "metadata": {"labels": {"feedbackloop.dev/version": version}, "generation": 3},
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {"containers": [{"image": image, "env": [{"name": "MFL_MODEL_VERSION", "value": version}]}]}
            },
        },
        "status": {"observedGeneration": 3, "readyReplicas": replicas, "updatedReplicas": replicas},
    }


def test_drift_detects_what_the_operator_owns():
    assert not engine._drifted(deployment(), deployment())
    assert engine._drifted(deployment(), deployment(replicas=3))
    assert engine._drifted(deployment(), deployment(version="2"))
    assert engine._drifted(None, deployment())


def test_ready_counts_only_the_current_generation():
    assert engine._ready(deployment()) == 2
    stale = deployment()
    stale["status"]["observedGeneration"] = 2
    assert engine._ready(stale) == 0
    assert engine._deployment_version(deployment(version="7")) == 7


def test_trainer_overrides_pass_only_known_keys():
    body = {"metadata": {"annotations": {engine.TRAINER_OVERRIDES: '{"labelNoise": 0.4, "image": "evil"}'}}}
    assert engine.trainer_overrides(body) == {"labelNoise": 0.4}
    assert engine.trainer_overrides({"metadata": {"annotations": {engine.TRAINER_OVERRIDES: "not json"}}}) == {}


def test_job_summary_is_the_last_json_line():
    assert engine._parse_summary('progress\n{"ok": true, "version": 2}\n') == {"ok": True, "version": 2}
    assert engine._parse_summary("Traceback ...") is None

"""The pure helpers of observe, act and record: what is worth a status write, merge patches, drift of owned objects."""

from feedbackloop.runtime import act, observe, record


def status(value, state="Healthy", message="m"):
    return {
        "phase": "Monitoring",
        "summary": f"accuracy={value}",
        "metrics": [{"name": "accuracy", "state": state, "value": value, "sampleTime": "t", "message": message}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Monitoring", "message": message}],
    }


def test_a_new_value_alone_is_not_significant_but_a_new_state_is():
    assert record.significant(status(0.9)) == record.significant(status(0.91, message="other"))
    assert record.significant(status(0.9)) != record.significant(status(0.9, state="Pending"))
    assert record.values(status(0.9)) != record.values(status(0.91))


def test_merge_patch_nulls_removed_keys_and_skips_equal_ones():
    before = {"a": 1, "b": {"x": 1}, "gone": 2}
    after = {"a": 1, "b": {"x": 2}, "new": 3}
    assert record.merge_patch(before, after) == {"gone": None, "b": {"x": 2}, "new": 3}


def test_empty_strings_are_dropped_everywhere():
    assert record.without_empty_strings({"a": "", "b": [{"c": "", "d": 1}], "e": "x"}) == {"b": [{"d": 1}], "e": "x"}


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
    assert not act.drifted(deployment(), deployment())
    assert act.drifted(deployment(), deployment(replicas=3))
    assert act.drifted(deployment(), deployment(version="2"))
    assert act.drifted(None, deployment())


def test_ready_counts_only_the_current_generation():
    assert observe.ready_replicas(deployment()) == 2
    stale = deployment()
    stale["status"]["observedGeneration"] = 2
    assert observe.ready_replicas(stale) == 0
    assert observe.deployment_version(deployment(version="7")) == 7


def test_ready_counts_no_pod_of_an_older_template():
    """A rolling update (maxSurge 1, maxUnavailable 0) of 2 replicas, as real MLServer Pods showed it: one new
    Pod ready and one starting, one old Pod still ready and serving. readyReplicas says 2; the new template
    has 1 ready Pod, then 2 once the old one is gone."""
    rolling = deployment()
    rolling["status"].update(replicas=3, updatedReplicas=2, readyReplicas=2)
    assert observe.ready_replicas(rolling) == 1
    rolling["status"].update(replicas=3, updatedReplicas=2, readyReplicas=3)
    assert observe.ready_replicas(rolling) == 2
    rolling["status"].update(replicas=2, updatedReplicas=1, readyReplicas=2)  # the first new Pod, not yet surged
    assert observe.ready_replicas(rolling) == 1


def test_trainer_overrides_pass_only_known_keys():
    body = {"metadata": {"annotations": {act.TRAINER_OVERRIDES: '{"labelNoise": 0.4, "image": "evil"}'}}}
    assert act.trainer_overrides(body) == {"labelNoise": 0.4}
    assert act.trainer_overrides({"metadata": {"annotations": {act.TRAINER_OVERRIDES: "not json"}}}) == {}


def test_job_summary_is_the_last_json_line():
    assert observe.parse_summary('progress\n{"ok": true, "version": 2}\n') == {"ok": True, "version": 2}
    assert observe.parse_summary("Traceback ...") is None


def test_non_finite_numbers_never_reach_a_status_patch():
    status = {
        "metrics": [{"name": "a", "value": float("nan")}],
        "rollout": {"evidence": [{"values": {"x": float("inf"), "y": 1.0}}]},
    }
    clean = record.writable(status)
    assert clean == {"metrics": [{"name": "a"}], "rollout": {"evidence": [{"values": {"y": 1.0}}]}}
    assert record.finite([1.0, float("-inf")]) == [1.0, None]


def test_a_new_reason_for_no_data_is_significant():
    def no_data(message):
        return {"metrics": [{"name": "accuracy", "state": "NoData", "message": message}]}

    assert record.significant(no_data("Secret team-a/t: 404")) != record.significant(no_data("token refused"))

import pytest

from feedbackloop.core import promql

TEMPLATE = 'sum by (model, namespace) (rate(x{model="{{model}}",namespace="{{namespace}}"}[5m]))'


def test_render_fills_placeholders():
    assert (
        promql.render(TEMPLATE, {"model": "churn", "namespace": "prod"})
        == 'sum by (model, namespace) (rate(x{model="churn",namespace="prod"}[5m]))'
    )


@pytest.mark.parametrize("evil", ['a"} or vector(1) #', 'a\\"}', "a\nb"])
def test_render_cannot_be_injected(evil):
    query = promql.render('up{model="{{model}}"}', {"model": evil})
    # The value stays inside one string literal: the only unescaped quotes are the template's two.
    unescaped = [i for i, c in enumerate(query) if c == '"' and query[i - 1] != "\\"]
    assert len(unescaped) == 2
    assert "\n" not in query


def test_spaces_inside_placeholders_are_accepted():
    assert promql.render('up{m="{{ model }}"}', {"model": "a"}) == 'up{m="a"}'


def test_check_template_flags_unknown_placeholders():
    assert promql.check_template("up{a='{{modle}}'}") and not promql.check_template(TEMPLATE)


def test_batch_plan_rewrites_matchers_and_splits_by_labels():
    loops = [{"model": "a", "namespace": "n1"}, {"model": "b.c", "namespace": "n2"}]
    plan = promql.plan_batch(TEMPLATE, loops)
    assert plan is not None
    assert 'model=~"a|b\\\\.c"' in plan.query and 'namespace=~"n1|n2"' in plan.query
    assert plan.key_of_series({"model": "b.c", "namespace": "n2"}) == plan.key_of_loop(loops[1])
    assert plan.key_of_series({"model": "a"}) is None


def test_no_batch_when_a_placeholder_is_not_a_matcher():
    assert promql.plan_batch('x{model="{{model}}"} > {{version}}', [{"model": "a", "version": "1"}]) is None
    assert promql.plan_batch("up", [{}]) is None


def test_escape_regex_keeps_values_literal():
    assert promql.escape_regex("a.b|c") == "a\\.b\\|c"

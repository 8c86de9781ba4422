"""kubectl's JSONPath templates (mfl_cli.jsonpath): the examples of Kubernetes' JSONPath reference page, with the
outputs kubectl prints for them, and the errors kubectl gives."""

from __future__ import annotations

import pytest

from mfl_cli import jsonpath
from mfl_cli.output import custom_columns

# The input of the reference page's examples (https://kubernetes.io/docs/reference/kubectl/jsonpath/).
DOC = {
    "kind": "List",
    "items": [
        {
            "kind": "None",
            "metadata": {"name": "127.0.0.1", "labels": {"kubernetes.io/hostname": "127.0.0.1"}},
            "status": {"capacity": {"cpu": "4"}, "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.1"}]},
        },
        {
            "kind": "None",
            "metadata": {"name": "127.0.0.2"},
            "status": {
                "capacity": {"cpu": "8"},
                "addresses": [
                    {"type": "LegacyHostIP", "address": "127.0.0.2"},
                    {"type": "another", "address": "127.0.0.3"},
                ],
            },
        },
    ],
    "users": [{"name": "myself", "user": {}}, {"name": "e2e", "user": {"username": "admin", "password": "secret"}}],
}


@pytest.mark.parametrize(
    ("template", "printed"),
    [
        ("{.kind}", "List"),
        ("{['kind']}", "List"),
        ("{$.kind}", "List"),
        ("{..name}", "127.0.0.1 127.0.0.2 myself e2e"),
        ("{.items[*].metadata.name}", "127.0.0.1 127.0.0.2"),
        ("{.users[0].name}", "myself"),
        ("{.items[-1:].metadata.name}", "127.0.0.2"),
        ("{.items[0:2:1].metadata.name}", "127.0.0.1 127.0.0.2"),
        ("{.items[0,1].status.capacity.cpu}", "4 8"),
        ('{.users[?(@.name=="e2e")].user.password}', "secret"),
        ("{.users[?(@.name!='e2e')].name}", "myself"),
        ("{.users[?(@.user.password)].name}", "e2e"),
        ('{.items[*].status.addresses[?(@.type=="LegacyHostIP")].address}', "127.0.0.1 127.0.0.2"),
        (
            "{range .items[*]}[{.metadata.name}, {.status.capacity}] {end}",
            '[127.0.0.1, {"cpu":"4"}] [127.0.0.2, {"cpu":"8"}] ',
        ),
        ('{range .items[*]}{.metadata.name}{"\\t"}{.status.capacity.cpu}{"\\n"}{end}', "127.0.0.1\t4\n127.0.0.2\t8\n"),
        ("{.items[0].metadata.labels.kubernetes\\.io/hostname}", "127.0.0.1"),
        ("{.items[0].metadata.labels['kubernetes.io/hostname']}", "127.0.0.1"),
        ("{.users[1].user}", '{"password":"secret","username":"admin"}'),  # objects: compact JSON, keys sorted
        ("name: {.users[0].name}!", "name: myself!"),  # text around actions is printed as it is
        ("{.items[*].nothing}", ""),  # a missing key prints nothing (kubectl's --allow-missing-template-keys)
        ("{range .users[*]}{range .user.*}<{@}>{end}{end}", "<admin><secret>"),  # nested ranges
    ],
)
def test_the_reference_examples_print_as_kubectl(template, printed):
    assert jsonpath.execute(template, DOC) == printed


def test_numbers_and_booleans_print_as_json_writes_them():
    data = {"a": 3, "b": 0.25, "c": True, "d": 2.0, "e": None}
    assert jsonpath.execute("{.a} {.b} {.c} {.d} {.e}", data) == "3 0.25 true 2 "
    assert jsonpath.execute("{.items[?(@.v>=2)].n}", {"items": [{"v": 1, "n": "x"}, {"v": 2.5, "n": "y"}]}) == "y"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{.items[0}", "unterminated array"),
        ("{.kind", "unclosed action"),
        ("{range .items[*]}{.kind}", "without an {end}"),
        ("{.kind}{end}", "without a {range}"),
        ('{.users[?(@.name=~"e.*")].name}', "=~"),
        ("{.items[x]}", "invalid array index"),
        ("{.items[::0]}", "step must be > 0"),
    ],
)
def test_templates_kubectl_refuses_are_refused(template, error):
    with pytest.raises(jsonpath.JsonPathError, match=error.replace("[", r"\[").replace("{", r"\{")):
        jsonpath.execute(template, DOC)


def test_an_index_out_of_bounds_is_an_error_as_in_kubectl():
    with pytest.raises(jsonpath.JsonPathError, match="array index out of bounds: index 5, length 2"):
        jsonpath.execute("{.items[5].metadata.name}", DOC)


def test_custom_columns_take_kubectls_relaxed_paths():
    columns = custom_columns("NAME:.metadata.name,CPU:status.capacity.cpu,HOST:{.metadata.labels}")
    assert [name for name, _ in columns] == ["NAME", "CPU", "HOST"]
    with pytest.raises(jsonpath.JsonPathError, match="expected <header>:<json-path-expr>"):
        custom_columns("NAME")

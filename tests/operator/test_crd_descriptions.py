"""`kubectl explain modelfeedbackloop.spec...` tells the whole story, and the docs name only real fields.

Descriptions are written once, in feedbackloop/api.py (`Field(description=...)`, or the class docstring for an
object), and crdgen carries them into the schema. These tests walk the generated openAPIV3Schema.
"""

import math
import re
from pathlib import Path

import pytest
import yaml

from feedbackloop import crdgen
from feedbackloop.core import api

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
MAX_DESCRIPTION = 260  # one or two sentences: `kubectl explain` prints them in full


def fields(node, path=""):
    """(path, schema) of every named field, through arrays ([]) and maps ({})."""
    for key, value in node.get("properties", {}).items():
        yield f"{path}.{key}".lstrip("."), value
        yield from fields(value, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from fields(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from fields(node["additionalProperties"], f"{path}{{}}")


FIELDS = dict(fields(SCHEMA))
# `spec.rollout.steps[].weight` is written `spec.rollout.steps.weight` in prose
PROSE_PATHS = {path.replace("[]", "").replace("{}", "") for path in FIELDS}


def test_metadata_says_nothing_but_its_type():
    """The API server refuses a CRD whose schema describes metadata (kubectl explain documents it anyway)."""
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}


def test_the_walk_reaches_nested_fields():
    assert {"spec.rollout.steps[].weight", "spec.rollout.analysis.latency.maxIncrease"} <= set(FIELDS)
    assert {"status.history[].evidence[].values", "status.conditions[].lastTransitionTime"} <= set(FIELDS)


def test_every_field_has_a_description():
    missing = [
        path
        for path, node in FIELDS.items()
        if not str(node.get("description", "")).strip() and path != "metadata"  # see the next test
    ]
    assert not missing, (
        "fields without a description; add Field(description=...) (or a class docstring for an object) "
        "in operator/feedbackloop/core/api.py, then `make crd`: " + ", ".join(missing)
    )


def test_descriptions_are_short():
    long = [f"{path} ({len(node['description'])} chars)" for path, node in FIELDS.items()
            if len(node.get("description", "")) > MAX_DESCRIPTION]  # fmt: skip
    assert not long, f"keep descriptions to one or two sentences (<= {MAX_DESCRIPTION} chars): " + ", ".join(long)


def _same_value(text: str, default) -> bool:  # noqa: ANN001 - a schema default: str, number or bool
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return math.isclose(float(text), default)
        except ValueError:
            return False
    return text == str(default)


def test_descriptions_state_the_schema_default():
    """A scalar default is in the schema, but kubectl explain (1.20) does not print it: the text says it."""
    wrong = []
    for path, node in FIELDS.items():
        default = node.get("default")
        if default is None or isinstance(default, (dict, list)):
            continue
        found = re.search(r"\bDefault (\S+?)[.,;]?(?:\s|$)", node.get("description", ""))
        if found is None or not _same_value(found.group(1), default):
            wrong.append(f"{path}: default {default!r}, description {node.get('description')!r}")
    assert not wrong, "say 'Default <value>.' in the description, as in the schema:\n" + "\n".join(wrong)


# --- the docs ------------------------------------------------------------------------------------------

# `spec.a.b` / `status.a` anywhere (also `obj.spec.paused` in Lua), and backticked paths relative to spec
# (`retraining.recentWeight`); a `: value` may follow.
ABSOLUTE = re.compile(r"(?<![\w/-])((?:spec|status)(?:\.[a-zA-Z][a-zA-Z0-9]*)+)")  # s3: a digit
RELATIVE = re.compile(r"`((?:model|monitoring|retraining|rollout)(?:\.[a-zA-Z][a-zA-Z0-9]*)+)(?::[^`]*)?`")


FILE_SUFFIXES = {"csv", "joblib", "json", "jsonl", "md", "png", "py", "toml", "txt", "yaml", "yml"}  # not fields


def _doc_paths():
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{number}"
            found = [m.group(1) for m in ABSOLUTE.finditer(line)]
            found += ["spec." + m.group(1) for m in RELATIVE.finditer(line)]
            yield from ((where, path) for path in found if path.rsplit(".", 1)[1] not in FILE_SUFFIXES)


def test_field_paths_in_the_docs_exist():
    paths = list(_doc_paths())
    assert any(path == "spec.paused" for _, path in paths)  # the extraction works
    unknown = [f"{where}: {path}" for where, path in paths if path not in PROSE_PATHS]
    assert not unknown, "the docs name fields the CRD does not have:\n" + "\n".join(unknown)


def _loop_examples():
    for doc in DOCS:
        for block in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), flags=re.S):
            for document in yaml.safe_load_all(block):
                if isinstance(document, dict) and document.get("kind") == api.KIND:
                    yield pytest.param(document, id=f"{doc.name}:{document['metadata']['name']}")


@pytest.mark.parametrize("loop", list(_loop_examples()))
def test_loop_examples_in_the_docs_are_valid(loop):
    api.validate_spec(loop["spec"])  # unknown fields are refused, as the API server would prune them


def test_the_docs_show_a_loop_example():
    assert list(_loop_examples())


def _parameter_tables():
    """Rows of `| field | default | meaning |` tables under a heading naming their section: `## ... (`x.y`)`."""
    for doc in DOCS:
        section = None
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("#"):
                found = re.search(r"\(`([a-zA-Z.]+)`\)", line)
                section = found.group(1) if found else None
            elif section and line.startswith("| `"):
                cells = [cell.strip() for cell in line.strip("|").split("|")]
                yield f"{doc.relative_to(ROOT)}:{number}", section, cells


def _row_fields(section: str, cell: str) -> list[str]:
    """'`latency.enabled`, `.maxIncrease`' -> [spec.<section>.latency.enabled, spec.<section>.latency.maxIncrease]"""
    names, parent = [], ""
    for name in re.findall(r"`([^`]+)`", cell):
        if name.startswith("."):
            name = parent + name
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        names.append(f"spec.{section}.{name}")
    return names


def test_parameter_tables_in_the_docs_name_real_fields_and_defaults():
    rows = list(_parameter_tables())
    assert rows, "no parameter table found (a `| field | default | meaning |` table under a heading (`x.y`))"
    wrong = []
    for where, section, (field_cell, default_cell, *_) in rows:
        names = _row_fields(section, field_cell)
        defaults = [text.strip() for text in default_cell.split(",")]
        for index, name in enumerate(names):
            if name not in PROSE_PATHS:
                wrong.append(f"{where}: {name} is not in the CRD")
                continue
            default = next(node for path, node in FIELDS.items() if path.replace("[]", "") == name).get("default")
            text = defaults[index] if len(defaults) == len(names) else None
            scalar = default is not None and not isinstance(default, (dict, list))
            if scalar and text is not None and not _same_value(text, default):
                wrong.append(f"{where}: {name} default {text!r}, the CRD says {default!r}")
    assert not wrong, "\n".join(wrong)

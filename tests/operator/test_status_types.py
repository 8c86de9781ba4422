"""The TypedDicts the decisions are typed with (status.py) and the pydantic status models that generate
the CRD (api.py) describe the same fields: one shape, checked, not two that drift."""

from __future__ import annotations

import types
import typing
from typing import Any, get_type_hints

import pydantic
import pytest

from feedbackloop.core import api, status

PAIRS = [
    (status.LoopStatus, api.ModelFeedbackLoopStatus),
    (status.ConditionStatus, api.Condition),
    (status.MetricState, api.MetricStatus),
    (status.InputDriftState, api.InputDriftStatus),
    (status.FeatureDrift, api.FeatureDrift),
    (status.CheckEvidence, api.CheckEvidence),
    (status.VersionRecord, api.VersionRecord),
    (status.RetrainingRun, api.RetrainingStatus),
    (status.Candidate, api.CandidateStatus),
    (status.AnalysisState, api.AnalysisStateStatus),
    (status.RolloutState, api.RolloutStatus),
    (status.Serving, api.ServingStatus),
]


def shape(annotation: Any) -> Any:
    """A comparable form of a type: models and TypedDicts by name, Literals by values, the rest structurally."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return ("union", frozenset(shape(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return ("literal", frozenset(typing.get_args(annotation)))
    if origin is not None:
        return (origin, tuple(shape(a) for a in typing.get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return ("object", MODEL_NAMES.get(annotation, annotation.__name__))
    if typing.is_typeddict(annotation):
        return ("object", annotation.__name__)
    return annotation


MODEL_NAMES = {model: typed.__name__ for typed, model in PAIRS}


@pytest.mark.parametrize(("typed", "model"), PAIRS, ids=[t.__name__ for t, _ in PAIRS])
def test_the_typed_dict_has_the_models_fields_and_types(typed: type, model: type[pydantic.BaseModel]) -> None:
    hints = get_type_hints(typed)
    fields = {info.alias or name: info.annotation for name, info in model.model_fields.items()}
    assert set(hints) == set(fields), f"{typed.__name__} vs {model.__name__}"
    for key, annotation in fields.items():
        typed_shape = shape(hints[key])
        model_shape = shape(annotation)
        if key == "phase" and typed is status.LoopStatus:  # the model keeps str for the CRD; the code knows more
            assert model_shape is str and typed_shape[0] == "literal"
            continue
        assert typed_shape == model_shape, f"{typed.__name__}.{key}: {hints[key]} vs {annotation}"


def test_the_phases_the_code_knows_are_the_phases_documented() -> None:
    phases = set(typing.get_args(status.Phase))
    description = api.ModelFeedbackLoopStatus.model_fields["phase"].description or ""
    assert all(phase in description for phase in phases)

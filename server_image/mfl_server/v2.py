"""The Open Inference Protocol ("V2") as plain data: parsing infer requests, building responses, reading
another server's outputs. Shared by the reference server and the feedback sidecar; no numpy here (the
sidecar's image has none).

A request's rows come in one of the two layouts V2 clients send (docs/contracts.md, "Open Inference
Protocol"): one tensor of shape [n, features] in the model's feature order, or one tensor per feature
named by it, of shape [n] or [n, 1] (MLServer's pandas codec). Every value is bounded before it is
logged: numbers finite within float32's range, text at most MAX_TEXT_CHARS.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import RequestError, bad_request, too_large, unprocessable
from .limits import MAX_ABS_NUMBER, MAX_TEXT_CHARS

ID_OUTPUT = "mfl_prediction_id"  # the extra output tensor: one signed prediction id per row
IDS_HEADER = "mfl-prediction-ids"  # the same ids, comma-separated, when they fit MAX_IDS_HEADER_CHARS
MAX_IDS_HEADER_CHARS = 8000  # clients' header limits are about 8 KiB (aiohttp, nginx): larger, use the tensor
PREDICT_OUTPUT = "predict"  # MLServer's name for a model's predictions
NUMERIC_TYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
DATATYPES = NUMERIC_TYPES | {"BYTES"}
MAX_TENSORS = 1024  # inputs per request: a model with more features is not served through this path
MAX_REQUEST_ID_CHARS = 256


@dataclass(frozen=True)
class InferRequest:
    request_id: str | None
    rows: list[list[Any]]  # per row, the features' values in the model's feature order


class UpstreamError(Exception):
    """The server behind the sidecar answered something that is not a V2 response for these rows."""


def parse_infer(body: Any, features: list[str], max_batch: int, check_values: bool = True) -> InferRequest:
    """The rows of a V2 infer request, bounded; raises RequestError (400/413/422) naming the problem.

    ``check_values=False`` leaves the values' types and ranges to the caller (the reference server's
    matrix builder checks them again anyway, with numpy); the shapes are always checked."""
    if not isinstance(body, dict):
        raise bad_request('body must be a JSON object like {"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise unprocessable('"inputs" must be a non-empty list of tensors')
    if len(inputs) > MAX_TENSORS:
        raise too_large(f"{len(inputs)} input tensors, at most {MAX_TENSORS}")
    tensors = [_tensor(index, item, check_values) for index, item in enumerate(inputs)]
    if len(tensors) == 1 and not (len(features) > 1 and tensors[0].name in features):
        rows = _matrix_rows(tensors[0], len(features), max_batch)
    else:
        rows = _named_rows(tensors, features, max_batch)
    return InferRequest(request_id=_request_id(body.get("id")), rows=rows)


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]  # flat, row-major


def _tensor(index: int, item: Any, check_values: bool) -> _Tensor:
    if not isinstance(item, dict):
        raise unprocessable(f"input {index} must be an object with name, shape, datatype and data")
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str) or not name or len(name) > MAX_TEXT_CHARS:
        raise unprocessable(f"input {index}: name must be a non-empty string")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(_count(n) for n in shape):
        raise unprocessable(f"input {name!r}: shape must be [rows] or [rows, columns] of non-negative integers")
    if datatype not in DATATYPES:
        raise unprocessable(f"input {name!r}: datatype must be one of {sorted(DATATYPES)}, got {str(datatype)[:40]!r}")
    data = _flat(item.get("data"), len(shape), name)
    expected = math.prod(shape)
    if len(data) != expected:
        raise unprocessable(f"input {name!r}: shape {shape} holds {expected} values, data has {len(data)}")
    if check_values:
        _check_values(data, datatype, name)
    return _Tensor(name, shape, datatype, data)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _flat(data: Any, depth: int, name: str) -> list[Any]:
    """V2 allows data flat or nested as the shape; nesting deeper than the shape is refused."""
    if not isinstance(data, list):
        raise unprocessable(f"input {name!r}: data must be a list")
    if not any(isinstance(value, list) for value in data):
        return data
    if depth < 2 or not all(isinstance(row, list) for row in data):
        raise unprocessable(f"input {name!r}: data is nested deeper than its shape")
    flat = [value for row in data for value in row]
    if any(isinstance(value, list) for value in flat):
        raise unprocessable(f"input {name!r}: data is nested deeper than its shape")
    return flat


def _check_values(data: list[Any], datatype: str, name: str) -> None:
    if datatype != "BYTES" and _all_bounded_numbers(data):
        return
    if datatype == "BYTES":
        for value in data:
            if isinstance(value, str):
                if len(value) > MAX_TEXT_CHARS:
                    raise unprocessable(f"input {name!r}: a value is {len(value)} characters, at most {MAX_TEXT_CHARS}")
            elif not _bounded_number(value):
                raise unprocessable(f"input {name!r}: BYTES values must be strings or finite numbers")
        return
    for value in data:
        if not _bounded_number(value):
            raise unprocessable(
                f"input {name!r}: {datatype} values must be finite numbers of absolute value at most "
                f"{MAX_ABS_NUMBER:.3g}, got {_shown(value)}"
            )


def _all_bounded_numbers(data: list[Any]) -> bool:
    """The common case in a few C-speed passes: only floats and ints, finite, within bounds. A sum is finite
    only when no value is NaN or infinite (bounded values cannot overflow it at these batch sizes)."""
    if not data or not set(map(type, data)) <= {float, int}:
        return False
    return math.isfinite(sum(data)) and min(data) >= -MAX_ABS_NUMBER and max(data) <= MAX_ABS_NUMBER


def _bounded_number(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_ABS_NUMBER
    return isinstance(value, float) and abs(value) <= MAX_ABS_NUMBER  # NaN fails


def _matrix_rows(tensor: _Tensor, width: int, max_batch: int) -> list[list[Any]]:
    shape = tensor.shape
    columns = shape[1] if len(shape) == 2 else 1
    if columns != width:
        raise unprocessable(
            f"input {tensor.name!r} has shape {shape}: expected [rows, {width}] (the model's {width} features "
            "in order), or one tensor per feature named by it"
        )
    rows = shape[0]
    _check_rows(rows, max_batch)
    data = tensor.data
    return [data[start : start + width] for start in range(0, rows * width, width)]


def _named_rows(tensors: list[_Tensor], features: list[str], max_batch: int) -> list[list[Any]]:
    by_name = {tensor.name: tensor for tensor in tensors}
    missing = [name for name in features if name not in by_name]
    if missing:
        raise unprocessable(
            f"missing input {', '.join(repr(m) for m in missing[:5])}: send one tensor per feature named by it, "
            f"or one tensor of shape [rows, {len(features)}]"
        )
    columns = [by_name[name] for name in features]
    rows = columns[0].shape[0]
    for tensor in columns:
        if tensor.shape[0] != rows or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise unprocessable(f"input {tensor.name!r} has shape {tensor.shape}: expected [{rows}] or [{rows}, 1]")
    _check_rows(rows, max_batch)
    return [list(values) for values in zip(*(tensor.data for tensor in columns))]


def _check_rows(rows: int, max_batch: int) -> None:
    if rows == 0:
        raise unprocessable("empty batch: the input has no rows")
    if rows > max_batch:
        raise too_large(f"batch too large: {rows} rows, at most {max_batch} per request")


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REQUEST_ID_CHARS:
        raise unprocessable(f'"id" must be a string of at most {MAX_REQUEST_ID_CHARS} characters')
    return value


def datatype_of(labels: list[Any]) -> str:
    """The V2 datatype of a list of native labels (all of one kind, as a model predicts them)."""
    if all(isinstance(label, bool) for label in labels):
        return "BOOL"
    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        return "INT64"
    if all(isinstance(label, (int, float)) and not isinstance(label, bool) for label in labels):
        return "FP64"
    return "BYTES"


def id_output(ids: list[str]) -> dict[str, Any]:
    return {"name": ID_OUTPUT, "datatype": "BYTES", "shape": [len(ids), 1], "data": ids}


def infer_response(
    model: str, version: int, request_id: str | None, labels: list[Any], ids: list[str]
) -> dict[str, Any]:
    """The reference server's answer: the predictions (as MLServer names and shapes them) and the ids."""
    datatype = datatype_of(labels)
    data = [str(label) for label in labels] if datatype == "BYTES" else labels
    return {
        "model_name": model,
        "model_version": str(version),
        "id": request_id or str(uuid.uuid4()),
        "parameters": {},
        "outputs": [
            {"name": PREDICT_OUTPUT, "datatype": datatype, "shape": [len(labels), 1], "data": data},
            id_output(ids),
        ],
    }


def ids_header(ids: list[str]) -> str | None:
    text = ",".join(ids)
    return text if len(text) <= MAX_IDS_HEADER_CHARS else None


def model_metadata(
    model: str,
    version: int,
    platform: str,
    features: list[str],
    label_type: str = "FP64",
    task: str | None = None,
    classes: list[Any] | None = None,
) -> dict[str, Any]:
    """The model's metadata; ``parameters`` adds what a client needs to send labels: the features in
    order, the task and (classification) the classes a label may be."""
    parameters: dict[str, Any] = {"features": features}
    if task is not None:
        parameters["task"] = task
    if classes is not None:
        parameters["classes"] = classes
    return {
        "name": model,
        "versions": [str(version)],
        "platform": platform,
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(features)]}],
        "outputs": [
            {"name": PREDICT_OUTPUT, "datatype": label_type, "shape": [-1, 1]},
            {"name": ID_OUTPUT, "datatype": "BYTES", "shape": [-1, 1]},
        ],
        "parameters": parameters,
    }


def labels_from_response(body: Any, rows: int, classes: list[Any] | None, serving_output: str = "labels") -> list[Any]:
    """Native labels (int, float, str, bool) of ``rows`` predictions from an upstream V2 response.

    The output named "predict", else the first one. ``serving_output`` "probabilities" (a runtime that
    returns a classifier's scores, as MLServer's LightGBM runtime does): [n] or [n, 1] is P(classes[1]),
    [n, k] one column per class, in the order of ``classes``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list) or not body["outputs"]:
        raise UpstreamError('the response has no "outputs"')
    outputs = [item for item in body["outputs"] if isinstance(item, dict) and item.get("name") != ID_OUTPUT]
    chosen = next((item for item in outputs if item.get("name") == PREDICT_OUTPUT), outputs[0] if outputs else None)
    if chosen is None:
        raise UpstreamError("the response has no output tensor")
    shape = chosen.get("shape")
    if not isinstance(shape, list) or not shape or not all(_count(n) for n in shape):
        raise UpstreamError(f"output {str(chosen.get('name'))[:40]!r} has no valid shape")
    data = chosen.get("data")
    if not isinstance(data, list):
        raise UpstreamError(f"output {str(chosen.get('name'))[:40]!r} has no data list")
    flat = [value for row in data for value in row] if data and isinstance(data[0], list) else data
    if len(flat) != math.prod(shape) or shape[0] != rows:
        raise UpstreamError(f"output shape {shape[:3]} does not hold one prediction for each of the {rows} rows")
    width = len(flat) // rows if rows else 0
    if serving_output == "probabilities":
        return _classes_of(flat, rows, width, classes)
    if width != 1:
        raise UpstreamError(f"output shape {shape[:3]} has {width} values a row, expected one prediction")
    return [_native_label(value) for value in flat]


def _classes_of(flat: list[Any], rows: int, width: int, classes: list[Any] | None) -> list[Any]:
    if not classes or (width == 1 and len(classes) != 2) or (width > 1 and width != len(classes)):
        raise UpstreamError(f"{width} probabilities a row do not match the model's classes {str(classes)[:80]}")
    if not all(_bounded_number(value) and not isinstance(value, bool) for value in flat):
        raise UpstreamError("probabilities must be finite numbers")
    if width == 1:
        return [classes[1] if value >= 0.5 else classes[0] for value in flat]
    picked = []
    for start in range(0, rows * width, width):
        row = flat[start : start + width]
        picked.append(classes[max(range(width), key=row.__getitem__)])
    return picked


def _native_label(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and len(value) <= MAX_TEXT_CHARS):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and abs(value) <= MAX_ABS_NUMBER:
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    raise UpstreamError(f"prediction {_shown(value)} is not a bounded number, string or boolean")


def _shown(value: Any) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)[:40]
    return type(value).__name__


def not_found(what: str) -> RequestError:
    return RequestError(404, what)
